"""One image through the net: the predictor (the run's Caffe deploy net, or an exported ONNX model) and what
turns a raw 2-D image into class probabilities, whole or in tiles.

The net sees exactly what training's Data layer produced: the dataset's intensity window onto uint8 0-255
(`images.apply_window`), then (x - mean) * data.scale. It is reshaped to each image; with `model.pad: minimal`
the image is first mirrored up to a multiple of the net stride and the score cropped back. Images above
PIXEL_BUDGET pixels (or any, with --tile N) are cut into tiles whose origins are multiples of the net stride, so
every tile sees the whole image's pooling grid; the tiles' softmax probabilities are averaged where they
overlap (`tile_bands`, shared with `distribute`'s streamed labelling).

`label_image(predictor, image)` is the library entry for one array (open the predictor once with
`open_predictor` or `load_predictor`, then call it per image or frame). `infer` (files in, files out),
`volume_infer` (DICOM / NIfTI / HDF5 / Zarr volumes) and `distribute` (a Dask cluster) build on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from . import runs
from .errors import ConfigError, RunError
from .geometry import ceil_to, tile_origins
from .images import apply_window, net_input
from .inputs import InferenceFacts
from .metrics import softmax
from .onnxmodel import INPUT, SCORES, open_session

# Above this many input pixels an image is tiled unless --tile 0 is given. 1024 x 1024: a full HeLa
# frame (700 x 1100 = 0.77 Mpx) still runs whole. Memory is what tiling saves: CPU Caffe needs about
# 6 GB per megapixel even for a 2-stage net (each convolution keeps its own im2col buffer, 2.3 GB for
# conv1_2 alone), so 512-pixel tiles stay under 2 GB.
PIXEL_BUDGET = 1024 * 1024
DEFAULT_TILE = 512
DEFAULT_OVERLAP_FRACTION = 4  # default overlap: a quarter of the tile


# ---- the net and the input transformation ---------------------------------------------------------------

@dataclass
class Predictor:
    """A trained net (Caffe or ONNX) and the input transformation it was trained with.

    `score(x)` runs the net on one H x W net input and returns its K x H x W `score` (before softmax).
    `raw_input`: the net applies the window, mean and scale itself (an ONNX model exported
    `--with-preprocessing`), so it is fed the original pixel values.
    """

    score: Callable[[np.ndarray], np.ndarray]
    facts: InferenceFacts
    weights: Path  # the caffemodel or ONNX file the net came from
    raw_input: bool = False

    @property
    def num_classes(self) -> int:
        return self.facts.num_classes

    @property
    def multiple(self) -> int:
        """Input sizes the net needs (the stride for pad: minimal, else 1)."""
        return self.facts.input_multiple

    @property
    def stride(self) -> int:
        """Tile origins are multiples of this (the trunk's total stride)."""
        return self.facts.net_stride

    def network_input(self, image: np.ndarray, source: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(uint8 windowed image, float32 net input) for one raw 2-D image: apply_window, then
        (x - mean) * scale, as Caffe's DataTransformer does (the raw values for a `raw_input` net).
        Raises DataError naming `source`."""
        facts = self.facts
        gray = apply_window(image, facts.window, source)
        if self.raw_input:
            return gray, (np.asarray(image) if facts.window is not None else gray).astype(np.float32)
        return gray, net_input(gray, facts.mean, facts.scale)


def _check_facts(facts: InferenceFacts, where: Path) -> None:
    if facts.input_channels != 1:
        raise RunError(f"{where}: the net has {facts.input_channels} input channels; fcnseg infer reads "
                       "single-channel images only")
    if facts.num_classes > 255:
        raise RunError(f"{where}: {facts.num_classes} classes do not fit a palette PNG (at most 255)")


def load_predictor(run_dir: str | Path, weights: Optional[str | Path] = None,
                   gpu: Optional[int] = None) -> Predictor:
    """The run's deploy net with its best weights (else final, else the newest snapshot; `weights`
    overrides), and the input transformation from the run's inference.yaml: the run folder is all it
    needs, wherever it is.

    Raises RunError for a missing run folder, deploy.prototxt or weights; WeightsError when the weights
    do not fit the net; CaffeUnavailableError for a `gpu` this Caffe cannot use (see
    runs.load_deploy_net: all checked before Caffe reads a file).
    """
    run_dir, _ = runs.load_run(run_dir)
    facts = runs.read_inference(run_dir)
    _check_facts(facts, run_dir)
    net, weights_path = runs.load_deploy_net(run_dir, weights, gpu)
    return Predictor(lambda x: _caffe_score(net, x), facts, weights_path)


def load_onnx_predictor(path: str | Path, gpu: Optional[int] = None) -> Predictor:
    """An ONNX model written by `fcnseg export`, run with onnxruntime (CPU, or CUDA GPU `gpu`).
    Raises RunError for a missing file or one without fcnseg's metadata (onnxmodel.open_session)."""

    session, facts, raw_input = open_session(path, gpu)
    _check_facts(facts, Path(path))

    def score(x: np.ndarray) -> np.ndarray:
        return session.run([SCORES], {INPUT: x[None, None].astype(np.float32, copy=False)})[0][0]
    return Predictor(score, facts, Path(path), raw_input)


def _caffe_score(net, x: np.ndarray) -> np.ndarray:
    blob = net.blobs["data"]
    if blob.data.shape[2:] != x.shape:
        blob.reshape(1, 1, *x.shape)
        net.reshape()
    blob.data[0, 0] = x
    net.forward()
    return net.blobs["score"].data[0]


# ---- whole-image and tiled prediction --------------------------------------------------------------------

@dataclass(frozen=True)
class Tiling:
    """Square tiles of side `tile` (a multiple of the net stride) overlapping by `overlap` pixels."""

    tile: int
    overlap: int

    @property
    def step(self) -> int:
        return self.tile - self.overlap


def make_tiling(tile: Optional[int], overlap: Optional[int], stride: int) -> Tiling:
    """Tiles of side `tile` (default DEFAULT_TILE) rounded up to a multiple of `stride`, overlapping by at
    least `overlap` (default a quarter tile) so that the step between them is a multiple of `stride`.
    Raises ConfigError when the overlap leaves no step."""
    side = ceil_to(max(tile or DEFAULT_TILE, stride), stride)
    wanted = side // DEFAULT_OVERLAP_FRACTION if overlap is None else overlap
    step = (side - wanted) // stride * stride
    if step < stride:
        raise ConfigError(f"--tile-overlap {wanted} leaves no step between {side}-pixel tiles (net stride "
                          f"{stride}); use an overlap of at most {side - stride}")
    return Tiling(side, side - step)


def tiling_for(shape: tuple[int, int], tile: Optional[int], overlap: Optional[int], stride: int) -> Optional[Tiling]:
    """The tiling for an image of `shape`: None (whole image) for `tile` 0, for `tile` None when the
    image has at most PIXEL_BUDGET pixels, and when it fits in one tile; else
    `make_tiling(tile, overlap, stride)`."""
    if tile == 0 or (tile is None and shape[0] * shape[1] <= PIXEL_BUDGET):
        return None
    tiling = make_tiling(tile, overlap, stride)
    return None if max(shape) <= tiling.tile else tiling


def probabilities(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """Softmax of the net's score for one net input `x` (no padding, no tiling); RunError when the
    net's score is not the size of its input."""
    score = predictor.score(x)
    if score.shape[1:] != x.shape:  # the net crops its score to its input: anything else is a broken net
        raise RunError(f"{predictor.weights}: the net's score is {score.shape[1]}x{score.shape[2]} for a "
                       f"{x.shape[0]}x{x.shape[1]} input; rewrite deploy.prototxt with `fcnseg make-proto` "
                       "(and export again)")
    return softmax(score)


# Called before each run of the net with (runs done, runs in all): a front end's progress bar, and its way
# to cancel between tiles (by raising; nothing is returned then).
TileHook = Callable[[int, int], None]


def predict(predictor: Predictor, x: np.ndarray, tiling: Optional[Tiling] = None,
            on_tile: Optional[TileHook] = None) -> np.ndarray:
    """Class probabilities (float32, K x H x W) for one net input `x` (H x W, from `network_input`).

    The image is mirrored at its bottom and right edges up to the net's input multiple, and that margin
    cropped off again. Without `tiling` the net is reshaped to the whole image; with it, tiles are run
    one at a time and their probabilities averaged where they overlap. Tiles and the whole image see
    the same padding and pooling grid, so they agree wherever a tile's edges are out of reach.
    `on_tile(done, total)` is called before each run of the net (once for a whole image); whatever it
    raises ends the prediction there.
    """
    h, w = x.shape
    m = predictor.multiple
    ph, pw = ceil_to(h, m), ceil_to(w, m)
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, ph - h), (0, pw - w)), mode="reflect")
    if tiling is None or (ph <= tiling.tile and pw <= tiling.tile):
        if on_tile is not None:
            on_tile(0, 1)
        return np.ascontiguousarray(probabilities(predictor, x)[:, :h, :w])
    out = np.empty((predictor.num_classes, ph, pw), np.float32)
    for top, band in tile_bands(predictor, lambda y0, y1, x0, x1: x[y0:y1, x0:x1], ph, pw, tiling, on_tile):
        out[:, top:top + band.shape[1]] = band
    return np.ascontiguousarray(out[:, :h, :w])


def tile_bands(predictor: Predictor, net_input: Callable[[int, int, int, int], np.ndarray], ph: int, pw: int,
               tiling: Tiling, on_tile: Optional[TileHook] = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run the tiles of `tiling`'s grid over a padded ph x pw image and yield its class probabilities band by
    band, top to bottom: (first row, K x n x pw float32), each pixel the mean over the tiles that cover it.

    `net_input(y0, y1, x0, x1)` returns the net input of padded rows y0..y1-1 and columns x0..x1-1. A band is
    yielded as soon as no later tile reaches it, so only one row of tiles' sums is ever held: `predict` and
    `distribute.label_streamed` (an image too large to read whole) share this loop and its sums. `on_tile`: as
    in `predict`.
    """
    side = tiling.tile
    rows = tile_origins(ph, side, tiling.step, predictor.stride)
    cols = tile_origins(pw, side, tiling.step, predictor.stride)
    total = np.zeros((predictor.num_classes, side, pw), np.float32)  # padded rows top .. top + side
    count = np.zeros((side, pw), np.float32)
    top, done = 0, 0
    for y in rows + [ph]:
        n = y - top  # rows top..y are complete: no tile from y on reaches them
        if n:
            yield top, total[:, :n] / count[:n]
            total[:, :side - n] = total[:, n:].copy()
            total[:, side - n:] = 0
            count[:side - n] = count[n:].copy()
            count[side - n:] = 0
            top = y
        for x0 in cols if y < ph else ():
            if on_tile is not None:
                on_tile(done, len(rows) * len(cols))
            done += 1
            probs = probabilities(predictor, net_input(y, min(y + side, ph), x0, min(x0 + side, pw)))
            total[:, :probs.shape[1], x0:x0 + probs.shape[2]] += probs
            count[:probs.shape[1], x0:x0 + probs.shape[2]] += 1


@dataclass
class InferOptions:
    """What `fcnseg infer` writes and how it tiles; see the module docstring."""

    weights: Optional[str] = None
    overlay: bool = False
    probs: bool = False
    tile: Optional[int] = None  # None: automatic (PIXEL_BUDGET); 0: never
    tile_overlap: Optional[int] = None
    to_gray: bool = False
    gpu: Optional[int] = None
    onnx: Optional[str] = None  # an exported model instead of the run's Caffe net (run_dir unused)
    axis: Optional[int] = None  # volumes (fcnseg.volumes): default from the run's reader record
    volume: Optional[int] = None
    dataset: Optional[str] = None
    instances: bool = False  # also write the objects (fcnseg.objects): needs a net trained with --instances


@dataclass
class FrameOutcome:
    """What labelling one image or frame wrote, and the time spent in the net."""

    written: list[Path]
    tiled: bool
    seconds: float
    megapixels: float


def open_predictor(run_dir: Optional[str | Path], options: InferOptions) -> Predictor:
    """The ONNX model `options.onnx` if given, else the run's Caffe net with `options.weights`."""
    if options.onnx is not None:
        return load_onnx_predictor(options.onnx, options.gpu)
    return load_predictor(run_dir, options.weights, options.gpu)


def label_image(predictor: Predictor, image: np.ndarray, source: str = "image", tile: Optional[int] = None,
                overlap: Optional[int] = None, on_tile: Optional[TileHook] = None
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(uint8 windowed image, float32 K x H x W probabilities, whether it was tiled) for one raw 2-D
    image. `tile`/`overlap` as in `tiling_for`, `on_tile` as in `predict`. Raises DataError naming
    `source` for a bad image."""
    gray, x = predictor.network_input(image, source)
    tiling = tiling_for(x.shape, tile, overlap, predictor.stride)
    return gray, predict(predictor, x, tiling, on_tile), tiling is not None
