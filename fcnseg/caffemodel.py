"""The caffemodel file format: a binary NetParameter read and written one layer at a time.

`read_caffemodel_index(path)` indexes a caffemodel (new `layer` or V1 `layers` format) into
{layer name: LayerRecord} without loading its floats; `load_blob(f, blob)` reads one blob's floats into
numpy; `write_caffemodel(path, name, layers)` writes a new-style caffemodel from (header, arrays) pairs
one layer at a time. Every problem with a file raises WeightsError naming it. Needs pycaffe's caffe_pb2
only when called, not at import.

Layer headers are parsed with protobuf one at a time, and the float arrays (VGG16's fc6 alone is 411 MB)
go straight between their packed fields and numpy: parsing the whole file into one message would hold
the file's bytes, the parsed message and the numpy copies at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from . import integrity
from .caffe_env import caffe_pb2
from .errors import WeightsError
from .files import write_atomic

CONVERT_HINT = "fcnseg weights convert VGG_ILSVRC_16_layers.caffemodel -o vgg16_1ch.caffemodel"


def convert_hint(channels: Optional[int]) -> str:
    """Where VGG16 weights for a net of `channels` input channels come from, as advice: the 1-channel
    conversion (`CONVERT_HINT`) for one channel; for 3, ImageNet VGG16 itself with fc6/fc7 as convolutions
    (`weights convert` writes 1-channel trunks only); for another count, no file fits as it is."""
    if channels == 1:
        return f"convert ImageNet VGG16 to 1 input channel with `{CONVERT_HINT}`"
    if channels == 3:
        return ("ImageNet VGG16 with fc6/fc7 cast to convolutions, which keeps its 3 input channels (the FCN "
                "reference's vgg16fc.caffemodel, by net surgery; `fcnseg weights convert` writes 1-channel trunks)")
    return (f"VGG16 weights whose conv1_1 takes {channels or 'your'} input channels (ImageNet VGG16 takes 3; "
            f"`{CONVERT_HINT}` makes a 1-channel trunk)")
# V1 `layers` type enum names -> new-style type names, for the layer types that carry weights.
V1_TYPES = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "DECONVOLUTION": "Deconvolution"}

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def shape_text(shape: Sequence[int], times: str = "x") -> str:
    """A blob shape as people write it: (64, 1, 3, 3) -> '64x1x3x3' (doctor's prose uses times="×")."""
    return times.join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------------------
# Reading a caffemodel without materialising it


@dataclass
class BlobRecord:
    """Where one parameter blob's floats lie in a caffemodel file, and its declared shape."""

    shape: tuple[int, ...]
    legacy: bool  # V1-era num/channels/height/width instead of a BlobShape
    segments: list[tuple[int, int, str]]  # (file offset, bytes, numpy dtype) of packed data
    values: Optional[np.ndarray] = None  # only when the data was stored unpacked (parsed by protobuf)

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass
class LayerRecord:
    """One layer of a caffemodel: its name, new-style type name, header message (no blobs) and blobs."""

    name: str
    type: str
    header: object
    blobs: list[BlobRecord] = field(default_factory=list)

    def blob_shape(self, i: int) -> tuple[int, ...]:
        """Blob i's shape, with V1 legacy 4-D shapes read as Caffe meant them (bias N, InnerProduct OxI)."""
        blob = self.blobs[i]
        if not blob.legacy:
            return blob.shape
        if i == 1:
            return (blob.count,)
        return blob.shape[2:] if self.type == "InnerProduct" else blob.shape


class _Wire:
    """Protobuf wire-format framing (keys and lengths) read from a seekable binary file."""

    def __init__(self, f, path):
        self.f, self.path = f, path

    def bad(self, what: str, pos: int):
        raise WeightsError(f"{self.path}: not a valid Caffe binary model ({what} at byte {pos}); "
                           "expected a .caffemodel saved by Caffe (not a prototxt or HDF5 file)")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        self.f.seek(pos)
        value = 0
        for i, byte in enumerate(self.f.read(min(10, end - pos))):
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value, pos + i + 1
        self.bad("bad varint", pos)

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """Yield (field number, wire type, key offset, value start, value end) for each field in [start, end)."""
        pos = start
        while pos < end:
            key, vstart = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                self.bad("field number 0", pos)
            if wire == _WIRE_VARINT:
                vend = self.varint(vstart, end)[1]
            elif wire == _WIRE_I64:
                vend = vstart + 8
            elif wire == _WIRE_I32:
                vend = vstart + 4
            elif wire == _WIRE_LEN:
                length, vstart = self.varint(vstart, end)
                vend = vstart + length
            else:
                self.bad(f"wire type {wire}", pos)
            if vend > end:
                self.bad("field runs past its end: truncated file", pos)
            yield number, wire, pos, vstart, vend
            pos = vend

    def read(self, start: int, end: int) -> bytes:
        self.f.seek(start)
        data = self.f.read(end - start)
        if len(data) != end - start:
            self.bad("truncated file", start)
        return data

    def parse(self, cls, data: bytes, pos: int):
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            self.bad(f"{cls.__name__} does not parse: {exc}", pos)


def _number(message_cls, name: str) -> int:
    return message_cls.DESCRIPTOR.fields_by_name[name].number


def _read_blob(wire: _Wire, start: int, end: int, layer: str) -> BlobRecord:
    pb = caffe_pb2()
    data, double, skip = _number(pb.BlobProto, "data"), _number(pb.BlobProto, "double_data"), \
        {_number(pb.BlobProto, "diff"), _number(pb.BlobProto, "double_diff")}
    meta, segments, unpacked = [], [], False
    for number, wire_type, key_at, vstart, vend in wire.fields(start, end):
        if number in (data, double) and wire_type == _WIRE_LEN:
            segments.append((vstart, vend - vstart, "<f4" if number == data else "<f8"))
        elif number in (data, double):
            unpacked = True
        elif number not in skip:
            meta.append(wire.read(key_at, vend))
    proto = wire.parse(pb.BlobProto, b"".join(meta), start)
    if proto.HasField("shape"):
        shape, legacy = tuple(int(d) for d in proto.shape.dim), False
    else:
        shape, legacy = (proto.num, proto.channels, proto.height, proto.width), True
    record = BlobRecord(shape, legacy, segments)
    if unpacked:  # never written by Caffe itself; let protobuf read this one blob
        full = wire.parse(pb.BlobProto, wire.read(start, end), start)
        record.values = np.array(full.data or full.double_data, dtype=np.float32)
        record.segments = []
        stored = record.values.size
    else:
        stored = sum(n // np.dtype(dt).itemsize for _, n, dt in segments)
    if stored != record.count:
        raise WeightsError(f"{wire.path}: layer {layer} has a blob of shape {shape_text(shape)} holding "
                           f"{stored} values; the file is damaged, download or convert it again")
    return record


def _read_layer(wire: _Wire, start: int, end: int, v1: bool) -> LayerRecord:
    pb = caffe_pb2()
    cls = pb.V1LayerParameter if v1 else pb.LayerParameter
    blobs_field = _number(cls, "blobs")
    header_parts, blob_spans = [], []
    for number, wire_type, key_at, vstart, vend in wire.fields(start, end):
        if number == blobs_field and wire_type == _WIRE_LEN:
            blob_spans.append((vstart, vend))
        else:
            header_parts.append(wire.read(key_at, vend))
    header = wire.parse(cls, b"".join(header_parts), start)
    if v1:
        if header.HasField("layer"):
            raise WeightsError(f"{wire.path}: a V0 (pre-2014) Caffe model; upgrade it with Caffe's "
                               "upgrade_net_proto_binary tool first")
        enum = pb.V1LayerParameter.LayerType.Name(header.type)
        type_name = V1_TYPES.get(enum, enum.title().replace("_", ""))
    else:
        type_name = header.type
    blobs = [_read_blob(wire, s, e, header.name) for s, e in blob_spans]
    return LayerRecord(header.name, type_name, header, blobs)


def read_caffemodel_index(path: str | Path) -> dict[str, LayerRecord]:
    """Index a caffemodel: {layer name: LayerRecord}, in file order, floats left on disk.

    Handles the new `layer` and the V1 `layers` (VGG16's release) formats. Raises WeightsError when the
    file is missing or is not a Caffe binary NetParameter.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; download the ImageNet VGG16 caffemodel and "
                           f"convert it ({CONVERT_HINT}), or set init.weights: null")
    pb = caffe_pb2()
    layer_field, layers_field = _number(pb.NetParameter, "layer"), _number(pb.NetParameter, "layers")
    index: dict[str, LayerRecord] = {}
    with open(path, "rb") as f:
        if f.read(4) == b"\x89HDF":
            raise WeightsError(f"{path}: an HDF5 caffemodel; save it as a binary .caffemodel "
                               "(caffe.Net(...).save(path)) and use that")
        wire = _Wire(f, path)
        for number, wire_type, key_at, vstart, vend in wire.fields(0, path.stat().st_size):
            if number in (layer_field, layers_field):
                if wire_type != _WIRE_LEN:
                    wire.bad("a layer that is not a message", key_at)
                record = _read_layer(wire, vstart, vend, v1=number == layers_field)
                index[record.name] = record
    if not any(rec.blobs for rec in index.values()):
        raise WeightsError(f"{path}: holds no layer with weights; is it a prototxt or a solver state "
                           "rather than a .caffemodel?")
    return index


def recorded_gray_mean(path: str | Path) -> Optional[float]:
    """The gray mean M a converted model expects (its input is gray - M on 0-255), or None.

    `fcnseg weights convert` records M as conv1_1's `transform_param { mean_value: M }`, a field Caffe
    never reads on a Convolution layer. Raises WeightsError when `path` is not a readable caffemodel.
    """
    rec = read_caffemodel_index(path).get("conv1_1")
    values = list(rec.header.transform_param.mean_value) if rec is not None else []
    return float(values[0]) if values else None


def load_blob(f, blob: BlobRecord) -> np.ndarray:
    """The blob's values as a float32 array of its declared shape, read from open file `f`."""
    if blob.values is not None:
        return blob.values.reshape(blob.shape)
    parts = []
    for offset, nbytes, dtype in blob.segments:
        part = np.empty(nbytes // np.dtype(dtype).itemsize, dtype=dtype)
        f.seek(offset)
        if f.readinto(memoryview(part).cast("B")) != nbytes:
            raise WeightsError(f"{getattr(f, 'name', 'caffemodel')}: truncated file; download it again")
        parts.append(part)
    if not parts:  # a blob of no values (a zero in its shape) stores no data field
        return np.zeros(blob.shape, np.float32)
    values = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return values.astype(np.float32, copy=False).reshape(blob.shape)


# ---------------------------------------------------------------------------------------------------
# Writing a caffemodel one layer at a time


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_prefix(number: int, length: int) -> bytes:
    """The key and length that open field `number` holding `length` bytes (a message or packed floats)."""
    return _varint_bytes(number << 3 | _WIRE_LEN) + _varint_bytes(length)


def _write_layer(out, header, arrays: list[np.ndarray]) -> None:
    # A LayerParameter is its header fields followed by its `blobs` fields: protobuf concatenates
    # repeated fields, so the floats go from numpy to the file without a protobuf copy.
    pb = caffe_pb2()
    blobs_field, data_field = _number(pb.LayerParameter, "blobs"), _number(pb.BlobProto, "data")
    body = header.SerializeToString()
    heads = [pb.BlobProto(shape=pb.BlobShape(dim=a.shape)).SerializeToString() + field_prefix(data_field, a.nbytes)
             for a in arrays]
    blob_sizes = [len(h) + a.nbytes for h, a in zip(heads, arrays)]
    size = len(body) + sum(len(field_prefix(blobs_field, n)) + n for n in blob_sizes)
    out.write(field_prefix(_number(pb.NetParameter, "layer"), size) + body)
    for head, array, n in zip(heads, arrays, blob_sizes):
        out.write(field_prefix(blobs_field, n) + head)
        out.write(memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B"))


def write_caffemodel(path: str | Path, name: str, layers: Iterable[tuple[object, list[np.ndarray]]]) -> int:
    """Write a new-style NetParameter to `path` under a temporary name, then rename; returns its size.

    `layers` yields (LayerParameter without blobs, [float32 arrays]) one layer at a time, so only one
    layer's floats need be in memory. Raises WeightsError when the file cannot be written.
    """
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(caffe_pb2().NetParameter(name=name).SerializeToString())
            for header, arrays in layers:
                _write_layer(out, header, arrays)
                del header, arrays  # free this layer's floats before the next is read

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)
        integrity.record(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write the converted model ({exc.strerror}); "
                           "choose another -o") from None
    return path.stat().st_size


def load_trained(net, path: str | Path, optional: set[str] = frozenset()) -> None:
    """Copy the caffemodel at `path` into pycaffe `net` by layer name, all or nothing.

    Every parameter layer of `net` must be in the file with the net's blob shapes, except the layers
    named in `optional` (fixed ones, e.g. bilinear upsampling), which keep their fillers when absent.
    Checked before anything is copied: Caffe itself aborts the process on a shape mismatch and keeps
    fillers silently for a missing layer. Raises WeightsError naming the layers, or the layer whose values
    are not finite (found while copying: the net is then half-loaded, and must be dropped).
    """

    index = read_caffemodel_index(path)
    missing, wrong = [], []
    for name, blobs in net.params.items():
        rec = index.get(name)
        if rec is None or not rec.blobs:
            if name not in optional:
                missing.append(name)
        elif len(rec.blobs) != len(blobs) or any(rec.blob_shape(i) != tuple(b.data.shape)
                                                 for i, b in enumerate(blobs)):
            wrong.append(name)
    if missing or wrong:
        what = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                           f"other shapes for {', '.join(wrong)}" if wrong else "") if part)
        raise WeightsError(f"{path}: does not fit the run's net ({what}); pass weights trained with this "
                           "run's config")
    with open(path, "rb") as f:
        for name, blobs in net.params.items():
            rec = index.get(name)
            if rec is not None and rec.blobs:
                for i, blob in enumerate(blobs):
                    values = load_blob(f, rec.blobs[i])
                    if not np.isfinite(values).all():  # a net that raises here is never used by the caller
                        raise WeightsError(f"{path}: layer {name} blob {i} holds NaN or infinite values; the file "
                                           "is damaged, or was saved after training diverged: use another snapshot")
                    blob.data[...] = values.reshape(blob.data.shape)
