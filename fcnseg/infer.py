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

`load_predictor` + `predict` are the library entry for one array; `infer` adds files, outputs and the
per-image error handling of the CLI.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import runs
from .config import Config
from .dataset import input_mean, read_dataset, resolve_config
from .errors import ConfigError, DataError, FcnsegError, RunError, WeightsError
from .evaluate import load_run, run_weights
from .images import IMAGE_SUFFIXES, apply_window, overlay, read_stack, save_label_png
from .nets import input_multiple

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
    """A trained net and the input transformation it was trained with."""

    net: object
    window: Optional[dict]  # the dataset's intensity window; None for 8-bit data
    mean: float
    scale: float
    num_classes: int
    multiple: int  # input sizes the net needs (the stride for pad: minimal, else 1)
    stride: int  # tile origins are multiples of this (the trunk's total stride)
    weights: Path

    def network_input(self, image: np.ndarray, source: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(uint8 windowed image, float32 net input) for one raw 2-D image: apply_window, then
        (x - mean) * scale, as Caffe's DataTransformer does. Raises DataError naming `source`."""
        gray = apply_window(image, self.window, source)
        return gray, (gray.astype(np.float32) - np.float32(self.mean)) * np.float32(self.scale)


def load_predictor(run_dir: str | Path, weights: Optional[str | Path] = None,
                   gpu: Optional[int] = None) -> Predictor:
    """The run's deploy net with its best weights (else final, else the newest snapshot; `weights`
    overrides), and the window and mean of the run's dataset.

    Everything is checked before Caffe reads a file (a Caffe CHECK aborts the process): RunError for a
    missing run folder, deploy.prototxt, dataset or weights; WeightsError when the weights do not fit the
    net; CaffeUnavailableError for a `gpu` this Caffe cannot use.
    """
    from .caffe_env import set_device  # noqa: PLC0415 - Caffe only where a net is built

    run_dir, config = load_run(run_dir)
    config = _resolved(run_dir, config)
    deploy = run_dir / runs.DEPLOY_FILE
    if not deploy.is_file():
        raise RunError(f"{run_dir}: no {runs.DEPLOY_FILE}; write it with `fcnseg make-proto {run_dir / runs.CONFIG_FILE} "
                       f"-o {run_dir}`")
    weights_path = Path(weights) if weights is not None else run_weights(run_dir)
    if not weights_path.is_file():
        raise RunError(f"{weights_path}: weights file not found; pass an existing --weights or leave it out")
    window = read_dataset(config.data.root).get("window")
    model = config.model
    if model.input_channels != 1:
        raise RunError(f"{run_dir}: model.input_channels is {model.input_channels}; fcnseg infer reads "
                       "single-channel images only")
    if model.num_classes > 255:
        raise RunError(f"{run_dir}: {model.num_classes} classes do not fit a palette PNG (at most 255)")
    _check_deploy(deploy)
    caffe = set_device(gpu)
    net = caffe.Net(str(deploy), caffe.TEST)
    if "score" not in net.blobs or net.blobs["data"].data.shape[1] != 1:
        raise RunError(f"{deploy}: expected a 1-channel input blob `data` and an output blob `score`; "
                       "rewrite it with `fcnseg make-proto`")
    load_weights(net, weights_path, config)
    return Predictor(net, window, input_mean(config), float(config.data.scale), model.num_classes,
                     input_multiple(model), model.net_stride, weights_path)


def _resolved(run_dir: Path, config: Config) -> Config:
    """The run's config with num_classes and mean from its dataset, which must still exist: the window is
    stored only there."""
    if config.data.root is None:
        raise RunError(f"{run_dir}: the run's config has no data.root, so its intensity window is unknown")
    root = Path(config.data.root)
    if not root.is_dir():
        raise RunError(f"{run_dir}: its dataset {root} (data.root, relative to the current folder) is not "
                       "found; run fcnseg from the folder you trained in, or fix data.root in "
                       f"{run_dir / runs.CONFIG_FILE}")
    return resolve_config(config)


def _check_deploy(deploy: Path) -> None:
    from google.protobuf import text_format  # noqa: PLC0415

    from .caffe_env import caffe_pb2  # noqa: PLC0415

    try:
        text_format.Parse(deploy.read_text(), caffe_pb2().NetParameter())
    except text_format.ParseError as exc:
        raise RunError(f"{deploy}: not a valid prototxt ({exc}); rewrite it with `fcnseg make-proto`") from None


def load_weights(net, path: Path, config: Config) -> None:
    """Copy the run's weights into `net`, all or nothing (see caffemodel.load_trained)."""
    from .caffemodel import load_trained  # noqa: PLC0415
    from .nets import fixed_layers  # noqa: PLC0415

    load_trained(net, path, fixed_layers(config.model))


# ---- whole-image and tiled prediction --------------------------------------------------------------------

@dataclass(frozen=True)
class Tiling:
    """Square tiles of side `tile` (a multiple of the net stride) overlapping by `overlap` pixels."""

    tile: int
    overlap: int

    @property
    def step(self) -> int:
        return self.tile - self.overlap


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def make_tiling(tile: Optional[int], overlap: Optional[int], stride: int) -> Tiling:
    """Tiles of side `tile` (default DEFAULT_TILE) rounded up to a multiple of `stride`, overlapping by at
    least `overlap` (default a quarter tile) so that the step between them is a multiple of `stride`.
    Raises ConfigError when the overlap leaves no step."""
    side = _ceil_to(max(tile or DEFAULT_TILE, stride), stride)
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


def tile_origins(length: int, tile: int, step: int, stride: int) -> list[int]:
    """Origins of tiles of side `tile`, at most `step` apart, covering 0..length; each tile is cut off at
    `length`. All are multiples of `stride` (given a `step` that is), so the last tile may be up to
    stride - 1 pixels shorter than `tile`."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, step)) + [_ceil_to(length - tile, stride)]


def softmax(score: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of a K x H x W score, in float32."""
    e = np.exp(score - score.max(axis=0, keepdims=True))
    e /= e.sum(axis=0, keepdims=True)
    return e


def _forward(net, x: np.ndarray) -> np.ndarray:
    blob = net.blobs["data"]
    if blob.data.shape[2:] != x.shape:
        blob.reshape(1, 1, *x.shape)
        net.reshape()
    blob.data[0, 0] = x
    net.forward()
    score = net.blobs["score"].data[0]
    if score.shape[1:] != x.shape:  # the net crops its score to its input: anything else is a broken deploy
        raise RunError(f"the deploy net's score is {score.shape[1]}x{score.shape[2]} for a {x.shape[0]}x"
                       f"{x.shape[1]} input; rewrite deploy.prototxt with `fcnseg make-proto`")
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
    ph, pw = _ceil_to(h, m), _ceil_to(w, m)
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, ph - h), (0, pw - w)), mode="reflect")
    if tiling is None or (ph <= tiling.tile and pw <= tiling.tile):
        return np.ascontiguousarray(_forward(predictor.net, x)[:, :h, :w])
    total = np.zeros((predictor.num_classes, ph, pw), np.float32)
    count = np.zeros((ph, pw), np.float32)
    for y in tile_origins(ph, tiling.tile, tiling.step, s):
        for x0 in tile_origins(pw, tiling.tile, tiling.step, s):
            window = (slice(y, min(y + tiling.tile, ph)), slice(x0, min(x0 + tiling.tile, pw)))
            total[(slice(None),) + window] += _forward(predictor.net, x[window])
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
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            files += found or [path]  # an empty folder is reported as a bad input
        else:
            files.append(path)
    return files


def _frames(path: Path, to_gray: bool) -> list[tuple[str, str, np.ndarray]]:
    """(output stem, name for messages, 2-D image) per frame: <stem> for a single image,
    <stem>_<frame, 3 digits> for each frame of a stack. Raises DataError for an unreadable file."""
    if path.is_dir():
        raise DataError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    stack = read_stack(path, "image", to_gray)
    if stack.shape[0] == 1:
        return [(path.stem, str(path), stack[0])]
    width = max(3, len(str(stack.shape[0] - 1)))
    return [(f"{path.stem}_{i:0{width}d}", f"{path} (frame {i})", frame) for i, frame in enumerate(stack)]


def _save_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(out_dir: Path, stem: str, gray: np.ndarray, probs: np.ndarray,
                  with_overlay: bool, with_probs: bool) -> list[Path]:
    """Write <stem>.png (class ids, palette PNG) and, if asked, <stem>_overlay.png and <stem>_probs.npy
    (float16, K x H x W) into `out_dir`. Returns the paths written."""
    from PIL import Image  # noqa: PLC0415

    labels = probs.argmax(axis=0).astype(np.uint8)
    paths = [out_dir / f"{stem}.png"]
    _save_atomic(paths[0], lambda p: save_label_png(p, labels))
    if with_overlay:
        paths.append(out_dir / f"{stem}_overlay.png")
        picture = overlay(gray, labels, OVERLAY_ALPHA, ignore_label=None)
        _save_atomic(paths[-1], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    if with_probs:
        paths.append(out_dir / f"{stem}_probs.npy")
        _save_atomic(paths[-1], lambda p: np.save(p, probs.astype(np.float16)))
    return paths


def infer(run_dir: str | Path, inputs: list[str | Path], out_dir: str | Path,
          options: Optional[InferOptions] = None, report: Callable[[str], None] = print) -> InferResult:
    """Label every image, folder of images and frame of a stack in `inputs` with the run's net.

    Run-level problems (run folder, weights, dataset, GPU, tiling options, output folder) raise
    FcnsegError before any image is read. A bad input (unreadable, colour, outside the dataset's
    value range) is passed to `report` with its name and skipped; the result lists it, and its
    `exit_code` says whether none or only some failed.
    """
    import time  # noqa: PLC0415

    from tqdm import tqdm  # noqa: PLC0415

    options = options or InferOptions()
    predictor = load_predictor(run_dir, options.weights, options.gpu)
    if options.tile != 0:
        make_tiling(options.tile, options.tile_overlap, predictor.stride)  # refuse bad options up front
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    result = InferResult(out, predictor.weights)
    files = list_inputs(inputs)
    claimed: dict[str, str] = {}

    def fail(exc: FcnsegError, where: str) -> None:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        result.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            report(f"error: {message}")

    with tqdm(total=len(files), desc="infer", unit="img", file=sys.stderr, leave=False, disable=None) as bar:
        for path in files:
            try:
                frames = _frames(path, options.to_gray)
            except FcnsegError as exc:
                fail(exc, str(path))
                frames = []
            if len(frames) > 1:  # a stack: count its frames
                bar.total += len(frames) - 1
                bar.refresh()
            for stem, where, image in frames:
                try:
                    if stem in claimed:
                        raise DataError(f"{where}: its output {stem}.png would overwrite that of "
                                        f"{claimed[stem]}; rename one of them")
                    if (out / f"{stem}.png").resolve() == path.resolve():
                        raise DataError(f"{where}: its output would overwrite the input itself; choose another -o")
                    claimed[stem] = where
                    gray, x = predictor.network_input(image, where)
                    tiling = tiling_for(x.shape, options.tile, options.tile_overlap, predictor.stride)
                    start = time.perf_counter()
                    probs = predict(predictor, x, tiling)
                    result.seconds += time.perf_counter() - start
                    result.megapixels += x.size / 1e6
                    result.written += write_outputs(out, stem, gray, probs, options.overlay, options.probs)
                    result.images += 1
                    result.tiled += tiling is not None
                except FcnsegError as exc:
                    fail(exc, where)
                bar.update()
            if not frames:
                bar.update()
    return result
