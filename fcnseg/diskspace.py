"""Free space before writing: every large write fcnseg makes is sized first, and refused on a disk that
cannot hold it, before Caffe (which aborts the whole process when a write fails) starts it.

The sizes are computed, never guessed from a write: a snapshot is the net's parameters x 4 bytes in
the caffemodel plus as many again per solver history blob in the solverstate (`snapshot_bytes`); best/
final copies are the parameters x 4 (`weights_bytes`); `data import` stores each tile's pixels twice
(image and label LMDB, `import_bytes`); `weights convert` writes at most the 1-channel VGG16 trunk
(`convert_bytes`); `export` knows its serialized model. `require(where, nbytes, what)` compares that
plus a margin (`margin`) with the free space of the file system holding `where` and raises
`DiskFullError` (exit 2, one line: what was needed, what was free, where) when it does not fit.
`disk_full_line(exc)` turns an OSError from a full disk met elsewhere into such a line for the CLI.
"""
from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path
from typing import Iterable, Optional

from .errors import FcnsegError
from .vgg16 import CONV_KERNEL, FC_CHANNELS, FC_KERNELS, STAGE_CHANNELS, STAGE_CONVS

FLOAT_BYTES = 4
# Caffe's solvers keep this many history blobs per learnable blob, all written into the solverstate.
HISTORY_BLOBS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}
# Room kept free beyond the estimate: the protobuf framing (layer names, shapes), and the small writes
# that go on meanwhile (caffe.log, metrics.jsonl, plots).
MARGIN_BYTES = 1 << 20
MARGIN_FRACTION = 0.01
# An LMDB record costs its Datum (pixels + a few header bytes) rounded up to whole pages, plus a node.
LMDB_PAGE = 4096
LMDB_RECORD_OVERHEAD = 2 * LMDB_PAGE
LMDB_FIXED = 1 << 20  # meta pages, branch pages, lock file


class DiskFullError(FcnsegError):
    """A write would not fit on its file system; nothing was written."""


def margin(nbytes: int) -> int:
    """The bytes kept free beyond an estimate of `nbytes`."""
    return MARGIN_BYTES + math.ceil(MARGIN_FRACTION * nbytes)


def human(nbytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable


def existing_folder(path: str | Path) -> Path:
    """`path` if it is a folder, else its nearest existing ancestor (what will hold the new file)."""
    path = Path(path).absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (statvfs f_bavail)."""
    return shutil.disk_usage(existing_folder(path)).free


def require(where: str | Path, nbytes: int, what: str, fix: str = "free some space there, or choose "
            "another folder") -> None:
    """Raise DiskFullError unless `nbytes` (plus `margin`) fit on the file system holding `where`.

    `what` names the write for the message (e.g. 'the snapshot of iteration 40'); `fix` says what to do.
    """
    needed = nbytes + margin(nbytes)
    free = free_bytes(where)
    if free < needed:
        raise DiskFullError(
            f"{existing_folder(where)}: not enough free space for {what}: it needs {human(needed)} "
            f"({human(nbytes)} + {human(needed - nbytes)} margin) and {human(free)} are free; {fix}")


# ---- what a write will take ----------------------------------------------------------------------------

def param_count(net) -> int:
    """Floats in every parameter blob of pycaffe `net` (what its caffemodel stores)."""
    return sum(blob.data.size for blobs in net.params.values() for blob in blobs)


def weights_bytes(net) -> int:
    """Bytes of `net`'s parameters in a caffemodel (float32), without the protobuf framing."""
    return FLOAT_BYTES * param_count(net)


def snapshot_bytes(net, solver_type: str) -> int:
    """Bytes of a snapshot of `net` trained by a `solver_type` solver: the caffemodel plus the solverstate's
    history blobs (parameters x 4 x (1 + history blobs per parameter))."""
    return weights_bytes(net) * (1 + HISTORY_BLOBS.get(solver_type, 2))


def vgg16_trunk_params(fc: bool = True) -> int:
    """Floats of the 1-channel VGG16 trunk `weights convert` writes (conv1_1 reads one channel), with
    fc6/fc7 as convolutions when `fc`."""
    total, channels = 0, 1
    for convs, out in zip(STAGE_CONVS, STAGE_CHANNELS):
        for _ in range(convs):
            total += out * channels * CONV_KERNEL * CONV_KERNEL + out
            channels = out
    if fc:
        for kernel in FC_KERNELS.values():
            total += FC_CHANNELS * channels * kernel * kernel + FC_CHANNELS
            channels = FC_CHANNELS
    return total


def convert_bytes(src: str | Path) -> int:
    """Bytes `weights convert` may write for the source file `src`: the 1-channel VGG16 trunk, or twice the
    source's size when that is smaller (a source in float16 doubles as float32; float32 only shrinks)."""
    trunk = FLOAT_BYTES * vgg16_trunk_params()
    try:
        return min(trunk, 2 * Path(src).stat().st_size)
    except OSError:
        return trunk


def _tiles(length: int, tile: int, overlap: int) -> int:
    """How many tiles of side `tile`, stepping tile - overlap, cover `length` (an upper bound)."""
    if length <= tile:
        return 1
    return 1 + math.ceil((length - tile) / max(1, tile - overlap))


def import_bytes(sizes: Iterable[tuple[int, int]], tile: Optional[int], overlap: int, copies: int = 1) -> int:
    """Bytes the LMDBs of `data import` take for images of `sizes` (H, W), one stored image and one label
    record per tile (or whole image), `copies` orientations each (an upper bound)."""
    total = LMDB_FIXED * 4
    for h, w in sizes:
        if tile:
            records, pixels = _tiles(h, tile, overlap) * _tiles(w, tile, overlap), tile * tile
        else:
            records, pixels = 1, h * w
        per_record = LMDB_PAGE * math.ceil((pixels + 64) / LMDB_PAGE) + LMDB_RECORD_OVERHEAD
        total += 2 * copies * records * per_record
    return total


def disk_full_line(exc: BaseException) -> Optional[str]:
    """One line for an OSError that says the disk (or the quota) is full, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{exc.filename}: " if exc.filename else ""
        return (f"{where}no space left on the device ({exc.strerror}); free some space and run the command "
                "again (`fcnseg train --resume RUN` continues a run from its last snapshot)")
    return None
