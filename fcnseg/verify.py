"""Verifying what fcnseg reads back from the disk before Caffe reads it: datasets, snapshots, run folders.

A Caffe CHECK failure (a Datum of the wrong size, a truncated solverstate) kills the whole process, so
everything Caffe will read is checked here first and a damaged file becomes one line (exit 2).

Datasets. `data import` records, per LMDB, the record count, the SHA-256 of every key and value in key
order and each record's CRC-32 in dataset.yaml `checksums` (`lmdb_checksum`). `check_dataset(root)`
(`fcnseg data check DIR`, and `train` before its first step) reads every record back as Caffe will: the
Datum parses, its size matches channels x height x width, the shape is the recorded one (image and label
records agree), labels are classes or the ignore label, and the checksum is equal; it names the LMDB and
the first bad key. The records are read in a child process (`python -m fcnseg.verify`): a damaged page
can make the LMDB library read past its map, and a crash there must not take fcnseg with it.

Snapshots. `snapshot_problem(state)` parses a .solverstate and indexes its .caffemodel (every blob
holding as many values as its shape says); `snapshot_fit_problem(net, state, solver_type)` compares them
with the net Caffe will restore them into. `resume_point(run_dir, from_iter)` picks what `--resume`
continues from: the newest snapshot when it is intact; a damaged newest one is named and the newest
intact one offered as `--from-iter N` (exit 2), so nothing is chosen behind the user's back.
`set_aside_newer` moves snapshots newer than N into snapshots/set-aside/ (never deleted).

Run folders. `clear_stale(run_dir)` removes what a killed run leaves: snapshots/.partial/*, temporary
files of `files.write_atomic`, and a metrics.jsonl line cut by the kill.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import lmdb
import numpy as np
from google.protobuf.message import DecodeError

from . import files, integrity
from .caffe_env import caffe_pb2
from .caffemodel import read_caffemodel_index
from .dataset import DatasetInfo, read_dataset
from .diskspace import HISTORY_BLOBS
from .errors import DataError, RunError, WeightsError
from .files import SPLITS, dataset_paths

# `train` reads every record when the LMDBs hold at most this many bytes, else only the counts and the
# first and last record of each (and says how to run the full pass).
FULL_CHECK_BYTES = 2 << 30
PROGRESS_EVERY = 256  # records between the child's "at KEY" lines
SET_ASIDE_DIR = "set-aside"
REIMPORT = "copy the dataset again, or re-import it with `fcnseg data import`"


# ---- checksums recorded at import -------------------------------------------------------------------

def _record_hash(sha, key: bytes, value: bytes) -> int:
    """Feed one record to the LMDB's SHA-256 (length-prefixed key and value); return its CRC-32."""
    sha.update(struct.pack(">I", len(key)) + key + struct.pack(">Q", len(value)))
    sha.update(value)
    return zlib.crc32(value, zlib.crc32(key))


def lmdb_checksum(path: str | Path) -> dict:
    """{records, sha256, crc32} of the LMDB at `path` as dataset.yaml `checksums` records it."""

    sha, crcs = hashlib.sha256(), []
    with lmdb.open(str(path), readonly=True, lock=False, subdir=True) as env, env.begin() as txn:
        for key, value in txn.cursor():
            crcs.append(_record_hash(sha, bytes(key), bytes(value)))
    packed = np.asarray(crcs, ">u4").tobytes()
    return {"records": len(crcs), "sha256": sha.hexdigest(), "crc32": base64.b64encode(packed).decode()}


def dataset_checksums(root: str | Path) -> dict:
    """`lmdb_checksum` of every LMDB of the dataset folder `root`, keyed by folder name."""
    return {Path(p).name: lmdb_checksum(p) for p in dataset_paths(str(root)).values()}


# ---- reading every record back (the child's side) ---------------------------------------------------

@functools.lru_cache(maxsize=None)
def _datum_class():
    """caffe_pb2.Datum, loaded from pycaffe's generated file without importing Caffe itself (the child
    only parses records; importing caffe would load the whole library)."""
    spec = importlib.util.find_spec("caffe")
    for location in (spec.submodule_search_locations or []) if spec else []:
        generated = Path(location) / "proto" / "caffe_pb2.py"
        if generated.is_file():
            module_spec = importlib.util.spec_from_file_location("_fcnseg_caffe_pb2", generated)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.Datum

    return caffe_pb2().Datum


def _record_problem(datum_class, value: bytes, expect: dict) -> tuple[Optional[str], Optional[list[int]]]:
    """(what is wrong with one record, None when nothing; its [H, W])."""

    datum = datum_class()
    try:
        datum.ParseFromString(value)
    except DecodeError as exc:
        return f"the Datum does not parse ({exc})", None
    c, h, w = datum.channels, datum.height, datum.width
    if datum.encoded:
        return None, None  # an encoded image: Caffe decodes it; its size is only known after decoding
    if c != expect["channels"]:
        return f"{c} channel(s), expected {expect['channels']}", [h, w]
    n = len(datum.data) if datum.data else len(datum.float_data)
    if n != c * h * w:
        return f"holds {n} values for {c}x{h}x{w} = {c * h * w}", [h, w]
    if expect.get("sizes") and [h, w] not in expect["sizes"]:
        sizes = ", ".join(f"{a}x{b}" for a, b in expect["sizes"][:4])
        return f"is {h}x{w} (HxW), dataset.yaml records {sizes}", [h, w]
    if expect.get("num_classes") is not None:
        values = np.frombuffer(datum.data, np.uint8) if datum.data else np.asarray(datum.float_data)
        bad = values[(values >= expect["num_classes"]) & (values != expect["ignore_label"])]
        if bad.size:
            return (f"label {int(bad[0])} is neither a class in [0, {expect['num_classes']}) nor the ignore "
                    f"label {expect['ignore_label']}"), [h, w]
    return None, [h, w]


def scan_lmdb(path: str, expect: dict, report: Callable[[dict], None] = lambda _: None) -> dict:
    """Read the LMDB at `path` as Caffe will and compare it with `expect` (see `_expectations`; with
    `pages_only` true only the pages are read, the records are not judged).

    Returns {records, shapes, where, why}: where (e.g. "at key 00000005") None when every record is sound. `report` gets
    {"at": key} every PROGRESS_EVERY records (the parent's clue when this process dies on a bad page). A
    page the LMDB library finds damaged (lmdb.Error anywhere: the count, a cursor, a record) is a finding.
    """
    result = {"records": 0, "shapes": [], "where": None, "why": None, "last": None}
    try:
        env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    except lmdb.Error as exc:
        return dict(result, where="at its start", why=f"not a readable LMDB ({exc})")
    try:
        return _scan_records(env, expect, report, result)
    except lmdb.Error as exc:
        last = result["last"]
        return dict(result, where=f"after key {last}" if last else "at its first record",
                    why=f"the LMDB cannot be read there ({exc})")
    finally:
        env.close()


def _scan_records(env, expect: dict, report: Callable[[dict], None], result: dict) -> dict:
    """`scan_lmdb`'s pass over an open environment; `result` holds the progress (records, last key)."""
    full, pages_only = expect.get("full", True), expect.get("pages_only", False)
    datum_class = None if pages_only else _datum_class()
    crcs = np.frombuffer(base64.b64decode(expect["crc32"]), ">u4") if expect.get("crc32") else None
    sha, shapes = hashlib.sha256(), result["shapes"]

    def bad(where, why):
        return dict(result, where=where, why=why)

    with env.begin() as txn:
        entries = txn.stat()["entries"]
        cursor = txn.cursor()
        if full:
            records = iter(cursor)
        else:  # the first and the last record only
            records = [cursor.item()] if cursor.first() else []
            if cursor.last() and entries > 1:
                records.append(cursor.item())
        for key, value in records:
            key, value = bytes(key), bytes(value)
            name = key.decode("ascii", "replace")
            crc = _record_hash(sha, key, value)
            if crcs is not None and full:
                if result["records"] >= len(crcs):
                    return bad(f"at key {name}", f"an extra record: dataset.yaml records {len(crcs)}")
                if crc != int(crcs[result["records"]]):
                    problem, _ = _record_problem(datum_class, value, expect)
                    return bad(f"at key {name}", "its checksum differs from the one recorded at import"
                               + (f", and {problem}" if problem else " (the Datum still parses)"))
            if not pages_only:
                problem, shape = _record_problem(datum_class, value, expect)
                if problem:
                    return bad(f"at key {name}", problem)
                shapes.append(shape)
            result["records"] += 1
            result["last"] = name
            if result["records"] % PROGRESS_EVERY == 0:
                report({"at": name})
    count, last, recorded = result["records"], result["last"], expect.get("records")
    if full:
        if recorded is not None and count != recorded:
            return bad(f"after key {last}" if last else "at its first record",
                       f"{count} records, {expect['records_source']} says {recorded} (truncated?)")
        if expect.get("sha256") and sha.hexdigest() != expect["sha256"]:
            return bad("somewhere (records equal one by one)",
                       "the SHA-256 of its records differs from the one recorded at import")
    elif recorded is not None and entries != recorded:
        return bad("in its record count", f"{entries} records, {expect['records_source']} says {recorded}")
    result["records"] = count if full else entries
    return result


def check_readable(path: str | Path, option: str) -> int:
    """Read every page of the LMDB at `path` (someone else's, before `data import` reads it in this
    process) in a child process; its record count. DataError naming `option` and the LMDB when a page is
    damaged or the reader dies on one."""
    result = _scan_in_child({str(path): {"full": True, "pages_only": True}})[str(path)]
    if result["where"] is not None:
        raise DataError(f"{option} {path}: damaged {result['where']}: {result['why']}; copy the LMDB again "
                        "from where it came from")
    return result["records"]


def _child_main() -> int:
    """`python -m fcnseg.verify`: read [{path, expect}, ...] as JSON on stdin, scan each LMDB in turn until
    one is bad, print JSON lines ({"start": path}, {"at": key}, {"result": ...})."""
    def report(line: dict) -> None:
        print(json.dumps(line), flush=True)

    for request in json.loads(sys.stdin.read()):
        report({"start": request["path"]})
        result = scan_lmdb(request["path"], request["expect"], report)
        report({"result": result})
        if result["where"] is not None:
            break
    return 0


# ---- the parent's side -------------------------------------------------------------------------------

@dataclass
class DatasetCheck:
    """What `check_dataset` found: per LMDB its record count; lines for the report."""

    root: Path
    records: dict[str, int] = field(default_factory=dict)
    full: bool = True
    checksummed: bool = True
    seconds: float = 0.0

    def lines(self) -> list[str]:
        total = sum(self.records.values())
        parts = [f"{self.root}: {len(self.records)} LMDBs, {total} records"]
        if self.full:
            parts += ["every record read back: Datums parse, shapes and labels as recorded",
                      "checksums equal to those recorded at import" if self.checksummed else
                      "no checksums recorded (imported by an older fcnseg; re-import to record them)"]
        else:
            parts.append("record counts and the first and last record of each")
        lines = ["; ".join(parts) + f" ({self.seconds:.1f} s)"]
        if not self.full:
            lines.append(f"for a full pass over every record run `fcnseg data check {self.root}`")
        return lines


def _expectations(root: Path, info: DatasetInfo) -> dict[str, dict]:
    """What each LMDB must hold, by path, from dataset.yaml."""
    out = {}
    ignore, channels = info.ignore_label, info.input_channels
    for split in SPLITS:
        split_info = info.split(split)
        sizes = [[info.tile, info.tile]] if info.tile else [list(s) for s in split_info.sizes] or None
        for kind in ("images", "labels"):
            path = Path(dataset_paths(str(root))[f"{split}_{kind}"])
            sums = (info.checksums or {}).get(path.name)
            out[str(path)] = {
                "channels": channels if kind == "images" else 1, "sizes": sizes,
                "num_classes": info.num_classes if kind == "labels" else None, "ignore_label": ignore,
                "records": sums.records if sums else split_info.samples,
                "records_source": "dataset.yaml checksums" if sums else f"dataset.yaml splits.{split}.samples",
                "sha256": sums.sha256 if sums else None, "crc32": sums.crc32 if sums else None}
    return out


def _scan_in_child(expectations: dict[str, dict]) -> dict[str, dict]:
    """`scan_lmdb` of each LMDB (path: expectation) in one child process, in order, up to the first bad one;
    {path: result}. A child that dies becomes a finding for the LMDB it was reading, after its last good key."""
    env = dict(os.environ, GLOG_minloglevel="3")
    requests = [{"path": path, "expect": expect} for path, expect in expectations.items()]
    proc = subprocess.run([sys.executable, "-m", "fcnseg.verify"], input=json.dumps(requests),
                          capture_output=True, text=True, env=env)
    results, current, last = {}, requests[0]["path"], None
    for line in proc.stdout.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "start" in message:
            current, last = message["start"], None
        last = message.get("at", last)
        if "result" in message:
            results[current] = message["result"]
    if current not in results:
        if proc.returncode >= 0:  # a Python error in the child is fcnseg's bug, not the data's
            raise RuntimeError(f"the LMDB reader (python -m fcnseg.verify) failed: {proc.stderr.strip()}")
        how = f"killed by signal {signal.Signals(-proc.returncode).name}"
        where = f"after key {last}" if last else "at its first records"
        results[current] = {"records": 0, "shapes": [], "where": where,
                            "why": f"reading it crashed the reader ({how}): its pages are damaged"}
    return results


def check_dataset(root: str | Path, full: Optional[bool] = None, info: Optional[DatasetInfo] = None) -> DatasetCheck:
    """Check every LMDB of the dataset folder `root` against its dataset.yaml (see the module docstring;
    `info`: that file as `read_dataset` read it, when the caller has it already).

    `full` None: read every record when the LMDBs hold at most FULL_CHECK_BYTES, else only counts and the
    first and last records. Raises DataError naming the LMDB and the first bad key; nothing is started
    in Caffe.
    """
    started = time.monotonic()
    root = Path(root)
    info = info if info is not None else read_dataset(root)
    expectations = _expectations(root, info)
    for path in expectations:
        if not (Path(path) / "data.mdb").is_file():
            raise DataError(f"{path}: LMDB missing (no data.mdb); {REIMPORT}")
    if full is None:
        full = sum((Path(p) / "data.mdb").stat().st_size for p in expectations) <= FULL_CHECK_BYTES
    check = DatasetCheck(root, full=full, checksummed=info.checksums is not None)
    shapes = {}
    results = _scan_in_child({path: {**expect, "full": full} for path, expect in expectations.items()})
    for path in expectations:
        result = results[path]
        if result["where"] is not None:
            raise DataError(f"{path}: damaged {result['where']}: {result['why']}; {REIMPORT}")
        check.records[Path(path).name] = result["records"]
        shapes[path] = result["shapes"]
    for split in SPLITS:
        paths = dataset_paths(str(root))
        images, labels = paths[f"{split}_images"], paths[f"{split}_labels"]
        a, b = check.records[Path(images).name], check.records[Path(labels).name]
        if a != b:
            raise DataError(f"{labels}: {b} records but {images} holds {a}; {REIMPORT}")
        for index, (s, t) in enumerate(zip(shapes[images], shapes[labels])):
            if s != t:
                raise DataError(f"{labels}: record {index} is {t[0]}x{t[1]} but its image is {s[0]}x{s[1]}; "
                                f"{REIMPORT}")
    check.seconds = time.monotonic() - started
    return check


# ---- snapshots ---------------------------------------------------------------------------------------

def _blob_problem(blob) -> Optional[str]:
    """Why a BlobProto cannot be restored (values fewer than its shape says), or None."""
    if blob.HasField("shape"):
        count = math.prod(blob.shape.dim)
    else:
        count = blob.num * blob.channels * blob.height * blob.width
    n = len(blob.data) if len(blob.data) else len(blob.double_data)
    return None if n == count else f"holds {n} of its {count} values"


def snapshot_problem(state: Path) -> Optional[str]:
    """Why the snapshot `state` (.solverstate) and its .caffemodel cannot be restored, or None when both
    parse, every blob holds the values its shape says (checked without Caffe) and both have the SHA-256
    recorded when they were written (`integrity`; a snapshot without a record passes on its form)."""


    why = _snapshot_structure_problem(state)
    if why is not None:
        return why
    for path in (state, state.with_suffix(".caffemodel")):  # intact in form: are they the bytes fcnseg wrote?
        why = integrity.problem(path)
        if why:
            return f"{path.name}: {why}"
    return None


def _snapshot_structure_problem(state: Path) -> Optional[str]:
    pb = caffe_pb2().SolverState()
    try:
        pb.ParseFromString(state.read_bytes())
    except DecodeError as exc:
        return f"{state.name} does not parse ({exc}): truncated or damaged"
    except OSError as exc:
        return f"{state.name} cannot be read ({exc.strerror})"
    expected = files.snapshot_iteration(state)
    if expected is not None and pb.iter != expected:
        return f"{state.name} records iteration {pb.iter}: truncated or damaged"
    if not pb.history:
        return f"{state.name} holds no solver history: truncated or damaged"
    for i, blob in enumerate(pb.history):
        why = _blob_problem(blob)
        if why:
            return f"{state.name}: history blob {i} {why}: truncated or damaged"
    model = state.with_suffix(".caffemodel")
    if not model.is_file():
        return f"its weights {model.name} are missing"
    try:
        index = read_caffemodel_index(model)  # every blob holding the values its shape says
    except WeightsError as exc:
        return str(exc).split(";")[0]
    # The solverstate holds one set of history blobs per parameter (two for Adam): a file cut at a blob
    # boundary still parses, but no longer holds a whole multiple of the caffemodel's values.
    weights = sum(blob.count for record in index.values() for blob in record.blobs)
    history = sum(math.prod(b.shape.dim) if b.HasField("shape") else b.num * b.channels * b.height * b.width
                  for b in pb.history)
    if history % weights or history // weights not in (1, 2):
        return (f"{state.name} holds {history} history values for {weights} weights in {model.name}: "
                "one of them is truncated")
    return None


def snapshot_fit_problem(net, state: Path, solver_type: str) -> Optional[str]:
    """Why Caffe would refuse (abort) restoring `state` into the solver training pycaffe `net`, or None:
    the history blobs must be one set (two for Adam) of the net's parameter shapes, and the caffemodel
    must hold every parameter layer of the net with its shapes."""

    shapes = [tuple(blob.data.shape) for blobs in net.params.values() for blob in blobs]
    pb = caffe_pb2().SolverState()
    pb.ParseFromString(state.read_bytes())
    sets = HISTORY_BLOBS.get(solver_type, 1)
    if len(pb.history) != sets * len(shapes):
        return (f"{state.name} holds {len(pb.history)} history blobs, a {solver_type} solver of this net keeps "
                f"{sets * len(shapes)}: written for another net or solver")
    for i, blob in enumerate(pb.history):
        dims = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
        if math.prod(dims) != math.prod(shapes[i % len(shapes)]):
            return f"{state.name}: history blob {i} has shape {dims}, the net's parameter has {shapes[i % len(shapes)]}"
    model = state.with_suffix(".caffemodel")
    index = read_caffemodel_index(model)
    for name, blobs in net.params.items():
        record = index.get(name)
        if record is None:
            return f"{model.name} lacks layer {name}: truncated, or written for another net"
        if len(record.blobs) != len(blobs) or any(record.blob_shape(i) != tuple(b.data.shape)
                                                  for i, b in enumerate(blobs)):
            return f"{model.name}: layer {name} does not have this net's shapes: written for another net"
    return None


def snapshot_states(run_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, .solverstate) of the run's complete snapshots, newest first."""
    found = [(it, p) for p in (Path(run_dir) / files.SNAPSHOT_DIR).glob("*_iter_*.solverstate")
             if (it := files.snapshot_iteration(p)) is not None]
    return sorted(found, reverse=True)


def resume_point(run_dir: Path, from_iter: Optional[int] = None, resume_hint: str = "") -> Optional[Path]:
    """The .solverstate `--resume` continues from (None when the run has none), checked with
    `snapshot_problem`.

    Without `from_iter` it is the newest; when that one is damaged, RunError names it and offers the newest
    intact one as `--from-iter N` (`resume_hint` is the command to append it to). With `from_iter`, that
    iteration's snapshot, RunError when it is missing or damaged.
    """
    states = snapshot_states(run_dir)
    if from_iter is not None:
        chosen = dict(states).get(from_iter)
        if chosen is None:
            have = ", ".join(str(it) for it, _ in states) or "none"
            raise RunError(f"{Path(run_dir) / files.SNAPSHOT_DIR}: no snapshot of iteration {from_iter} "
                           f"(snapshots of iterations: {have}); pass one of those to --from-iter")
        why = snapshot_problem(chosen)
        if why:
            raise RunError(f"{chosen}: damaged snapshot ({why}); pass another --from-iter")
        return chosen
    if not states:
        return None
    newest_it, newest = states[0]
    why = snapshot_problem(newest)
    if why is None:
        return newest
    intact = next((it for it, p in states[1:] if snapshot_problem(p) is None), None)
    offer = (f"the newest intact snapshot is iteration {intact}: continue from it with "
             f"`{resume_hint or 'fcnseg train CONFIG --resume RUN'} --from-iter {intact}` (snapshots after it "
             "are moved to snapshots/set-aside/, none is deleted)" if intact is not None else
             "no intact snapshot is left; start the run again into a new --out")
    raise RunError(f"{newest}: damaged snapshot of iteration {newest_it} ({why}); {offer}")


def set_aside_newer(run_dir: Path, iteration: int) -> list[Path]:
    """Move every snapshot file newer than `iteration` into snapshots/set-aside/ (so the run's newest
    snapshot is `iteration` again); returns their new paths. Nothing is deleted."""
    folder = Path(run_dir) / files.SNAPSHOT_DIR
    moved = []
    for path in sorted(folder.glob("*_iter_*")):
        it = files.snapshot_iteration(path)
        if it is None or it <= iteration or not path.is_file():
            continue
        target_dir = folder / SET_ASIDE_DIR
        target_dir.mkdir(exist_ok=True)
        target, n = target_dir / path.name, 1
        while target.exists():
            target, n = target_dir / f"{path.name}.{n}", n + 1
        path.replace(target)
        moved.append(target)
    if moved:
        files.fsync_dir(folder)
    return moved


# ---- what a killed run leaves behind -----------------------------------------------------------------

def clear_stale(run_dir: Path) -> list[str]:
    """Remove what an interrupted run left in `run_dir` (call with no other run writing there): files in
    snapshots/.partial/, `files.write_atomic` temporaries (.NAME.tmpPID...), and the last line of
    metrics.jsonl when a kill cut it. Returns one line per kind of thing cleared."""
    run_dir = Path(run_dir)
    lines = []
    partial = [p for p in (run_dir / files.SNAPSHOT_DIR / ".partial").glob("*") if p.is_file()]
    temporaries = [p for folder in (run_dir, run_dir / files.SNAPSHOT_DIR) for p in folder.glob(".*.tmp[0-9]*")
                   if p.is_file()]
    for path in partial + temporaries:
        path.unlink(missing_ok=True)
    if partial or temporaries:
        lines.append(f"cleared {len(partial) + len(temporaries)} partial file(s) an interrupted run left "
                     f"({', '.join(p.name for p in (partial + temporaries)[:4])})")
    metrics = run_dir / files.METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size:
        with open(metrics, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                lines.append(f"dropped the last line of {metrics.name}, cut by an interruption "
                             f"({len(data) - keep} bytes)")
    return lines


if __name__ == "__main__":
    sys.exit(_child_main())
