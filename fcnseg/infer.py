"""`fcnseg infer`: label single-channel images with a trained run.

`infer(run_dir, inputs, out_dir, options)` writes, per image (or per frame of a multi-page TIFF / 3-D
.npy), OUT_DIR/<stem>.png: the class ids as a palette PNG in `images.PALETTE` colours, the input's width
and height. `--overlay` adds <stem>_overlay.png, `--probs` <stem>_probs.npy (float16, K x H x W).

The net sees exactly what training's Data layer produced: the dataset's intensity window onto uint8
0-255 (`images.apply_window`), then (x - mean) * data.scale. It is reshaped to each image; with
`model.pad: minimal` the image is first mirrored up to a multiple of the net stride and the score
cropped back. Images above PIXEL_BUDGET pixels (or any, with --tile N) are cut into tiles whose origins
are multiples of the net stride, so every tile sees the whole image's pooling grid; the tiles' softmax
probabilities are averaged where they overlap.

The net is either the run's Caffe deploy net (`load_predictor`, facts from the run's inference.yaml,
so a moved or copied run folder works without its dataset) or an ONNX model written by `fcnseg export`
run with onnxruntime (`load_onnx_predictor`, facts from the model's metadata); everything after that is
shared. `label_image(predictor, image)` is the library entry for one array (load the predictor once,
then call it per image or frame); `infer` adds files, outputs and the per-image error handling of the CLI.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import runs
from .errors import ConfigError, DataError, FcnsegError, RunError
from .geometry import ceil_to, tile_origins
from .images import IMAGE_SUFFIXES, apply_window, net_input, overlay, read_stack, save_label_png
from .metrics import softmax
from .volumes import volume_format

# Above this many input pixels an image is tiled unless --tile 0 is given. 1024 x 1024: a full HeLa
# frame (700 x 1100 = 0.77 Mpx) still runs whole. Memory is what tiling saves: CPU Caffe needs about
# 6 GB per megapixel even for a 2-stage net (each convolution keeps its own im2col buffer, 2.3 GB for
# conv1_2 alone), so 512-pixel tiles stay under 2 GB.
PIXEL_BUDGET = 1024 * 1024
DEFAULT_TILE = 512
DEFAULT_OVERLAP_FRACTION = 4  # default overlap: a quarter of the tile
OVERLAY_ALPHA = 0.5


# ---- the net and the input transformation ---------------------------------------------------------------

@dataclass
class Predictor:
    """A trained net (Caffe or ONNX) and the input transformation it was trained with.

    `score(x)` runs the net on one H x W net input and returns its K x H x W `score` (before softmax).
    `raw_input`: the net applies the window, mean and scale itself (an ONNX model exported
    `--with-preprocessing`), so it is fed the original pixel values.
    """

    score: Callable[[np.ndarray], np.ndarray]
    facts: runs.InferenceFacts
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


def _check_facts(facts: runs.InferenceFacts, where: Path) -> None:
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
    from .onnxmodel import INPUT, SCORES, open_session  # noqa: PLC0415

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


def predict(predictor: Predictor, x: np.ndarray, tiling: Optional[Tiling] = None) -> np.ndarray:
    """Class probabilities (float32, K x H x W) for one net input `x` (H x W, from `network_input`).

    The image is mirrored at its bottom and right edges up to the net's input multiple, and that margin
    cropped off again. Without `tiling` the net is reshaped to the whole image; with it, tiles are run
    one at a time and their probabilities averaged where they overlap. Tiles and the whole image see
    the same padding and pooling grid, so they agree wherever a tile's edges are out of reach.
    """
    h, w = x.shape
    m, s = predictor.multiple, predictor.stride
    ph, pw = ceil_to(h, m), ceil_to(w, m)
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, ph - h), (0, pw - w)), mode="reflect")
    if tiling is None or (ph <= tiling.tile and pw <= tiling.tile):
        return np.ascontiguousarray(probabilities(predictor, x)[:, :h, :w])
    total = np.zeros((predictor.num_classes, ph, pw), np.float32)
    count = np.zeros((ph, pw), np.float32)
    for y in tile_origins(ph, tiling.tile, tiling.step, s):
        for x0 in tile_origins(pw, tiling.tile, tiling.step, s):
            window = (slice(y, min(y + tiling.tile, ph)), slice(x0, min(x0 + tiling.tile, pw)))
            total[(slice(None),) + window] += probabilities(predictor, x[window])
            count[window] += 1
    total /= count
    return np.ascontiguousarray(total[:, :h, :w])


# ---- files in, files out ---------------------------------------------------------------------------------

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


@dataclass
class InferResult:
    """Outputs written, inputs that failed, and the time spent in the net."""

    out_dir: Path
    weights: Path
    written: list[Path] = field(default_factory=list)
    images: int = 0
    tiled: int = 0
    failures: list[str] = field(default_factory=list)  # one message per bad input, naming it
    seconds: float = 0.0
    megapixels: float = 0.0

    def record(self, frame: "FrameOutcome") -> None:
        """Count one labelled image or frame."""
        self.written += frame.written
        self.images += 1
        self.tiled += frame.tiled
        self.seconds += frame.seconds
        self.megapixels += frame.megapixels

    @property
    def exit_code(self) -> int:
        """0 when every input was labelled, 2 when none was, 1 when some of a batch failed."""
        if not self.failures:
            return 0
        return 2 if self.images == 0 else 1

    def lines(self) -> list[str]:
        """The summary the CLI prints."""
        out = [f"labelled {self.images} image(s) into {self.out_dir} with {self.weights}"
               + (f" ({self.tiled} tiled)" if self.tiled else "")]
        if self.megapixels:
            out.append(f"{1000 * self.seconds / self.megapixels:.0f} ms per megapixel "
                       f"({self.megapixels:.2f} Mpx in {self.seconds:.1f} s)")
        if self.failures:
            out.append(f"{len(self.failures)} input(s) failed:")
            out += [f"  {message}" for message in self.failures]
        return out


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """Files to label: each path as given, or a folder's image files (IMAGE_SUFFIXES, sorted, not
    recursive). Nothing is checked here; unreadable inputs fail one by one in `infer`."""
    files = []
    for path in map(Path, paths):
        if path.is_dir() and volume_format(path) is None:  # a DICOM series or a Zarr store is one input
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            files += found or [path]  # an empty folder is reported as a bad input
        else:
            files.append(path)
    return files


def read_frames(path: Path, to_gray: bool) -> list[tuple[str, str, np.ndarray]]:
    """(output stem, name for messages, 2-D image) per frame: <stem> for a single image,
    <stem>_<frame, 3 digits> for each frame of a stack. Raises DataError for an unreadable file."""
    if path.is_dir():
        raise DataError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    stack = read_stack(path, "image", to_gray)
    if stack.shape[0] == 1:
        return [(path.stem, str(path), stack[0])]
    width = max(3, len(str(stack.shape[0] - 1)))
    return [(f"{path.stem}_{i:0{width}d}", f"{path} (frame {i})", frame) for i, frame in enumerate(stack)]


# The outputs of one image or frame, named <stem><suffix>: class ids, --overlay, --probs.
LABELS_SUFFIX, OVERLAY_SUFFIX, PROBS_SUFFIX = ".png", "_overlay.png", "_probs.npy"


def output_names(stem: str, options: InferOptions) -> list[str]:
    """The file names `options` makes for one image or frame, in the order they are written."""
    return ([stem + LABELS_SUFFIX] + [stem + OVERLAY_SUFFIX] * options.overlay
            + [stem + PROBS_SUFFIX] * options.probs)


def prepare_output(out_dir: str | Path, options: InferOptions, stride: int) -> Path:
    """The output folder, created, after refusing what would fail on every image: tiling options that
    leave no step for this net's `stride` (ConfigError) and an `out_dir` that is a file (DataError)."""
    if options.tile != 0:
        make_tiling(options.tile, options.tile_overlap, stride)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    return out


class OutputClaims:
    """Which input each output stem in `out_dir` belongs to, so that no input overwrites another's
    outputs or itself."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.owner: dict[str, str] = {}  # stem -> the input (frame) it was given to

    def claim(self, path: Path, stem: str, where: str) -> None:
        """Give `stem` to `where` (read from `path`); DataError when another input has it or its label
        PNG would be the input file itself."""
        if stem in self.owner:
            raise DataError(f"{where}: its output {stem}{LABELS_SUFFIX} would overwrite that of "
                            f"{self.owner[stem]}; rename one of them")
        if (self.out_dir / (stem + LABELS_SUFFIX)).resolve() == path.resolve():
            raise DataError(f"{where}: its output would overwrite the input itself; choose another -o")
        self.owner[stem] = where

    def release(self, stem: str) -> None:
        """Give `stem` back (a file that turned out to be a stack: its frames claim their own stems)."""
        del self.owner[stem]


def write_labels(out_dir: Path, stem: str, gray: np.ndarray, labels: np.ndarray, with_overlay: bool) -> list[Path]:
    """Write <stem>.png (class ids `labels`, palette PNG) and, if asked, <stem>_overlay.png (the labels
    over `gray`, the windowed image) into `out_dir`. Returns the paths written."""
    from PIL import Image  # noqa: PLC0415

    paths = [out_dir / (stem + LABELS_SUFFIX)]
    runs.write_atomic(paths[0], lambda p: save_label_png(p, labels))
    if with_overlay:
        paths.append(out_dir / (stem + OVERLAY_SUFFIX))
        picture = overlay(gray, labels, OVERLAY_ALPHA, ignore_label=None)
        runs.write_atomic(paths[-1], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    return paths


def write_outputs(out_dir: Path, stem: str, gray: np.ndarray, probs: np.ndarray,
                  with_overlay: bool, with_probs: bool) -> list[Path]:
    """Write <stem>.png (class ids, palette PNG) and, if asked, <stem>_overlay.png and <stem>_probs.npy
    (float16, K x H x W) into `out_dir`. Returns the paths written."""
    paths = write_labels(out_dir, stem, gray, probs.argmax(axis=0).astype(np.uint8), with_overlay)
    if with_probs:
        paths.append(out_dir / (stem + PROBS_SUFFIX))
        runs.write_atomic(paths[-1], lambda p: np.save(p, probs.astype(np.float16)))
    return paths


@dataclass
class FrameOutcome:
    """What labelling one image or frame wrote, and the time spent in the net."""

    written: list[Path]
    tiled: bool
    seconds: float
    megapixels: float


def label_and_save(predictor: Predictor, image: np.ndarray, where: str, out_dir: Path, stem: str,
                   options: InferOptions) -> FrameOutcome:
    """Label one raw 2-D image (`label_image`) and write its outputs as <stem>* into `out_dir`
    (`write_outputs`). Raises DataError naming `where` for a bad image."""
    import time  # noqa: PLC0415

    start = time.perf_counter()
    gray, probs, tiled = label_image(predictor, image, where, options.tile, options.tile_overlap)
    seconds = time.perf_counter() - start
    written = write_outputs(out_dir, stem, gray, probs, options.overlay, options.probs)
    return FrameOutcome(written, tiled, seconds, gray.size / 1e6)


def failure_message(exc: FcnsegError, where: str) -> str:
    """The one line listing a bad input: the error's message, prefixed with `where` unless it names it."""
    return str(exc) if str(exc).startswith(where) else f"{where}: {exc}"


def open_predictor(run_dir: Optional[str | Path], options: InferOptions) -> Predictor:
    """The ONNX model `options.onnx` if given, else the run's Caffe net with `options.weights`."""
    if options.onnx is not None:
        return load_onnx_predictor(options.onnx, options.gpu)
    return load_predictor(run_dir, options.weights, options.gpu)


def label_image(predictor: Predictor, image: np.ndarray, source: str = "image", tile: Optional[int] = None,
                overlap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(uint8 windowed image, float32 K x H x W probabilities, whether it was tiled) for one raw 2-D
    image. `tile`/`overlap` as in `tiling_for`. Raises DataError naming `source` for a bad image."""
    gray, x = predictor.network_input(image, source)
    tiling = tiling_for(x.shape, tile, overlap, predictor.stride)
    return gray, predict(predictor, x, tiling), tiling is not None


def infer(run_dir: Optional[str | Path], inputs: list[str | Path], out_dir: str | Path,
          options: Optional[InferOptions] = None, report: Callable[[str], None] = print) -> InferResult:
    """Label every image, folder of images and frame of a stack in `inputs` with the run's net (or
    the ONNX model `options.onnx`).

    Run-level problems (run folder, weights, dataset, GPU, tiling options, output folder) raise
    FcnsegError before any image is read. A bad input (unreadable, colour, outside the dataset's
    value range) is passed to `report` with its name and skipped; the result lists it, and its
    `exit_code` says whether none or only some failed.
    """
    from tqdm import tqdm  # noqa: PLC0415

    options = options or InferOptions()
    predictor = open_predictor(run_dir, options)
    out = prepare_output(out_dir, options, predictor.stride)
    result = InferResult(out, predictor.weights)
    files = list_inputs(inputs)
    claims = OutputClaims(out)

    def fail(exc: FcnsegError, where: str) -> None:
        message = failure_message(exc, where)
        result.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            report(f"error: {message}")

    with tqdm(total=len(files), desc="infer", unit="img", file=sys.stderr, leave=False, disable=None) as bar:
        for path in files:
            if volume_format(path) is not None:  # DICOM, NIfTI, HDF5, Zarr: a label volume (fcnseg.volume_infer)
                from .volume_infer import label_volume  # noqa: PLC0415 - it imports this module

                try:
                    result.record(label_volume(predictor, path, out, options))
                except FcnsegError as exc:
                    fail(exc, str(path))
                bar.update()
                continue
            try:
                frames = read_frames(path, options.to_gray)
            except FcnsegError as exc:
                fail(exc, str(path))
                frames = []
            if len(frames) > 1:  # a stack: count its frames
                bar.total += len(frames) - 1
                bar.refresh()
            for stem, where, image in frames:
                try:
                    claims.claim(path, stem, where)
                    result.record(label_and_save(predictor, image, where, out, stem, options))
                except FcnsegError as exc:
                    fail(exc, where)
                bar.update()
            if not frames:
                bar.update()
    return result
