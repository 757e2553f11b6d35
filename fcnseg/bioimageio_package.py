"""`fcnseg export RUN --bioimageio -o NAME.zip`: a run as a BioImage Model Zoo package (format 0.5), the form in
which Fiji (deepImageJ), ilastik, QuPath and napari take trained models.

The zip holds `rdf.yaml` (the description), `model.onnx` (export.export_onnx's graph with the preprocessing
inside), `test_input.npy` and one test output per output tensor, `cover.png` and `README.md`:

- Input `image`: the original pixel values (batch, channel, y, x), float32. The run's intensity window (clip,
  round onto 0-255), mean and `data.scale` are nodes of the ONNX graph, so the rdf declares no preprocessing
  besides casting to float32: the input's transformation is stated once, in the graph. y and x are
  `min + n * step` with both the run's `input_multiple` (the stride for `pad: minimal`, else 1).
- Outputs, in the ONNX graph's order: `scores` (class scores) and `probabilities` (their softmax), one channel
  per class named by the run's classes; y and x the input's. `output_tensors` is the one place that says what
  the outputs mean.
- Test tensors: a val tile of the run's dataset (the one with the most labelled classes among the first few,
  mapped back through the window onto the original intensity scale), or the image given with --test-image,
  cut to a multiple of `input_multiple` and at most TEST_SIZE pixels a side; the outputs are onnxruntime's
  on the packaged graph, which `bioimageio test` must reproduce.
- Cover: input | labels (argmax of the test output) over the input, 2:1 for a square tile.
- Authors, licence and citations from the options (the login name, CC-BY-4.0 and the papers of the
  architecture and of Caffe when none are given).
"""
from __future__ import annotations

import getpass
import io
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import lmdb
import numpy as np
import yaml
from PIL import Image

from . import __version__, diskspace, runs
from .config import UNET
from .dataset import datum_array
from .errors import DataError, RunError
from .export import OPSET, export_onnx
from .files import METRICS_FILE, dataset_paths, file_sha256, write_atomic
from .images import apply_window, overlay, read_image
from .inputs import InferenceFacts
from .metrics import read_events
from .onnxmodel import INPUT, PROBABILITIES, SCORES, open_session

FORMAT_VERSION = "0.5.4"
DEFAULT_LICENSE = "CC-BY-4.0"
TEST_SIZE = 512  # the largest test tile side: the package stays small, bioimageio test fast
CANDIDATE_TILES = 16  # val tiles looked at for the test input
MODEL_FILE, TEST_INPUT, COVER, DOCUMENTATION, RDF = "model.onnx", "test_input.npy", "cover.png", "README.md", "rdf.yaml"
CITATIONS = {
    "fcn": ("Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation. CVPR 2015",
            "10.1109/CVPR.2015.7298965"),
    UNET: ("Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
           "MICCAI 2015", "10.1007/978-3-319-24574-4_28"),
    "caffe": ("Jia et al.: Caffe: Convolutional Architecture for Fast Feature Embedding. ACM Multimedia 2014",
              "10.1145/2647868.2654889"),
}


@dataclass
class PackageResult:
    """What `export_bioimageio` wrote."""

    path: Path
    weights: Path
    size_bytes: int
    test_shape: tuple[int, ...]
    test_source: str
    authors: list[str]
    license: str
    seconds: float

    def lines(self) -> list[str]:
        """The summary the CLI prints."""
        return [f"wrote {self.path} ({self.size_bytes / 2**20:.1f} MB, bioimage.io model format {FORMAT_VERSION}) "
                f"from {self.weights} in {self.seconds:.1f} s",
                f"test tensors: {' x '.join(map(str, self.test_shape))} from {self.test_source}",
                f"authors: {', '.join(self.authors)}; license: {self.license} (--author, --license, --cite set them)",
                f"check it with: bioimageio test {self.path}"]


def parse_citation(text: str) -> dict:
    """A --cite value 'TEXT|DOI' or 'TEXT|https://URL' as an rdf `cite` entry; DataError otherwise."""
    what, sep, ref = text.rpartition("|")
    what, ref = what.strip(), ref.strip()
    if not sep or not what or not ref:
        raise DataError(f"--cite {text!r}: expected 'TEXT|DOI' or 'TEXT|https://URL', e.g. "
                        "--cite 'Doe et al. 2024: Nuclei in HeLa|10.1234/abcd'")
    if ref.startswith(("https://", "http://")):
        return {"text": what, "url": ref}
    doi = ref.removeprefix("doi:").removeprefix("https://doi.org/")
    if not doi.startswith("10.") or "/" not in doi:
        raise DataError(f"--cite {text!r}: {ref!r} is neither a DOI (10.NNNN/…) nor an https:// URL")
    return {"text": what, "doi": doi}


def output_tensors(facts: InferenceFacts, input_id: str = INPUT) -> list[dict]:
    """The rdf `outputs`, in the order of the ONNX graph's outputs: what each channel means.

    Semantic segmentation: one channel per class (scores, then their softmax). A model with instance roles
    (boundary, centre, distance channels ...) names its channels and their postprocessing here.
    """
    def axes() -> list[dict]:
        return [{"type": "batch"}, {"type": "channel", "channel_names": list(facts.classes)}] + [
            {"type": "space", "id": a, "size": {"tensor_id": input_id, "axis_id": a}} for a in ("y", "x")]
    names = ", ".join(facts.classes)
    return [{"id": SCORES, "description": f"class scores before the softmax, one channel per class ({names})"[:128],
             "axes": axes(), "data": {"type": "float32"}},
            {"id": PROBABILITIES, "description": f"class probabilities (softmax of scores): {names}; labels are "
             "the argmax over channels"[:128], "axes": axes(), "data": {"type": "float32", "range": [0.0, 1.0]}}]


def input_tensor(facts: InferenceFacts) -> dict:
    """The rdf `inputs` entry: original pixel values, sizes min + n * step with both input_multiple."""
    c, m = facts.input_channels, facts.input_multiple
    window = facts.window
    inside = (f"window {window['low']:g}..{window['high']:g} onto 0-255, " if window is not None else "") + \
        f"mean {facts.mean:g} and scale {facts.scale:g} are inside the graph"
    return {"id": INPUT, "description": f"original pixel values; {inside}"[:128],
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": ["gray"] if c == 1 else [f"c{i}" for i in range(c)]},
                     {"type": "space", "id": "y", "size": {"min": m, "step": m}},
                     {"type": "space", "id": "x", "size": {"min": m, "step": m}}],
            "data": {"type": "float32"},
            "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}


def _val_tile(config, facts: InferenceFacts, run_dir: Path) -> tuple[np.ndarray, str]:
    """(C x H x W original-scale pixel values, where from): the val tile of the run's dataset with the most
    labelled classes among the first CANDIDATE_TILES, mapped back through the window."""
    root = config.data.root
    paths = dataset_paths(root) if root is not None else {}
    images, labels = Path(paths.get("val_images", "")), Path(paths.get("val_labels", ""))
    if root is None or not images.is_dir() or not labels.is_dir():
        raise RunError(f"{run_dir}: its dataset {root} (data.root in {run_dir / 'config.yaml'}) is not found, and "
                       "the package's test tensors need a val image; pass one with --test-image IMAGE")
    best, best_classes, key = None, -1, b""
    envs = [lmdb.open(str(p), readonly=True, lock=False, readahead=False) for p in (images, labels)]
    try:
        with envs[0].begin() as image_txn, envs[1].begin() as label_txn:
            for n, (k, raw) in enumerate(image_txn.cursor()):
                if n == CANDIDATE_TILES:
                    break
                label = label_txn.get(k)
                present = set() if label is None else set(np.unique(datum_array(label)).tolist())
                classes = len(present & set(range(facts.num_classes)))
                if classes > best_classes:
                    best, best_classes, key = datum_array(raw), classes, k
    finally:
        for env in envs:
            env.close()
    if best is None:
        raise RunError(f"{images}: no val image; pass one with --test-image IMAGE")
    tile = best.astype(np.float32)
    if facts.window is not None:  # the stored tile is windowed 0-255; the package's input is the original scale
        low, high = float(facts.window["low"]), float(facts.window["high"])
        tile = np.float32(low) + tile * np.float32((high - low) / 255.0)
    return tile, f"val tile {key.decode(errors='replace')} of {root}"


def _test_input(config, facts: InferenceFacts, run_dir: Path,
                test_image: Optional[str | Path]) -> tuple[np.ndarray, str]:
    if test_image is not None:
        if facts.input_channels != 1:
            raise RunError(f"--test-image {test_image}: the net has {facts.input_channels} input channels; "
                           "leave --test-image out to use a val tile")
        image, source = read_image(test_image)[None].astype(np.float32), str(test_image)
    else:
        image, source = _val_tile(config, facts, run_dir)
    m = facts.input_multiple
    h, w = (min(s, TEST_SIZE) // m * m for s in image.shape[1:])
    if h < m or w < m:
        raise DataError(f"{source}: {image.shape[1]} x {image.shape[2]} pixels is smaller than the net's input "
                        f"multiple {m}; pass a larger --test-image")
    return np.ascontiguousarray(image[None, :, :h, :w]), source


def _cover(test_input: np.ndarray, probabilities: np.ndarray, facts: InferenceFacts) -> bytes:
    """PNG bytes: the windowed input | its labels over it (argmax of the probabilities)."""
    gray = apply_window(test_input[0, 0], facts.window, "the test input") if facts.window is not None else \
        np.clip(np.rint(test_input[0, 0]), 0, 255).astype(np.uint8)
    picture = np.concatenate([np.repeat(gray[..., None], 3, axis=2),
                              overlay(gray, probabilities[0].argmax(0), ignore_label=None)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def _validation(run_dir: Path) -> str:
    """The run's best validation (metrics.jsonl), as the package documentation's Validation section states it."""
    path = run_dir / METRICS_FILE
    vals = [e for e in read_events(path.read_text().splitlines()) if e.get("event") == "val"
            and e.get("mean_iu") is not None] if path.is_file() else []
    if not vals:
        return "No validation was recorded in the run's metrics.jsonl."
    best = max(vals, key=lambda e: e["mean_iu"])
    return (f"On the run's val split (fcnseg train, metrics.jsonl): mean IU {best['mean_iu']:.4f}, pixel accuracy "
            f"{best['pixel_acc']:.4f} at iteration {best['iter']}, the best of {len(vals)} validations.")


def _documentation(name: str, config, facts: InferenceFacts, source: str, run_dir: Path) -> str:
    m = config.model
    return "\n".join([
        f"# {name}", "",
        f"A {m.arch} ({m.stages} {'levels' if m.arch == UNET else 'stages'}, stride {facts.net_stride}) for semantic "
        f"segmentation of {facts.input_channels}-channel images into {facts.num_classes} classes "
        f"({', '.join(facts.classes)}), trained with fcnseg {__version__} (Caffe) and exported to ONNX.", "",
        "## Input", "",
        "The original pixel values as float32 (batch, channel, y, x); height and width multiples of "
        f"{facts.input_multiple}. Inside the graph: "
        + (f"the intensity window [{facts.window['low']:g}, {facts.window['high']:g}] onto 0-255 (clipped, "
           "rounded), " if facts.window is not None else "")
        + f"then (x - {facts.mean:g}) * {facts.scale:g}.", "",
        "## Outputs", "",
        "`scores`: class scores before the softmax; `probabilities`: their softmax over the channel axis, one "
        f"channel per class ({', '.join(facts.classes)}). The label of a pixel is the argmax over channels.", "",
        "## Validation", "", _validation(run_dir), "",
        "## Test tensors", "", f"From {source}.", ""])


def export_bioimageio(run_dir: str | Path, out: str | Path, weights: Optional[str | Path] = None,
                      authors: tuple[str, ...] = (), license: Optional[str] = None, cite: tuple[str, ...] = (),
                      test_image: Optional[str | Path] = None) -> PackageResult:
    """Write the run (its `weights`, else best/final/newest snapshot) as a bioimage.io model zip at `out`.

    `authors`: names (default: the login name); `license`: an SPDX id (default CC-BY-4.0); `cite`: extra
    'TEXT|DOI' or 'TEXT|URL' entries after the papers of the architecture and of Caffe; `test_image`: the
    image for the test tensors instead of a val tile. Raises RunError/WeightsError for a bad run or weights,
    DataError for a bad option value or an `out` that is a folder; the zip is written atomically.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; give a file name for -o, e.g. {out / 'model.zip'}")
    extra = [parse_citation(c) for c in cite]
    run_dir, config = runs.load_run(run_dir)
    citations = [{"text": CITATIONS[k][0], "doi": CITATIONS[k][1]}
                 for k in (UNET if config.model.arch == UNET else "fcn", "caffe")] + extra
    facts = runs.read_inference(run_dir)
    names = list(authors) or [getpass.getuser()]
    license = license or DEFAULT_LICENSE
    test_input, source = _test_input(config, facts, run_dir, test_image)
    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=out.parent if out.parent.is_dir() else None) as tmp:
        folder = Path(tmp)
        exported = export_onnx(run_dir, folder / MODEL_FILE, weights, with_preprocessing=True)
        session, _, _ = open_session(folder / MODEL_FILE)
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {INPUT: test_input})))
        np.save(folder / TEST_INPUT, test_input)
        for name, value in outputs.items():
            np.save(folder / f"test_{name}.npy", value)
        (folder / COVER).write_bytes(_cover(test_input, outputs[PROBABILITIES], facts))
        name = f"fcnseg {run_dir.resolve().name} {config.model.arch}"
        name = "".join(ch if ch.isalnum() or ch in "_+- ()" else "-" for ch in name)[:64]
        (folder / DOCUMENTATION).write_text(_documentation(name, config, facts, source, run_dir))
        inputs = [{**input_tensor(facts), "test_tensor": _file(folder, TEST_INPUT)}]
        outputs_rdf = [{**t, "test_tensor": _file(folder, f"test_{t['id']}.npy")} for t in output_tensors(facts)]
        if [t["id"] for t in outputs_rdf] != list(outputs):
            raise RunError(f"{exported.path}: its outputs {list(outputs)} are not the package's "
                           f"{[t['id'] for t in outputs_rdf]}")
        rdf = {
            "format_version": FORMAT_VERSION, "type": "model", "name": name,
            "description": (f"{config.model.arch} semantic segmentation of single-channel images into "
                            f"{', '.join(facts.classes)}; trained in Caffe with fcnseg")[:512],
            "authors": [{"name": n} for n in names], "cite": citations, "license": license,
            "tags": ["fcnseg", "caffe", "onnx", "semantic-segmentation", "2d", config.model.arch],
            "documentation": DOCUMENTATION, "covers": [COVER],
            "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "inputs": inputs, "outputs": outputs_rdf,
            "weights": {"onnx": {**_file(folder, MODEL_FILE), "opset_version": OPSET}},
            "config": {"fcnseg": {"version": __version__, "source_run": str(run_dir.resolve()),
                                  "weights": str(exported.weights.resolve()), **facts.to_dict()}},
        }
        (folder / RDF).write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
        members = [RDF, MODEL_FILE, TEST_INPUT, *(f"test_{n}.npy" for n in outputs), COVER, DOCUMENTATION]
        size = sum((folder / m).stat().st_size for m in members)
        out.parent.mkdir(parents=True, exist_ok=True)
        diskspace.require(out.parent, size, f"the package {out.name}", "free some space, or choose another -o")
        write_atomic(out, lambda path: _zip(path, folder, members))
    return PackageResult(out, exported.weights, out.stat().st_size, tuple(test_input.shape), source, names, license,
                         time.perf_counter() - start)


def _file(folder: Path, name: str) -> dict:
    return {"source": name, "sha256": file_sha256(folder / name)}


def _zip(path: Path, folder: Path, members: list[str]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member in members:
            z.write(folder / member, member)
