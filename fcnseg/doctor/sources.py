"""Reading the user's files for doctor: prototxts (caffe_pb2 text format), caffemodel blob shapes (without
loading the floats), LMDB sources (entry count, first record, every record on demand)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lmdb
from google.protobuf import text_format

from ..caffe_env import caffe_pb2
from ..caffemodel import read_caffemodel_index
from ..config import read_text
from ..dataset import datum_array
from ..errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------------
# Reading files

def parse_text(path: Path, message, what: str):
    text = read_text(path, what)
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        detail = str(exc).split(" : ", 1)[-1]
        at = f" line {line}:" if line else ""
        raise ConfigError(f"{path}:{at} not a valid {what}: {detail}") from None


def read_net(path: str | Path):
    """Parse a train_val/deploy prototxt into a NetParameter. Raises ConfigError naming file and line."""
    path = Path(path)
    net = parse_text(path, caffe_pb2().NetParameter(), "net prototxt")
    if len(net.layers) and not len(net.layer):
        raise ConfigError(f"{path}: uses Caffe's old V1 'layers' format; upgrade it with Caffe's "
                          "tools/upgrade_net_proto_text, then run doctor on the result")
    return net


def read_solver(path: str | Path):
    """Parse a solver prototxt into a SolverParameter. Raises ConfigError naming file and line."""
    return parse_text(Path(path), caffe_pb2().SolverParameter(), "solver prototxt")


def caffemodel_shapes(path: str | Path) -> dict[str, list[tuple[int, ...]]]:
    """{layer name: [shape of each parameter blob]} of a caffemodel, read without loading its floats.

    Uses caffemodel.read_caffemodel_index (current and V1 formats; legacy InnerProduct blobs as O×I).
    Raises WeightsError when the file is missing or not a caffemodel.
    """
    return {name: [rec.blob_shape(i) for i in range(len(rec.blobs))]
            for name, rec in read_caffemodel_index(path).items() if rec.blobs}




def find_file(path: str, base_dirs: Sequence[Path]) -> Optional[Path]:
    """The file or folder `path` as Caffe would open it: absolute, or relative to one of base_dirs."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [Path(b) / p for b in base_dirs] or [p]
    return next((c for c in candidates if c.exists()), None)


def open_lmdb(path: Path):
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=4)


@dataclass
class DataSource:
    """One Data layer's LMDB as far as it could be read."""

    layer: str
    path: str
    found: Optional[Path] = None
    problem: str = ""
    count: Optional[int] = None
    first: Optional[tuple[int, ...]] = None   # (C, H, W) of the first record

    @classmethod
    def peek(cls, layer, base_dirs: Sequence[Path]) -> "DataSource":
        """Entry count and first record's shape, when the source is a readable LMDB."""
        src = cls(layer.name, layer.data_param.source)
        if layer.data_param.backend != caffe_pb2().DataParameter.LMDB:
            src.problem = "not an LMDB (backend LEVELDB)"
            return src
        src.found = find_file(src.path, base_dirs)
        if src.found is None:
            src.problem = "not found"
            return src
        try:
            env = open_lmdb(src.found)
            src.count = env.stat()["entries"]
            with env.begin() as txn:
                raw = next(iter(txn.cursor().iternext(keys=False, values=True)), None)
            env.close()
            if raw is not None:
                src.first = tuple(datum_array(raw).shape)
        except Exception as exc:  # noqa: BLE001 - any unreadable database is reported, not raised
            src.problem = f"unreadable ({exc.__class__.__name__})"
        return src

    def arrays(self):
        """Yield every record as a (C, H, W) array, in key order (the order Caffe reads them)."""
        env = open_lmdb(self.found)
        try:
            with env.begin() as txn:
                for raw in txn.cursor().iternext(keys=False, values=True):
                    yield datum_array(raw)
        except lmdb.Error as exc:
            raise DataError(f"{self.found}: damaged LMDB ({exc}); check it with `fcnseg data check` or copy it "
                            "again") from None
        finally:
            env.close()


