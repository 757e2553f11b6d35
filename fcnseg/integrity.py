"""Model files that prove they are intact: the SHA-256 of every model file fcnseg writes, recorded in one
place when it is written and compared before the file is used.

Where a file's record lives:

- a file inside a run folder (snapshots/train_iter_N.caffemodel and .solverstate, best.caffemodel,
  final.caffemodel, an ONNX export written into the run folder): one line in RUN/checksums.sha256,
  keyed by the path relative to the run folder;
- any other file (converted weights, an export elsewhere): NAME.sha256 beside it.

Both use the format of `sha256sum` ("HEX  NAME" per line), so `cd RUN && sha256sum -c checksums.sha256`
checks a run folder without fcnseg. Relative names keep the records valid in a copied or moved folder.

`record(path)` after a write; `check(path)` before a use: WeightsError naming the file when its bytes
differ from the record (a flipped bit that still parses), a note when there is no record (a user's own
caffemodel: used as before). `problem(path)` is the same comparison as a sentence, for callers that
collect reasons (the snapshot check of `--resume`). Imports only the building blocks `files`, `errors`.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Optional

from .errors import WeightsError
from .files import file_sha256, run_folder_of, write_text_atomic

MANIFEST_FILE = "checksums.sha256"
SIDECAR_SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _stderr_note(line: str) -> None:
    print(line, file=sys.stderr)


def _where(path: Path) -> tuple[Path, str]:
    """(the record file for `path`, the name `path` has in it)."""
    run = run_folder_of(path)
    if run is not None:
        return run / MANIFEST_FILE, path.resolve().relative_to(run.resolve()).as_posix()
    return path.with_name(path.name + SIDECAR_SUFFIX), path.name


def read_records(record_file: Path) -> dict[str, str]:
    """{name: hex digest} of a sha256sum-format file; {} when it is missing or unreadable. Lines that are not
    "HEX  NAME" are skipped: a damaged record can only cost a record, never refuse a good file."""
    try:
        text = record_file.read_text(errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip("\r"))
        if match:
            out[match.group(2)] = match.group(1)
    return out


def record(path: str | Path, digest: Optional[str] = None) -> str:
    """Record the SHA-256 of the file `path` (computed unless `digest` is given) in its run folder's
    manifest or in NAME.sha256 beside it; returns the digest. The record file is rewritten atomically."""
    path = Path(path)
    digest = digest or file_sha256(path)
    record_file, name = _where(path)
    records = read_records(record_file) if record_file.name == MANIFEST_FILE else {}
    records[name] = digest
    write_text_atomic(record_file, "".join(f"{d}  {n}\n" for n, d in sorted(records.items())))
    return digest


def recorded(path: str | Path) -> Optional[tuple[str, Path]]:
    """(recorded hex digest, the file holding the record) for `path`, or None when nothing records it."""
    path = Path(path)
    record_file, name = _where(path)
    digest = read_records(record_file).get(name)
    if digest is None and record_file.name == MANIFEST_FILE:  # a run file copied with its NAME.sha256
        record_file, name = path.with_name(path.name + SIDECAR_SUFFIX), path.name
        digest = read_records(record_file).get(name)
    return (digest, record_file) if digest is not None else None


def problem(path: str | Path) -> Optional[str]:
    """Why `path` is not the file fcnseg wrote (its SHA-256 differs from the record), or None when it
    matches or has no record."""
    return _differs(Path(path), recorded(path))


def _differs(path: Path, found: Optional[tuple[str, Path]]) -> Optional[str]:
    if found is None:
        return None
    digest, record_file = found
    if file_sha256(path) == digest:
        return None
    return (f"its SHA-256 differs from the one recorded in {record_file} when fcnseg wrote it: the file was "
            "damaged or changed since")


def check(path: str | Path, note: Callable[[str], None] = _stderr_note) -> bool:
    """Compare `path` with its record before it is used. True when it matches; False (after passing a
    note to `note`, stderr by default) when it has no record. Raises WeightsError naming the file when
    it differs."""
    path = Path(path)
    found = recorded(path)
    if found is None:
        note(f"note: {path}: no SHA-256 recorded for it (not written by fcnseg, or by a version before the "
             "records); used without an integrity check")
        return False
    why = _differs(path, found)
    if why:
        raise WeightsError(f"{path}: {why}; copy it again from where it came from, or write it again "
                           "(retrain, convert or export)")
    return True
