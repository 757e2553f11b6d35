"""The fuzz harness of every reader fcnseg points at a user's file (issue 39), called in-process.

A target takes the bytes of one input and a scratch folder, writes the bytes where the reader expects a
file and calls the reader as fcnseg's commands do. The contract under test: a reader returns, or raises
FcnsegError (one line, exit 2 at the CLI). Any other exception, a hang past the time limit or a crash of
the process is a finding.

`make_seeds(dest)` writes the seed corpus from real files: a tiny real run made with fcnseg itself
(`data import`, `train`, `export`: its Datums, prototxts, solverstate, caffemodel, ONNX model,
metrics.jsonl, caffe.log, config and dataset YAML), crops of the HeLa demo frames when present (else
synthetic frames) saved by tifffile/Pillow/numpy, pydicom's CT_small.dcm, nibabel's example NIfTI files,
HDF5 and Zarr volumes written by h5py and zarr, and VGG16-shaped Keras HDF5, safetensors and ONNX files
(tests/vgg_formats.py). `mutate(data, rng)` is the seeded mutator of the property-based runs and of
scripts/fuzz_cli.py. Drivers: tests/test_fuzz.py (short, in CI) and scripts/fuzz.py (the campaign).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from fcnseg.errors import FcnsegError

ROOT = Path(__file__).resolve().parents[1]
TARGETS: dict[str, Callable[[bytes, Path], None]] = {}


def target(name: str):
    def register(fn):
        TARGETS[name] = fn
        return fn
    return register


def _write(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def _usable(array, ndim: int) -> None:
    """What a reader returns must be usable downstream: `ndim` axes, none empty (an empty image crashed the PNG
    writer of `infer`: a contract the reader keeps, not only 'no exception')."""
    if array.ndim != ndim or 0 in array.shape:
        raise AssertionError(f"reader returned an array of shape {array.shape}")


def _read_slices(volume, most: int = 3) -> None:
    n = volume.shape[0]
    if n < 1 or 0 in volume.shape:
        raise AssertionError(f"volume of shape {volume.shape}")
    for index in sorted({0, n // 2, n - 1})[:most]:
        _usable(volume.slice(index), 2)


# ---- images -----------------------------------------------------------------------------------------------

def _image_target(suffix: str):
    def run(data: bytes, work: Path) -> None:
        from fcnseg.images import read_time_stack
        path = _write(work, "input" + suffix, data)
        _usable(read_time_stack(path, "image", to_gray=True)[0], 3)
        if suffix != ".jpg":
            _usable(read_time_stack(path, "mask")[0], 3)
    return run


for _suffix, _name in ((".tif", "tiff"), (".png", "png"), (".jpg", "jpeg"), (".npy", "npy")):
    target(_name)(_image_target(_suffix))


# ---- volumes ------------------------------------------------------------------------------------------------

@target("dicom")
def dicom(data: bytes, work: Path) -> None:
    from fcnseg.volumes.dicom import open_dicom
    _read_slices(open_dicom(_write(work, "input.dcm", data)))


@target("nifti")
def nifti(data: bytes, work: Path) -> None:
    from fcnseg.volumes.nifti import open_nifti
    name = "input.nii.gz" if data[:2] == b"\x1f\x8b" else "input.nii"
    _read_slices(open_nifti(_write(work, name, data), volume=0))


@target("hdf5")
def hdf5(data: bytes, work: Path) -> None:
    from fcnseg.volumes.arrays import open_array
    _read_slices(open_array(_write(work, "input.h5", data)))


@target("zarr")
def zarr_store(data: bytes, work: Path) -> None:
    """A Zarr v3 store is a folder: the first byte picks which of the seed store's files the rest replaces."""
    from fcnseg.volumes.arrays import open_array
    store = work / "seed.zarr"
    members = sorted(p for p in store.rglob("*") if p.is_file())
    member = members[data[0] % len(members)] if data else None
    original = member.read_bytes() if member else b""
    try:
        if member:
            member.write_bytes(data[1:])
        _read_slices(open_array(store))
    finally:
        if member:
            member.write_bytes(original)


# ---- Caffe: Datums, prototxt, solver, solverstate, caffemodel ------------------------------------------------

@target("datum")
def datum(data: bytes, work: Path) -> None:
    from fcnseg.data.caffe_lmdb import datum_plane
    from fcnseg.dataset import datum_array
    datum_plane(data, "record", "image", to_gray=True)
    datum_plane(data, "record", "mask")
    datum_array(data)


@target("prototxt")
def prototxt(data: bytes, work: Path) -> None:
    from fcnseg.doctor import diagnose_files
    diagnose_files(_write(work, "train_val.prototxt", data))


@target("solver")
def solver(data: bytes, work: Path) -> None:
    from fcnseg.doctor import diagnose_files
    diagnose_files(work / "seed_train_val.prototxt", _write(work, "solver.prototxt", data))


@target("solverstate")
def solverstate(data: bytes, work: Path) -> None:
    from fcnseg import verify
    snaps = work / "snapshots"
    snaps.mkdir(exist_ok=True)
    shutil.copyfile(work / "seed.caffemodel", snaps / "train_iter_2.caffemodel")
    verify.snapshot_problem(_write(snaps, "train_iter_2.solverstate", data))


@target("caffemodel")
def caffemodel(data: bytes, work: Path) -> None:
    from fcnseg.caffemodel import load_blob, read_caffemodel_index, recorded_gray_mean
    from fcnseg.weight_formats import read_weights
    path = _write(work, "input.caffemodel", data)
    index = read_caffemodel_index(path)
    with open(path, "rb") as f:
        for record in index.values():
            for blob in record.blobs:
                load_blob(f, blob)
    recorded_gray_mean(path)
    read_weights(path).close()


# ---- other frameworks' weights, ONNX models ------------------------------------------------------------------

def _weights_target(suffix: str):
    def run(data: bytes, work: Path) -> None:
        from fcnseg.weight_formats import match_vgg16, read_weights
        model = read_weights(_write(work, "input" + suffix, data))
        try:
            match_vgg16(model)
        finally:
            model.close()
    return run


for _suffix, _name in ((".h5", "keras_hdf5"), (".safetensors", "safetensors"), (".onnx", "onnx_weights")):
    target(_name)(_weights_target(_suffix))


@target("onnx_model")
def onnx_model(data: bytes, work: Path) -> None:
    from fcnseg.onnxmodel import open_session
    open_session(_write(work, "model.onnx", data))


# ---- YAML and logs -----------------------------------------------------------------------------------------

@target("config_yaml")
def config_yaml(data: bytes, work: Path) -> None:
    from fcnseg.config import load_config
    load_config(_write(work, "config.yaml", data))


@target("dataset_yaml")
def dataset_yaml(data: bytes, work: Path) -> None:
    from fcnseg.dataset import read_dataset
    folder = work / "dataset"
    folder.mkdir(exist_ok=True)
    _write(folder, "dataset.yaml", data)
    read_dataset(folder)


@target("inference_yaml")
def inference_yaml(data: bytes, work: Path) -> None:
    from fcnseg.inputs import read_inference_file
    read_inference_file(_write(work, "inference.yaml", data))


@target("doctor_log")
def doctor_log(data: bytes, work: Path) -> None:
    from fcnseg.doctor.log import curve_findings, read_log
    curve_findings(read_log(_write(work, "train.log", data)), num_classes=2)


# ---- running one input ---------------------------------------------------------------------------------------

def prepare(name: str, seeds: Path, work: Path) -> None:
    """Put what target `name` reads besides its input (a seed store, a net) into `work`."""
    work.mkdir(parents=True, exist_ok=True)
    if name == "zarr" and not (work / "seed.zarr").exists():
        shutil.copytree(seeds / "zarr_store" / "volume.zarr", work / "seed.zarr")
    if name == "solver":
        shutil.copyfile(seeds / "prototxt" / "train_val.prototxt", work / "seed_train_val.prototxt")
    if name == "solverstate":
        shutil.copyfile(seeds / "caffemodel" / "train_iter_2.caffemodel", work / "seed.caffemodel")


def run_one(name: str, data: bytes, work: Path) -> None:
    """Feed `data` to target `name`; FcnsegError (the contract) is swallowed, anything else propagates."""
    try:
        TARGETS[name](data, work)
    except FcnsegError:
        pass


def seed_inputs(name: str, seeds: Path) -> list[bytes]:
    """The seed corpus of target `name`: the bytes of each file in seeds/NAME/ (zarr: index byte + member)."""
    folder = seeds / name
    if name == "zarr":
        store = seeds / "zarr_store" / "volume.zarr"
        members = sorted(p for p in store.rglob("*") if p.is_file())
        return [bytes([i]) + p.read_bytes() for i, p in enumerate(members)]
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


# ---- the seeded mutator ----------------------------------------------------------------------------------------

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)


def mutate(data: bytes, rng: random.Random, splice: bytes = b"") -> bytes:
    """One to four random edits of `data`: bit flips, interesting bytes, truncation, inserted or zeroed runs,
    duplicated chunks, 64 flipped bytes every 4096, a splice from `splice`, or (rarely) an empty file."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        op = rng.randrange(10)
        if op == 0 and n:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 2 and n:
            del buf[rng.randrange(n):]
        elif op == 3:
            i = rng.randint(0, n)
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 4 and n:
            i = rng.randrange(n)
            buf[i:i + rng.randint(1, 256)] = bytes(min(256, n - i))[:rng.randint(1, 256)]
        elif op == 5 and n:
            i = rng.randrange(n)
            chunk = buf[i:i + rng.randint(1, 64)]
            j = rng.randint(0, len(buf))
            buf[j:j] = chunk
        elif op == 6 and n > 64:
            for start in range(rng.randrange(64), n, 4096):
                for k in range(start, min(start + 64, n)):
                    buf[k] ^= 0xFF
        elif op == 7 and n >= 4:
            i = rng.randrange(n - 3)
            buf[i:i + 4] = rng.choice((b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff",
                                       b"\x00\x00\x00\x00"))
        elif op == 8 and splice:
            i, j = rng.randrange(len(splice)), rng.randint(0, n)
            buf[j:] = splice[i:i + rng.randint(1, 512)] + buf[j:]
        elif op == 9 and rng.random() < 0.05:
            buf = bytearray()
    return bytes(buf)


# ---- seeds from real files -------------------------------------------------------------------------------------

def _fcnseg(*args, cwd=None) -> None:
    subprocess.run([sys.executable, "-m", "fcnseg.cli", *map(str, args)], check=True, capture_output=True,
                   cwd=cwd, env=dict(os.environ, GLOG_minloglevel="3"))


def _tiny_run(work: Path) -> Path:
    """A real fcnseg run of a tiny U-Net on 16 + 4 synthetic 32x32 images: import, 2 iterations, export."""
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for folder in ("img", "lab"):
        (work / "src" / folder).mkdir(parents=True, exist_ok=True)
    for i in range(20):
        label = np.zeros((32, 32), np.uint8)
        cy, cx, r = *rng.integers(6, 26, 2), rng.integers(3, 6)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = np.clip(40 + 150 * label + rng.normal(0, 15, label.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(work / "src" / "img" / f"s{i:02d}.png")
        Image.fromarray(label).save(work / "src" / "lab" / f"s{i:02d}.png")
    _fcnseg("data", "import", "--images", work / "src" / "img", "--labels", work / "src" / "lab",
            "--val", "s16,s17,s18,s19", "-o", work / "ds")
    config = {"model": {"arch": "unet", "stages": 2, "base_channels": 4, "norm": "batch", "pad": "minimal"},
              "data": {"root": str(work / "ds"), "batch_size": 2, "mean": "dataset", "scale": 0.0156},
              "solver": {"type": "Adam", "base_lr": 1e-3, "max_iter": 2, "random_seed": 0},
              "init": {"weights": None}, "train": {"val_interval": 2, "snapshot_interval": 2}}
    (work / "tiny.yaml").write_text(json.dumps(config))
    run = work / "run"
    _fcnseg("train", work / "tiny.yaml", "--out", run, "--force")
    _fcnseg("export", run, "-o", run / "tiny.onnx", "--with-preprocessing")
    return run


def _frames() -> np.ndarray:
    """Four 48x48 crops of the HeLa demo stack when it is here, else synthetic uint16 frames."""
    demo = ROOT / "data" / "hela_raw" / "hela_images.tif"
    if demo.is_file():
        import tifffile
        return np.asarray(tifffile.imread(demo, key=range(4)))[:, 100:148, 100:148]
    rng = np.random.default_rng(1)
    return rng.integers(0, 4000, (4, 48, 48)).astype(np.uint16)


def make_seeds(dest: Path) -> Path:
    """Write the seed corpus (one folder per target) under `dest`; returns it. About a minute (a tiny run)."""
    import h5py
    import nibabel
    import pydicom.data
    import tifffile
    import zarr
    from PIL import Image

    import vgg_formats
    from vgg_fixture import Vgg16Spec

    dest = Path(dest)
    if (dest / "DONE").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    folders = {name: dest / name for name in list(TARGETS) + ["zarr_store"]}
    for folder in folders.values():
        folder.mkdir(parents=True)
    frames = _frames()
    tifffile.imwrite(folders["tiff"] / "stack.tif", frames, photometric="minisblack")
    tifffile.imwrite(folders["tiff"] / "one_deflate.tif", frames[0], compression="zlib")
    tifffile.imwrite(folders["tiff"] / "tzyx.tif", frames.reshape(2, 2, 48, 48), imagej=True, metadata={"axes": "TZYX"})
    eight = (frames[0] / max(1, frames[0].max()) * 255).astype(np.uint8)
    Image.fromarray(eight).save(folders["png"] / "gray.png")
    Image.fromarray(frames[1].astype(np.uint16)).save(folders["png"] / "gray16.png")
    Image.fromarray((eight > 128).astype(np.uint8)).convert("P").save(folders["png"] / "palette.png")
    Image.fromarray(eight).save(folders["jpeg"] / "gray.jpg", quality=90)
    Image.fromarray(eight).convert("RGB").save(folders["jpeg"] / "rgb.jpg", quality=90)
    np.save(folders["npy"] / "stack.npy", frames)
    np.save(folders["npy"] / "float.npy", frames[0].astype(np.float32))
    shutil.copyfile(pydicom.data.get_testdata_file("CT_small.dcm"), folders["dicom"] / "CT_small.dcm")
    nib_data = Path(nibabel.__file__).parent / "tests" / "data"
    nifti = nibabel.load(nib_data / "example4d.nii.gz")
    small = nibabel.Nifti1Image(np.asanyarray(nifti.dataobj)[:16, :16, :4, :2], nifti.affine, nifti.header)
    nibabel.save(small, folders["nifti"] / "example4d_crop.nii")
    (folders["nifti"] / "example4d_crop.nii.gz").write_bytes(
        gzip.compress((folders["nifti"] / "example4d_crop.nii").read_bytes(), mtime=0))
    with h5py.File(folders["hdf5"] / "volume.h5", "w") as f:
        f.create_dataset("raw", data=frames, chunks=(1, 24, 24), compression="gzip")
    with h5py.File(folders["hdf5"] / "plain.h5", "w") as f:
        f.create_dataset("raw", data=frames[:2])
    z = zarr.open_array(folders["zarr_store"] / "volume.zarr", mode="w", shape=frames.shape, chunks=(1, 24, 24),
                        dtype=frames.dtype)
    z[:] = frames
    spec = Vgg16Spec(widths=(2, 2, 2, 2, 2), fc=4, classes=3)
    vgg_formats.write_keras_h5(folders["keras_hdf5"] / "vgg.h5", spec)
    vgg_formats.write_safetensors(folders["safetensors"] / "vgg.safetensors", vgg_formats.torchvision_state(spec))
    vgg_formats.write_onnx(folders["onnx_weights"] / "vgg.onnx", spec)

    run = _tiny_run(dest / "tiny")
    import lmdb
    with lmdb.open(str(dest / "tiny" / "ds" / "train_images_lmdb"), readonly=True, lock=False) as env, \
            env.begin() as txn:
        for i, (_, value) in enumerate(txn.cursor()):
            if i < 2:
                (folders["datum"] / f"image{i}.datum").write_bytes(bytes(value))
    with lmdb.open(str(dest / "tiny" / "ds" / "train_labels_lmdb"), readonly=True, lock=False) as env, \
            env.begin() as txn:
        (folders["datum"] / "label0.datum").write_bytes(bytes(next(iter(txn.cursor()))[1]))
    shutil.copyfile(run / "train_val.prototxt", folders["prototxt"] / "train_val.prototxt")
    shutil.copyfile(run / "deploy.prototxt", folders["prototxt"] / "deploy.prototxt")
    for case in sorted((ROOT / "tests" / "fixtures" / "doctor_cases").glob("*/train_val.prototxt"))[:3]:
        shutil.copyfile(case, folders["prototxt"] / f"{case.parent.name}.prototxt")
    shutil.copyfile(run / "solver.prototxt", folders["solver"] / "solver.prototxt")
    shutil.copyfile(ROOT / "tests" / "fixtures" / "seed" / "solver.prototxt", folders["solver"] / "seed_solver.prototxt")
    shutil.copyfile(run / "snapshots" / "train_iter_2.solverstate", folders["solverstate"] / "train_iter_2.solverstate")
    shutil.copyfile(run / "snapshots" / "train_iter_2.caffemodel", folders["caffemodel"] / "train_iter_2.caffemodel")
    shutil.copyfile(run / "tiny.onnx", folders["onnx_model"] / "tiny.onnx")
    shutil.copyfile(run / "config.yaml", folders["config_yaml"] / "config.yaml")
    for config in sorted((ROOT / "configs").glob("*.yaml"))[:3]:
        shutil.copyfile(config, folders["config_yaml"] / config.name)
    shutil.copyfile(dest / "tiny" / "ds" / "dataset.yaml", folders["dataset_yaml"] / "dataset.yaml")
    shutil.copyfile(run / "inference.yaml", folders["inference_yaml"] / "inference.yaml")
    shutil.copyfile(run / "metrics.jsonl", folders["doctor_log"] / "metrics.jsonl")
    for log in ("healthy.log", "nan.log", "uniform_ln21.log"):
        shutil.copyfile(ROOT / "tests" / "fixtures" / "doctor_logs" / log, folders["doctor_log"] / log)
    (dest / "DONE").write_text("seeds\n")
    return dest
