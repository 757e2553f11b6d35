"""fcnseg in napari: a skin over the same functions the commands call (installed by `pip install fcnseg[napari]`).

- `segment`: the *Segment* widget, `fcnseg infer` on an image layer (a run folder or an exported .onnx) into a
  Labels layer and, if asked, a probability layer; a worker thread, napari's progress bar, Cancel between tiles;
- `train`: the *Train* widget, `fcnseg data import` of painted layers (or files) and `fcnseg train` in a child
  process, with live loss and val mean IU from the run's metrics.jsonl; Stop is SIGINT, Resume is `--resume`;
- `sample`: the HeLa demo frame and its mask, painted for *Train*;
- `reader`: a run folder opened in napari shows its val images, their labels and the run's predictions.

napari.yaml is the npe2 manifest naming these. Nothing else in fcnseg imports this package.
"""
