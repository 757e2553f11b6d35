"""Image I/O for single-channel segmentation: reading images and masks, the intensity window, colours.

Shared by `fcnseg data import` and `fcnseg infer`, so both see pixels the same way.

- `read_image(path)`, `read_mask(path)`, `read_stack(path, kind)`: PNG, TIFF (8/16/32-bit, float,
  multi-page), JPEG (images only) and `.npy`, returned as 2-D arrays (H, W) or stacks (N, H, W) in their
  native dtype. Colour input raises DataError naming the file, unless an image is read with `to_gray`.
  A palette PNG mask is read as its indices, never through its colours.
- `WindowEstimator` / `compute_window(images)` decide how raw intensities become network input: `None`
  for 8-bit data (passed through unchanged), else a window {low, high, method, percentiles} that
  `apply_window` maps linearly onto 0-255 (values outside are clipped); `net_input` then subtracts the
  mean and scales, as the training Data layer does.
- `PALETTE`, `overlay`, `save_label_png`: one fixed colour per class id for every picture fcnseg draws.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import tifffile
from PIL import Image

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
DEFAULT_PERCENTILES = (1.0, 99.8)

# The one size rule for whatever fcnseg decodes from a file (an image, a stack, a volume slice, a Datum): a
# plane holds at most MAX_PLANE_PIXELS pixels (Pillow's own decompression-bomb limit, 2 x
# Image.MAX_IMAGE_PIXELS) and one array read at once at most MAX_DECODED_BYTES. Checked against what the
# header claims, before anything is allocated or decompressed (`check_decoded_size`).
MAX_PLANE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
MAX_DECODED_BYTES = 8 << 30

# ITU-R BT.601 luma, what PIL's convert("L") uses; applied to any dtype by --to-gray.
LUMA = np.array([0.299, 0.587, 0.114])
_TIFF_SPATIAL = set("YX")
_TIFF_CHANNEL = set("SC")  # S: samples per pixel (RGB), C: separate channels (ImageJ/OME)


# ---- reading -------------------------------------------------------------------------------------------

def check_decoded_size(where: str | Path, shape: Iterable[int], itemsize: int, plane: Optional[tuple] = None) -> None:
    """DataError naming `where` when an array of `shape` and `itemsize` bytes per value, as a header claims it,
    breaks the size rule (MAX_DECODED_BYTES in all, MAX_PLANE_PIXELS per `plane` (H, W), default the last two
    axes) or has a negative axis; nothing is allocated."""
    shape = tuple(int(d) for d in shape)
    plane = tuple(int(d) for d in plane) if plane is not None else shape[-2:]
    text = "x".join(map(str, shape))
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: its header claims an array of {text}; the file is damaged")
    nbytes = int(np.prod(shape, dtype=object) or 0) * int(itemsize)
    pixels = int(np.prod(plane, dtype=object) or 0)
    if nbytes > MAX_DECODED_BYTES or pixels > MAX_PLANE_PIXELS:
        raise DataError(f"{where}: its header claims an array of {text} ({nbytes / 2**30:.1f} GiB), more than "
                        f"fcnseg decodes at once ({MAX_DECODED_BYTES / 2**30:.0f} GiB, {MAX_PLANE_PIXELS} pixels "
                        "per plane); the file is damaged, or cut it into smaller images or a chunked Zarr/HDF5 volume")


def read_image(path: str | Path, to_gray: bool = False) -> np.ndarray:
    """One single-channel image as a 2-D array (H, W) in its native dtype (bool becomes uint8 0/255).

    RGB(A) input raises DataError unless `to_gray` (BT.601 luma, rounded back to the input dtype);
    other multi-channel input always does. A file holding several frames raises DataError too (use
    `read_stack`). Float images must be finite.
    """
    return _single(read_stack(path, "image", to_gray), path)


def read_mask(path: str | Path) -> np.ndarray:
    """One label mask as a 2-D integer array (H, W): one class id per pixel, values as stored.

    Palette PNGs give their indices. RGB masks, JPEG masks and float masks with non-integer values raise
    DataError saying how to fix the file.
    """
    return _single(read_stack(path, "mask"), path)


def read_stack(path: str | Path, kind: str = "image", to_gray: bool = False) -> np.ndarray:
    """Every frame of a file as a 3-D array (N, H, W); a plain 2-D image gives N = 1.

    Multi-page TIFF and 3-D `.npy` (N, H, W) are stacks; a 4-D stack (time x z) gives its frames
    time-major, as `read_time_stack` describes. `kind` is "image" or "mask" and selects the checks of
    `read_image` / `read_mask`. Raises DataError naming the file for unreadable, colour, ambiguous or
    otherwise unusable input.
    """
    return read_time_stack(path, kind, to_gray)[0]


def read_time_stack(path: str | Path, kind: str = "image", to_gray: bool = False) -> tuple[np.ndarray, int]:
    """Every frame of a file as (frames (N, H, W), slices per time point Z); N = T * Z.

    A 4-D stack T x Z x H x W is read time-major: frame t * Z + z is z-slice z of time point t, so a
    caller can keep the slices of one time point together. A TIFF must say which axis is time: its
    axes (ImageJ/OME metadata) hold T and one other frame axis (usually Z), in either order; a TIFF
    with two unnamed frame axes (tifffile's 'QQYX') or more than two frame axes of length > 1 is
    ambiguous and refused. A 4-D `.npy` is T, Z, H, W (unless its last axis is 3 or 4 long: RGB(A)
    frames). Everything else has Z = 1.
    """
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if kind == "mask" and suffix in (".jpg", ".jpeg"):
        raise DataError(f"{path}: JPEG is lossy and blurs class ids at every edge; "
                        "save masks as PNG or TIFF")
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use {', '.join(IMAGE_SUFFIXES)}")
    slices = 1
    try:
        if suffix in (".tif", ".tiff"):
            frames, channels, slices = _tiff_frames(path)
        elif suffix == ".npy":
            frames, channels, slices = _npy_frames(path)
        else:
            frames, channels = _pil_frames(path, kind)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, reported in one line
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if channels:
        # tifffile stores a 3- or 4-frame stack as planar RGB unless told photometric='minisblack'.
        hint = (f"; if it is really a stack of {channels} frames, re-save it with "
                "tifffile.imwrite(..., photometric='minisblack')") if suffix in (".tif", ".tiff") else ""
        frames = to_single_channel(frames, channels, path, kind, to_gray, hint)
    return check_values(frames, path, kind), slices


def _single(stack: np.ndarray, path) -> np.ndarray:
    if stack.shape[0] != 1:
        raise DataError(f"{path}: holds {stack.shape[0]} frames; a multi-page stack is given on its own "
                        "as --images/--labels FILE, not inside a folder")
    return stack[0]


def _tiff_frames(path: Path) -> tuple[np.ndarray, int, int]:
    """(frames (N, H, W[, C]), channels or 0, z-slices per time point) of a TIFF's first series."""

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise DataError(f"{path}: the TIFF holds no image")
        series = tif.series[0]
        axes = series.axes
        check_decoded_size(path, series.shape, series.dtype.itemsize if series.dtype is not None else 1,
                           tuple(d for d, a in zip(series.shape, axes) if a in _TIFF_SPATIAL))
        array = series.asarray()
    if array.ndim != len(axes):
        raise DataError(f"{path}: TIFF axes {axes!r} do not match its shape {array.shape}")
    if not _TIFF_SPATIAL <= set(axes):
        raise DataError(f"{path}: TIFF has no Y and X axes (axes {axes!r})")
    # Frames first (time before z), then Y, X, then any channel axes merged into one.
    frame_axes = [i for i, a in enumerate(axes) if a not in _TIFF_SPATIAL | _TIFF_CHANNEL]
    long_axes = [i for i in frame_axes if array.shape[i] > 1]
    slices = 1
    if len(long_axes) == 2:
        names = "".join(axes[i] for i in long_axes)
        if names.count("T") != 1:
            raise DataError(f"{path}: a 4-D stack of {' x '.join(map(str, array.shape))} (TIFF axes {axes!r}): "
                            "fcnseg cannot tell which axis is time, and splits train/val by time point; save "
                            "it with axes metadata, e.g. tifffile.imwrite(path, stack, imagej=True, "
                            "metadata={'axes': 'TZYX'}), or as a 3-D stack of independent frames")
        time_axis = long_axes[names.index("T")]
        slices = int(array.shape[long_axes[1 - names.index("T")]])
        frame_axes = [time_axis] + [i for i in frame_axes if i != time_axis]
    elif len(long_axes) > 2:
        raise DataError(f"{path}: {len(long_axes)} frame axes longer than 1 (TIFF axes {axes!r}, shape "
                        f"{array.shape}); fcnseg reads stacks of frames (3-D) or time x z (4-D): export "
                        "one of those")
    chan_axes = [i for i, a in enumerate(axes) if a in _TIFF_CHANNEL]
    order = frame_axes + [axes.index("Y"), axes.index("X")] + chan_axes
    array = np.transpose(array, order)
    n = int(np.prod([array.shape[i] for i in range(len(frame_axes))], dtype=np.int64))
    h, w = array.shape[len(frame_axes):len(frame_axes) + 2]
    c = int(np.prod(array.shape[len(frame_axes) + 2:], dtype=np.int64))
    array = array.reshape(n, h, w, c)
    return (array[..., 0], 0, slices) if c == 1 else (array, c, slices)


def _npy_frames(path: Path) -> tuple[np.ndarray, int, int]:
    """(frames (N, H, W[, C]), channels or 0, z-slices per time point) of a .npy file."""
    try:
        with open(path, "rb") as f:  # the header's shape, before np.load allocates it
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is not None:
                shape, _, dtype = header(f)
                check_decoded_size(path, shape, dtype.itemsize,
                                   shape[:2] if len(shape) == 3 and shape[-1] in (3, 4) else None)
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain numeric .npy array ({exc}); save it with np.save") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise DataError(f"{path}: .npy holds {getattr(array, 'dtype', type(array))}, not numbers")
    if array.ndim == 2:
        return array[None], 0, 1
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return array[None], array.shape[-1], 1  # (H, W, 3|4): one colour image
    if array.ndim == 3:
        return array, 0, 1
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        return array, array.shape[-1], 1  # (N, H, W, 3|4): colour frames
    if array.ndim == 4:
        t, z, h, w = array.shape
        return array.reshape(t * z, h, w), 0, z
    raise DataError(f"{path}: .npy has shape {array.shape}; expected (H, W), (N, H, W), (T, Z, H, W) or (H, W, 3)")


def _pil_frames(path: Path, kind: str) -> tuple[np.ndarray, int]:

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode == "P":
            if kind == "mask":
                return np.asarray(img)[None], 0  # the indices, never the colours
            rgb = np.asarray(img.convert("RGB"))
            # A palette of grays is a single-channel image stored compactly.
            return (rgb[None, ..., 0], 0) if _channels_equal(rgb) else (rgb[None], 3)
        if mode == "1":
            array = np.asarray(img, dtype=np.uint8)
            return (array * 255 if kind == "image" else array)[None], 0
        if mode in ("L", "I", "F") or mode.startswith("I;16"):
            array = np.asarray(img)
            return array.astype(array.dtype.newbyteorder("="), copy=False)[None], 0  # I;16B is big-endian
        if mode == "LA" and kind == "image":
            return np.asarray(img)[None, ..., 0], 0  # alpha carries no intensity
        if mode in ("RGB", "RGBA"):
            array = np.asarray(img)
        elif mode in ("LA", "PA"):
            array = np.asarray(img.convert("RGBA"))
        else:
            array = np.asarray(img.convert("RGB"))
    return array[None], array.shape[-1]


def _channels_equal(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def to_single_channel(frames: np.ndarray, channels: int, path: Path, kind: str, to_gray: bool,
                       hint: str = "") -> np.ndarray:
    """(N, H, W, C) colour frames -> (N, H, W) luma, or DataError saying what to do (plus `hint`)."""
    rgb = channels in (3, 4)
    if kind == "mask":
        how = ("it holds colours, not class ids; save one class id per pixel as a single-channel "
               "(L, P or I;16) PNG or TIFF, e.g. Image.open(f).convert('L') when R=G=B, or map each "
               "colour to its id") if rgb else "save one class id per pixel as a single-channel PNG or TIFF"
        raise DataError(f"{path}: mask has {channels} channels; {how}{hint}")
    if not rgb:
        raise DataError(f"{path}: image has {channels} channels; fcnseg segments single-channel images, "
                        f"so export the one channel to segment{hint}")
    if not to_gray:
        same = " (its R, G and B are identical, so nothing is lost)" if _channels_equal(frames[..., :3]) else ""
        raise DataError(f"{path}: image is {'RGBA' if channels == 4 else 'RGB'}; fcnseg takes single-channel "
                        f"images: pass --to-gray to convert with BT.601 luma{same}{hint}")
    luma = frames[..., :3].astype(np.float64) @ LUMA
    if frames.dtype.kind in "ui":
        info = np.iinfo(frames.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(frames.dtype)
    return luma.astype(np.float32)


def check_values(frames: np.ndarray, path: Path, kind: str) -> np.ndarray:
    if 0 in frames.shape:
        raise DataError(f"{path}: holds no pixels (frames x height x width {'x'.join(map(str, frames.shape))}); "
                        "the file is damaged or empty")
    if frames.dtype == bool:
        frames = frames.astype(np.uint8) * (255 if kind == "image" else 1)
    if frames.dtype.kind not in "uif":
        raise DataError(f"{path}: pixel type {frames.dtype} is not supported; use integers or floats")
    if frames.dtype.kind == "f":
        if not np.isfinite(frames).all():
            raise DataError(f"{path}: contains NaN or infinite values; replace them before importing")
        if kind == "mask":
            if not np.array_equal(frames, np.round(frames)):
                raise DataError(f"{path}: mask has non-integer values (float data); masks hold one "
                                "integer class id per pixel: save them as an integer PNG or TIFF")
            return frames.astype(np.int64)
        if frames.dtype != np.float64:
            frames = frames.astype(np.float32)
    return frames


# ---- intensity window ----------------------------------------------------------------------------------

class WindowEstimator:
    """The intensity distribution of a set of images, added one at a time, for a percentile window.

    uint8/uint16 images are counted exactly in a histogram; other dtypes contribute an evenly strided
    sample of at most SAMPLE_CAP pixels each, weighted by its stride, so memory stays bounded.
    """

    SAMPLE_CAP = 1 << 18

    def __init__(self) -> None:
        self._hist = np.zeros(1 << 16, np.int64)
        self._samples: list[tuple[np.ndarray, int]] = []
        self.only_uint8 = True
        self.pixels = 0

    def add(self, image: np.ndarray) -> None:
        """Count the pixels of one image (any shape, integer or float)."""
        flat = np.asarray(image).ravel()
        self.pixels += flat.size
        if flat.dtype == np.uint8:
            self._hist[:256] += np.bincount(flat, minlength=256)
            return
        self.only_uint8 = False
        if flat.dtype == np.uint16:
            self._hist += np.bincount(flat, minlength=1 << 16)
        else:
            stride = max(1, -(-flat.size // self.SAMPLE_CAP))
            self._samples.append((flat[::stride].astype(np.float64), stride))

    def percentiles(self, q: Iterable[float]) -> list[float]:
        """Inverted-CDF percentiles (each a value present in the data) of everything added."""
        if self.pixels == 0:
            raise ValueError("no images were added")
        bins = np.flatnonzero(self._hist)
        values = np.concatenate([bins.astype(np.float64)] + [s for s, _ in self._samples])
        weights = np.concatenate([self._hist[bins]] + [np.full(s.size, w, np.int64) for s, w in self._samples])
        order = np.argsort(values, kind="stable")
        values, cumulative = values[order], np.cumsum(weights[order])
        targets = np.asarray(list(q), np.float64) / 100.0 * cumulative[-1]
        index = np.minimum(np.searchsorted(cumulative, targets, side="left"), values.size - 1)
        return [float(v) for v in values[index]]

    def window(self, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
               values: Optional[tuple[float, float]] = None) -> Optional[dict]:
        """The window for these images: fixed `values` if given, None if every image was uint8, else the
        `percentiles` window. Raises DataError when the images are constant (nothing to stretch)."""
        if values is not None:
            return fixed_window(*values)
        if self.only_uint8:
            return None
        p_low, p_high = (float(p) for p in percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise DataError(f"window percentiles {p_low}, {p_high}: need 0 <= low < high <= 100")
        low, high = self.percentiles((p_low, p_high))
        if high <= low:  # a very peaked histogram: fall back to the full range before giving up
            low, high = self.percentiles((0.0, 100.0))
        if high <= low:
            raise DataError(f"the train images are constant (every pixel is {low:g}); nothing to window: "
                            "check the images, or give --window-values LO,HI")
        return {"low": low, "high": high, "method": "percentile", "percentiles": [p_low, p_high]}


def fixed_window(low: float, high: float) -> dict:
    """A window with explicit bounds (--window-values). Raises DataError unless low < high."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise DataError(f"window values {low:g}, {high:g}: need finite LO < HI, e.g. --window-values 100,4000")
    return {"low": low, "high": high, "method": "fixed"}


def compute_window(images: Iterable[np.ndarray], percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                   values: Optional[tuple[float, float]] = None) -> Optional[dict]:
    """The intensity window for `images` (see `WindowEstimator.window`): None for 8-bit data."""
    estimator = WindowEstimator()
    for image in images:
        estimator.add(image)
    return estimator.window(percentiles, values)


def apply_window(array: np.ndarray, window: Optional[dict], source: str = "image") -> np.ndarray:
    """Raw intensities -> uint8 network input, exactly as at import time.

    `window` None (8-bit dataset): uint8 passes through unchanged; other integer/float data whose
    values are whole numbers in 0..255 are cast; anything else raises DataError naming `source`.
    Otherwise (x - low) / (high - low) * 255, clipped to 0..255 and rounded.
    """
    array = np.asarray(array)
    if window is None:
        if array.dtype == np.uint8:
            return array
        if array.dtype == bool:
            return array.astype(np.uint8) * 255
        if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array))):
            raise DataError(f"{source}: {array.dtype} values {array.min():g}..{array.max():g}, but the dataset "
                            "was imported from 8-bit images without an intensity window; convert the image "
                            "to 8 bits like the training images, or re-import with --window-values LO,HI")
        return array.astype(np.uint8)
    low, high = float(window["low"]), float(window["high"])
    scaled = (array.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


# ---- colours -------------------------------------------------------------------------------------------

def _voc_color(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour-map entry for `index` (bit-interleaved, distinct for every index)."""
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return r, g, b


# Fixed class colours, used by every preview, overlay and label PNG fcnseg writes:
# 0 black (background), 1 green, 2 red, 3 blue, 4 yellow, 5 magenta, 6 cyan, 7 orange, 8 purple,
# 9..254 the PASCAL VOC colour map, 255 white (the conventional ignore label).
PALETTE: list[tuple[int, int, int]] = (
    [(0, 0, 0), (0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
     (255, 128, 0), (128, 0, 255)]
    + [_voc_color(i) for i in range(9, 255)]
    + [(255, 255, 255)]
)
IGNORE_COLOR = (255, 255, 255)


def net_input(gray: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """(gray - mean) * scale in float32: what Caffe's DataTransformer (transform_param mean_value,
    scale, written by nets) feeds the net for the windowed 0-255 `gray`; infer computes it here."""
    return (np.asarray(gray).astype(np.float32) - np.float32(mean)) * np.float32(scale)


def overlay(gray: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
            ignore_label: Optional[int] = 255) -> np.ndarray:
    """An RGB uint8 picture (H, W, 3): `gray` (uint8, H x W) tinted by `labels` (class ids, H x W).

    Class 0 is left untinted; class c >= 1 is blended with PALETTE[c] at opacity `alpha`;
    `ignore_label` pixels with IGNORE_COLOR. Raises ValueError for mismatched shapes or ids > 255.
    """
    gray, labels = np.asarray(gray), np.asarray(labels)
    if gray.shape != labels.shape or gray.ndim != 2:
        raise ValueError(f"overlay needs two 2-D arrays of one shape, got {gray.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label ids must be in 0..255")
    colors = np.array(PALETTE, np.float32)[labels.astype(np.intp)]
    if ignore_label is not None:
        colors[labels == ignore_label] = IGNORE_COLOR
    rgb = np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)
    tinted = labels != 0
    rgb[tinted] = (1.0 - alpha) * rgb[tinted] + alpha * colors[tinted]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write `labels` (2-D class ids in 0..255) as a palette PNG: pixel values are the ids, shown in
    PALETTE colours; `read_mask` reads the ids back unchanged. Raises ValueError for other input."""

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "ui" or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise ValueError("save_label_png needs a 2-D integer array with values in 0..255")
    image = Image.frombytes("P", labels.shape[::-1], np.ascontiguousarray(labels, np.uint8).tobytes())
    image.putpalette([c for rgb in PALETTE for c in rgb])
    image.save(path, format="PNG")
