"""The napari plugin on the HeLa demo, headless: open the sample frame, segment it through the Segment widget with a
trained run (and its exported ONNX model), compare the Labels layer with what `fcnseg infer` wrote, and save a
screenshot of the window. Run it in an X server, e.g. under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_demo.py runs/demo docs/napari.png

RUN must hold infer/frame17.png and infer_onnx/frame17.png and demo.onnx (what `make demo` writes).
"""
import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from fcnseg.images import read_mask
from fcnseg.napari_plugin.sample import FRAME


def segment(widget, layer, source: str, path: Path) -> tuple[np.ndarray, float]:
    widget.image.value, widget.source.value = layer, source
    if source == "run folder":
        widget.run.value = path
    else:
        widget.onnx.value = path
    start = time.perf_counter()
    widget.start()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.01)
    return widget.viewer.layers[f"{layer.name} labels"].data, time.perf_counter() - start


def main(run: str, screenshot: str) -> None:
    run_dir = Path(run)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("fcnseg", "hela")
    image = viewer.layers[f"HeLa frame {FRAME}"]
    viewer.layers[-1].visible = False  # the mask painted for Train
    viewer.window.add_plugin_dock_widget("fcnseg", "Train")
    dock, widget = viewer.window.add_plugin_dock_widget("fcnseg", "Segment", tabify=True)
    for source, path, cli_out in (("ONNX model", run_dir / "demo.onnx", "infer_onnx"),
                                  ("run folder", run_dir, "infer")):
        labels, seconds = segment(widget, image, source, path)
        expected = read_mask(run_dir / cli_out / f"frame{FRAME}.png")
        differ = int(np.count_nonzero(labels != expected))
        print(f"{source}: Segment {labels.shape} in {seconds:.2f} s (worker, net loading included); "
              f"{differ} pixels differ from {cli_out}/frame{FRAME}.png")
        if source == "ONNX model":
            viewer.layers.remove(f"{image.name} labels")
    viewer.layers[f"{image.name} labels"].opacity = 0.45
    viewer.reset_view()
    dock.raise_()
    QApplication.processEvents()
    napari.utils.io.imsave(screenshot, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {screenshot}")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
