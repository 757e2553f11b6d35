"""`fcnseg infer --workers N | --scheduler ADDRESS`: the same inference, spread over Dask workers.

The inputs, outputs, tiling and messages are `infer`'s; only who does the work changes. The client
(the `fcnseg` process) plans and records; each task runs on a worker and is one input file (a single
image is labelled there and then; a stack answers with its frame count) or one frame of a stack. Tasks
carry paths, frame indices and `InferOptions`, never arrays or nets: each worker process opens the net
once (`worker_predictor`, cached per process) and keeps the last stack it read, so the frames of one
stack cost one read per worker. The worker that labels a frame writes its files (`infer.write_outputs`:
temporary names, renamed when complete), so a killed job leaves only whole files.

Workers are single-threaded processes: Caffe's state (net, mode, device) is per process, and BLAS/OpenMP
are held to one thread per worker (`SINGLE_THREAD_ENV`) so N workers use N cores and no more.

Restartable: OUT/MANIFEST_FILE (JSON lines, appended by the client only) records the weights' SHA-256,
the options that change outputs, each input's size, mtime and frame count, and each output completed. A
rerun with the same weights and options skips every output the manifest lists and whose files exist;
anything else (other weights, other options, a changed input) is labelled again.

A large single image (a 2-D integer TIFF stored uncompressed, or a 2-D `.npy`) that `infer` would tile
is memory-mapped and labelled tile by tile on `infer`'s own tile grid (`label_streamed`): it is never
read whole, its probabilities are written as rows of tiles complete, and the outputs are the same bytes.

A worker that dies (killed, out of memory) loses its tasks; the scheduler gives them to another worker
(Dask's `distributed.scheduler.allowed-failures`, WORKER_DEATHS_ALLOWED here), and a task that outlives
that many workers is listed as failed. A bad input is not retried: the task returns its message, listed
at the end as `infer` does, with the same exit codes.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import tifffile
from tqdm import tqdm

from .errors import ConfigError, DataError, FcnsegError
from .files import file_sha256, write_atomic
from .geometry import ceil_to
from .infer import (
    PROBS_SUFFIX,
    InferResult,
    OutputClaims,
    failure_message,
    label_and_save,
    list_inputs,
    object_roles,
    output_names,
    prepare_output,
    read_frames,
    refuse_volume_objects,
    write_labels,
)
from .objects import label_objects, write_objects
from .predict import FrameOutcome, InferOptions, Predictor, Tiling, open_predictor, tile_bands, tiling_for
from .volume_infer import BlockResult, ClusterVolumes, label_volume
from .volumes import volume_format

MANIFEST_FILE = "infer-manifest.jsonl"
# Set in every worker process before it imports numpy or Caffe: one core per worker.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORKER_DEATHS_ALLOWED = 3  # a task is retried after this many worker deaths; one more fails it


# ---- the cluster ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def connect(workers: Optional[int] = None, scheduler: Optional[str] = None) -> Iterator:
    """A dask.distributed Client: on a new local cluster of `workers` single-threaded worker processes,
    or on the running scheduler at `scheduler` (tcp://host:port, or a scheduler JSON file). Closed (and
    the local cluster shut down) on exit. Raises ConfigError when neither or both are given, or the
    scheduler cannot be reached."""
    import dask  # noqa: PLC0415 - heavy: only infer --workers/--scheduler needs a cluster
    from distributed import Client, LocalCluster  # noqa: PLC0415 - heavy: only infer --workers/--scheduler needs a cluster

    if (workers is None) == (scheduler is None):
        raise ConfigError("give either --workers N or --scheduler ADDRESS")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1 worker")
    with dask.config.set({"distributed.scheduler.allowed-failures": WORKER_DEATHS_ALLOWED}):
        if scheduler is not None:
            is_file = Path(scheduler).is_file()
            if not is_file and scheduler.endswith(".json"):
                raise ConfigError(f"--scheduler {scheduler}: scheduler file not found; give the file that "
                                  "`dask scheduler --scheduler-file` wrote, or tcp://host:port")
            try:
                client = Client(scheduler_file=scheduler) if is_file else Client(scheduler, timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({exc}); "
                                  "start one (dask scheduler) or check the address") from None
            with client:
                yield client
            return
        # The environment is set in each worker before it starts, so BLAS reads it when it loads.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", env=dict(SINGLE_THREAD_ENV))
        with cluster, Client(cluster) as client:
            yield client


# ---- what runs on a worker ------------------------------------------------------------------------------

_PREDICTOR: dict[tuple, Predictor] = {}  # the net this worker process opened, by model
_STACK: dict[tuple, list] = {}  # the last file this worker read, by path, size, mtime


def _model_key(run_dir: Optional[str], options: InferOptions) -> tuple:
    return (run_dir, options.weights, options.onnx, options.gpu)


def worker_predictor(run_dir: Optional[str], options: InferOptions) -> Predictor:
    """The net, opened once per worker process and model and then reused (`infer.open_predictor`;
    raises what it raises)."""
    key = _model_key(run_dir, options)
    if key not in _PREDICTOR:
        _PREDICTOR.clear()
        _PREDICTOR[key] = open_predictor(run_dir, options)
    return _PREDICTOR[key]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _cached_frames(path: Path, to_gray: bool) -> list:
    key = (str(path.resolve()), *_stat(path), to_gray) if path.is_file() else (str(path), to_gray)
    if key not in _STACK:
        _STACK.clear()
        _STACK[key] = read_frames(path, to_gray)
    return _STACK[key]


@dataclass
class TaskResult:
    """What one task sends back: an outcome, a bad input's message, or (for a stack's file task) the
    stack's frame stems and names."""

    path: str
    frame: Optional[int]
    outcome: Optional[FrameOutcome] = None
    failure: Optional[str] = None
    frames: list[tuple[str, str]] = field(default_factory=list)  # (stem, name) per frame of a stack


def probe_model(run_dir: Optional[str], options: InferOptions) -> tuple[str, str, int] | FcnsegError:
    """(weights path, its SHA-256, net stride) after opening the net on a worker, or the FcnsegError that
    `infer` would raise, before any image is read. The error is returned, not raised: a task that raises
    has its traceback logged by the Dask worker, and a bad run or --gpu is the user's one-line message."""
    try:
        predictor = worker_predictor(run_dir, options)
        object_roles(predictor, options)
    except FcnsegError as exc:
        return exc
    return str(predictor.weights), file_sha256(predictor.weights), predictor.stride


def label_file(path: str, run_dir: Optional[str], options: InferOptions, out_dir: str) -> TaskResult:
    """Task for one input file: a single image is labelled and written; a stack returns its frames'
    (stem, name) for `label_frame` tasks; a bad file returns its message."""
    try:
        if volume_format(path) is not None:
            refuse_volume_objects(Path(path), options)
        if volume_format(path) in ("nifti", "dicom"):  # one task writes the label volume (HDF5/Zarr: blocks)
            predictor = worker_predictor(run_dir, options)
            return TaskResult(path, None, label_volume(predictor, Path(path), Path(out_dir), options))
        lazy = open_lazily(Path(path))
        if lazy is not None:
            predictor = worker_predictor(run_dir, options)
            tiling = tiling_for(lazy.shape, options.tile, options.tile_overlap, predictor.stride)
            if tiling is not None and max(ceil_to(n, predictor.multiple) for n in lazy.shape) > tiling.tile:
                return TaskResult(path, None, label_streamed(predictor, lazy, path, tiling, Path(out_dir),
                                                             Path(path).stem, options))
        frames = _cached_frames(Path(path), options.to_gray)
        if len(frames) > 1:
            return TaskResult(path, None, frames=[(stem, where) for stem, where, _ in frames])
        stem, where, image = frames[0]
        predictor = worker_predictor(run_dir, options)
        return TaskResult(path, None, label_and_save(predictor, image, where, Path(out_dir), stem, options))
    except FcnsegError as exc:
        return TaskResult(path, None, failure=failure_message(exc, path))


def label_frame(path: str, frame: int, run_dir: Optional[str], options: InferOptions,
                out_dir: str) -> TaskResult:
    """Task for frame `frame` of the stack `path`: labelled and written, or its message."""
    try:
        stem, where, image = _cached_frames(Path(path), options.to_gray)[frame]
        predictor = worker_predictor(run_dir, options)
        return TaskResult(path, frame, label_and_save(predictor, image, where, Path(out_dir), stem, options))
    except FcnsegError as exc:
        return TaskResult(path, frame, failure=failure_message(exc, f"{path} (frame {frame})"))
    except IndexError:
        return TaskResult(path, frame, failure=f"{path}: has no frame {frame} any more; run again")


# ---- large images, tile by tile -------------------------------------------------------------------------

def open_lazily(path: Path) -> Optional[np.ndarray]:
    """A read-only memory map of a single 2-D integer image, read from disk only where it is indexed:
    a 2-D `.npy`, or a TIFF whose only series is Y x X and stored uncompressed. None for anything else
    (compressed, a stack, colour, floats that need their NaN check): that is read whole as usual."""

    try:
        if path.suffix.lower() == ".npy":
            image = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                if len(tif.series) != 1 or tif.series[0].axes != "YX":
                    return None
            image = tifffile.memmap(path, mode="r")
        else:
            return None
    except (ValueError, OSError, tifffile.TiffFileError):
        return None
    return image if image.ndim == 2 and image.dtype.kind in "ui" else None


def _reflected(start: int, stop: int, length: int) -> np.ndarray:
    """Indices start..stop-1 into an axis of `length`, mirrored past its end as np.pad's 'reflect'."""
    index = np.arange(start, stop)
    return np.where(index < length, index, 2 * (length - 1) - index)


def label_streamed(predictor: Predictor, image: np.ndarray, where: str, tiling: Tiling, out_dir: Path,
                   stem: str, options: InferOptions) -> FrameOutcome:
    """`label_and_save` for a large 2-D `image` (a memory map, `open_lazily`) that is never read
    whole: the tiles of `infer.predict`'s grid are read, run and averaged one row of tiles at a time,
    and the rows no later tile reaches are finished (labels, and <stem>_probs.npy filled in place under
    a temporary name). Memory is the labels (1 byte a pixel, plus 1 for --overlay) and one row of tiles'
    probabilities, not the whole image's. The outputs are byte-identical to `label_and_save`'s: the
    same tiles, the same sums in the same order. Raises DataError naming `where` for bad values."""

    start = time.perf_counter()
    h, w = image.shape
    k = predictor.num_classes
    ph, pw = ceil_to(h, predictor.multiple), ceil_to(w, predictor.multiple)
    labels = np.empty((h, w), np.uint8)
    gray = np.empty((h, w), np.uint8) if options.overlay or options.instances else None
    roles = object_roles(predictor, options)
    # Objects are split on the whole stitched map (fcnseg.objects), so with --instances it is kept: 4 bytes a
    # pixel and class, the same float32 sums `label_and_save` splits, hence the same objects.
    whole = np.empty((k, h, w), np.float32) if roles is not None else None

    def net_input(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = np.asarray(image[np.ix_(_reflected(y0, y1, h), _reflected(x0, x1, w))])
        return predictor.network_input(block, where)[1]

    def run_tiles(probs_out: Optional[np.ndarray]) -> None:
        for top, band in tile_bands(predictor, net_input, ph, pw, tiling):
            real = max(0, min(top + band.shape[1], h) - top)  # the band's rows inside the image
            done = band[:, :real, :w]
            labels[top:top + real] = done.argmax(axis=0)
            if whole is not None:
                whole[:, top:top + real] = done
            if probs_out is not None:
                probs_out[:, top:top + real] = done.astype(np.float16)
            if gray is not None:
                gray[top:top + real] = predictor.network_input(np.asarray(image[top:top + real]), where)[0]
        if probs_out is not None:
            probs_out.flush()

    probs_path = out_dir / (stem + PROBS_SUFFIX)
    if options.probs:
        write_atomic(probs_path, lambda tmp: run_tiles(
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(k, h, w))))
    else:
        run_tiles(None)
    seconds = time.perf_counter() - start
    written = write_labels(out_dir, stem, gray, labels, options.overlay) + [probs_path] * options.probs
    if roles is not None:
        written += write_objects(out_dir, stem, image, gray, label_objects(whole, roles), whole)
    return FrameOutcome(written, True, seconds, h * w / 1e6)


# ---- the manifest ---------------------------------------------------------------------------------------

class Manifest:
    """OUT/MANIFEST_FILE: what a previous run of the same model and options completed.

    Line 1 is the header (weights SHA-256 and the options that change outputs); then `file` lines (an
    input's size, mtime and frame stems when planned) and `done` lines (an output completed). Lines are
    appended as results arrive; a torn last line (a killed client) is ignored. A different header starts
    a new manifest.
    """

    def __init__(self, out_dir: Path, weights_sha256: str, options: InferOptions):
        self.path = out_dir / MANIFEST_FILE
        self.header = {"weights_sha256": weights_sha256,
                       "options": {k: v for k, v in asdict(options).items() if k in
                                   ("overlay", "probs", "tile", "tile_overlap", "to_gray")
                                   or (k in ("axis", "volume", "dataset") and v is not None)  # volumes
                                   or (k == "instances" and v)}}
        self.files: dict[str, dict] = {}  # input -> {"size", "mtime_ns", "frames": [[stem, name], ...]}
        self.done: set[tuple[str, Optional[int]]] = set()
        text = self.path.read_text() if self.path.is_file() else ""
        lines = text.splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if records and records[0] == {"header": self.header}:
            for record in records[1:]:
                if "file" in record:
                    self.files[record["file"]] = record
                    self.done = {d for d in self.done if d[0] != record["file"]}
                elif "done" in record:
                    self.done.add((record["done"], record["frame"]))
            self._handle = open(self.path, "a")
            if not text.endswith("\n"):
                self._handle.write("\n")  # end the torn line, so the next record stands on its own
        else:
            self._handle = open(self.path, "w")
            self._append({"header": self.header})

    def _append(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def known_frames(self, path: Path) -> Optional[list[tuple[str, str]]]:
        """The (stem, name) frames recorded for `path` when its size and mtime are unchanged, else None."""
        record = self.files.get(str(path))
        if record is None or not path.is_file() or [record["size"], record["mtime_ns"]] != list(_stat(path)):
            return None
        return [tuple(f) for f in record["frames"]]

    def record_file(self, path: Path, frames: list[tuple[str, str]]) -> None:
        size, mtime = _stat(path)
        record = {"file": str(path), "size": size, "mtime_ns": mtime, "frames": [list(f) for f in frames]}
        if self.files.get(str(path)) != record:
            self.files[str(path)] = record
            self.done = {d for d in self.done if d[0] != str(path)}
            self._append(record)

    def is_done(self, path: Path, frame: Optional[int], stem: str, out_dir: Path, options: InferOptions) -> bool:
        return (str(path), frame) in self.done and all((out_dir / n).is_file() for n in output_names(stem, options))

    def record_done(self, path: str, frame: Optional[int]) -> None:
        self.done.add((path, frame))
        self._append({"done": path, "frame": frame})


# ---- the client -----------------------------------------------------------------------------------------

@dataclass
class DistributedResult(InferResult):
    """InferResult plus the outputs skipped because a previous run completed them."""

    skipped: int = 0
    workers: int = 0
    wall_seconds: float = 0.0  # from the first task submitted to the last result

    @property
    def completed(self) -> int:
        """Labelled now or by a previous run (skipped): the exit code counts both."""
        return self.images + self.skipped

    def lines(self) -> list[str]:
        """InferResult's summary (its time is the workers' time in the net, summed), the skipped
        outputs and the images per second on the cluster."""
        out = super().lines()
        if self.images and self.wall_seconds:
            out.insert(1, f"{self.images / self.wall_seconds:.3f} images/s on {self.workers} worker(s) "
                          f"({self.wall_seconds:.1f} s)")
        if self.skipped:
            out.insert(1, f"skipped {self.skipped} image(s) already labelled ({MANIFEST_FILE})")
        return out


def infer_on_cluster(client, run_dir: Optional[str | Path], inputs: list[str | Path], out_dir: str | Path,
                     options: Optional[InferOptions] = None,
                     report: Callable[[str], None] = print) -> DistributedResult:
    """`infer.infer` with every image and frame a task on the Dask `client`'s workers.

    Run-level problems raise FcnsegError before any image is read (the net is opened on one worker
    first). Outputs listed in OUT/MANIFEST_FILE as completed by the same weights and options are
    skipped. A bad input is passed to `report` and listed in the result; `seconds` sums the workers'
    time in the net. A task whose workers keep dying (WORKER_DEATHS_ALLOWED + 1 of them) is listed
    as a failure too.
    """

    from distributed import KilledWorker, as_completed  # noqa: PLC0415 - heavy: only infer --workers/--scheduler needs a cluster

    options = options or InferOptions()
    run = None if run_dir is None else str(Path(run_dir).resolve())
    if options.onnx is not None:
        options = InferOptions(**{**asdict(options), "onnx": str(Path(options.onnx).resolve())})
    if options.weights is not None:
        options = InferOptions(**{**asdict(options), "weights": str(Path(options.weights).resolve())})
    probed = client.submit(probe_model, run, options, pure=False).result()
    if isinstance(probed, FcnsegError):
        raise probed
    weights, digest, stride = probed
    out = prepare_output(Path(out_dir).resolve(), options, stride)
    result = DistributedResult(Path(out_dir), Path(weights))
    manifest = Manifest(out, digest, options)
    claims = OutputClaims(out)
    files = [p.resolve() if p.exists() else p for p in list_inputs(inputs)]
    pending = as_completed()
    names: dict[str, str] = {}  # task key -> the input (frame) it labels
    volumes = ClusterVolumes(client, worker_predictor, run, options, out, manifest)  # HDF5/Zarr blocks
    start = time.perf_counter()

    def fail(message: str) -> None:
        result.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            report(f"error: {message}")

    def claim(path: Path, stem: str, where: str) -> bool:
        """Whether `stem` may be written for `where` (`infer`'s rule), else a failure."""
        try:
            claims.claim(path, stem, where)
        except DataError as exc:
            fail(str(exc))
            return False
        return True

    def submit(path: Path, frame: Optional[int], where: str) -> None:
        if frame is None:
            future = client.submit(label_file, str(path), run, options, str(out), pure=False)
        else:
            future = client.submit(label_frame, str(path), frame, run, options, str(out), pure=False)
        names[future.key] = where
        pending.add(future)

    def submit_frames(path: Path, frames: list[tuple[str, str]], bar) -> None:
        if len(frames) > 1:
            bar.total += len(frames) - 1
            bar.refresh()
        for i, (stem, where) in enumerate(frames):
            frame = i if len(frames) > 1 else None
            if not claim(path, stem, where):
                bar.update()
            elif manifest.is_done(path, frame, stem, out, options):
                result.skipped += 1
                bar.update()
            else:
                submit(path, frame, where)

    try:
        with tqdm(total=len(files), desc="infer", unit="img", file=sys.stderr, leave=False,
                  disable=None) as bar:
            for path in files:
                if volume_format(path) in ("hdf5", "zarr"):  # blocks of a chunked volume (fcnseg.volume_infer)
                    try:
                        refuse_volume_objects(path, options)
                        futures = volumes.submit(path)
                    except DataError as exc:
                        fail(str(exc))
                        futures = []
                    else:
                        result.skipped += not futures
                    bar.total += max(0, len(futures) - 1)
                    bar.update(not futures)
                    for future in futures:
                        names[future.key] = str(path)
                        pending.add(future)
                    continue
                known = manifest.known_frames(path)
                if known is not None:
                    submit_frames(path, known, bar)
                elif claim(path, path.stem, str(path)):  # as a single image, until it says it is a stack
                    submit(path, None, str(path))
                else:
                    bar.update()
            for future in pending:
                if isinstance(future.exception(), KilledWorker):  # a task whose workers kept dying
                    where = names[future.key]
                    fail(f"{where}: every worker that ran it died (Dask KilledWorker); out of memory? "
                         "give workers more memory, or tile it smaller with --tile")
                    bar.update()
                    continue
                task: TaskResult = future.result()
                if isinstance(task, BlockResult):
                    if task.failure is not None:
                        fail(task.failure)
                    else:
                        volumes.finished(task, result)
                    bar.update()
                    continue
                path = Path(task.path)
                if task.frames:  # a stack's file task: its frames become tasks
                    claims.release(path.stem)
                    manifest.record_file(path, task.frames)
                    submit_frames(path, task.frames, bar)
                    continue
                if task.failure is not None:
                    fail(task.failure)
                else:
                    if task.frame is None:
                        manifest.record_file(path, [(path.stem, task.path)])
                    result.record(task.outcome)
                    manifest.record_done(task.path, task.frame)
                bar.update()
    finally:
        manifest.close()
    result.wall_seconds = time.perf_counter() - start
    result.workers = len(client.scheduler_info()["workers"])
    return result


def infer_distributed(run_dir: Optional[str | Path], inputs: list[str | Path], out_dir: str | Path,
                      options: Optional[InferOptions] = None, workers: Optional[int] = None,
                      scheduler: Optional[str] = None,
                      report: Callable[[str], None] = print) -> DistributedResult:
    """`infer_on_cluster` on a local cluster of `workers` processes or the scheduler at `scheduler`
    (see `connect`)."""
    with connect(workers, scheduler) as client:
        return infer_on_cluster(client, run_dir, inputs, out_dir, options, report)
