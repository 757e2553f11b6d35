"""The ONNX model file `fcnseg export` writes and `fcnseg infer --onnx` reads: names and metadata.

One input and two outputs, all 1 x C x H x W float32 with H and W free: any size from the metadata's
`input_multiple` up (a `pad: minimal` net mirrors its input up to that multiple and crops its scores back
inside the graph, as `fcnseg infer` does; the outputs have the input's size):

- INPUT `image`: the windowed 0-255 image (what `images.apply_window` gives), or with
  `--with-preprocessing` the original pixel values (the graph applies the window, mean and scale);
  metadata `input` says which (INPUT_WINDOWED or INPUT_RAW).
- SCORES `scores`: Caffe's `score` blob, K x H x W class scores before the softmax.
- PROBABILITIES `probabilities`: their softmax over the class axis.

Metadata (`metadata_props`, each value JSON): every field of `inputs.InferenceFacts` (classes, window,
mean, scale, ...), plus `input`, `source_run`, `weights`, `weights_sha256` and `fcnseg_version` (the
exporting version). Only facts that mean something on the receiving machine: `dataset`, `source_run` and
`weights` are folder and file names, never the exporting machine's paths; `weights_sha256` is the
weights file's content hash (`files.file_sha256`, as fcnseg records it for model files).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from . import __version__, integrity
from .errors import RunError
from .files import file_sha256
from .inputs import InferenceFacts

INPUT = "image"
SCORES = "scores"
PROBABILITIES = "probabilities"
INPUT_WINDOWED = "windowed 0-255"
INPUT_RAW = "raw pixel values"


def metadata(facts: InferenceFacts, raw_input: bool, source_run: Path, weights: Path) -> dict[str, str]:
    """The metadata_props of an exported model, as {key: JSON text}: names and content hashes, no paths of
    this machine (`dataset` the dataset folder's name, `source_run` the run folder's, `weights` the file's)."""
    values = {**facts.to_dict(), "fcnseg_version": __version__, "input": INPUT_RAW if raw_input else INPUT_WINDOWED,
              "dataset": (Path(facts.dataset).name or Path(facts.dataset).resolve().name) if facts.dataset else None,
              "source_run": Path(source_run).resolve().name, "weights": Path(weights).name,
              "weights_sha256": file_sha256(weights)}
    return {key: json.dumps(value) for key, value in values.items()}


def read_metadata(props: dict[str, str], where: str) -> tuple[InferenceFacts, bool]:
    """(facts, whether the graph takes raw pixel values) from a model's metadata_props.

    RunError naming `where` when the file was not written by `fcnseg export`."""
    try:
        values = {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError as exc:
        raise RunError(f"{where}: metadata is not fcnseg's ({exc}); export the model with `fcnseg export`") from None
    if values.get("input") not in (INPUT_RAW, INPUT_WINDOWED):
        raise RunError(f"{where}: no fcnseg metadata (input, classes, window ...); export the model with "
                       "`fcnseg export RUN -o MODEL.onnx`")
    return InferenceFacts.from_dict(values, where), values["input"] == INPUT_RAW


def check_onnx_file(path: Path) -> None:
    """Parse `path` with onnx and run onnx's checker on it before onnxruntime sees the bytes (a damaged
    protobuf or graph must not reach its C++ loader). RunError naming the file and what is wrong."""
    import onnx  # noqa: PLC0415 - heavy: only infer --onnx reads a model

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError, DecodeError and others for bad files
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise RunError(f"{path}: not a valid ONNX model ({first}); export it again with "
                       "`fcnseg export RUN -o MODEL.onnx`") from None


def open_session(path: str | Path, gpu: Optional[int] = None):
    """(onnxruntime InferenceSession, facts, raw_input) for an exported model.

    CPU unless `gpu` is given (then onnxruntime's CUDA provider on that device), with OMP_NUM_THREADS
    threads when that is set (as Caffe's OpenMP; onnxruntime's own default is every core, which N
    single-threaded Dask workers must not each take). RunError for a missing
    or unreadable file, a model without fcnseg metadata, or a GPU onnxruntime cannot use here.
    """
    import onnxruntime as ort  # noqa: PLC0415 - heavy: only infer --onnx runs a session

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: ONNX model not found; write one with `fcnseg export RUN -o {path}`")
    integrity.check(path)
    check_onnx_file(path)
    providers: list = ["CPUExecutionProvider"]
    if gpu is not None:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RunError(f"--gpu {gpu}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                           "or leave --gpu out")
        providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit():
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise RunError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
    try:
        props = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError:  # onnxruntime decodes the metadata as UTF-8
        raise RunError(f"{path}: its metadata is not text; export the model again with `fcnseg export`") from None
    facts, raw_input = read_metadata(props, str(path))
    names = {o.name for o in session.get_outputs()}
    if SCORES not in names or [i.name for i in session.get_inputs()] != [INPUT]:
        raise RunError(f"{path}: expected input `{INPUT}` and output `{SCORES}`; export it again with "
                       "`fcnseg export`")
    return session, facts, raw_input
