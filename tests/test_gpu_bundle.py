"""The GPU-check bundle (scripts/gpu_bundle.py, `make gpu-bundle`; its run.sh is scripts/gpu_bundle_run.sh).

What these tests can check honestly where they run (CI: the CPU pycaffe, no CUDA build, no GPU):
- the bundler itself, around the CPU pycaffe (`--caffe cpu`): the same trace, copies, ldd closure, strip,
  size check and run.sh as the CUDA bundle, so the folder stays under 60 MiB with the same Python, packages,
  Debian libraries and data, every ELF in it resolves its libraries inside the bundle or to glibc, and
  unpacked in an empty folder and run under `env -i` it maps no file from outside itself but glibc's and
  the locale's, rehearses `fcnseg train` + `fcnseg infer` on the CPU, and stops at the driver probe with one
  line ("built CPU-only");
- the CUDA bundle (`.gpu/` from `make gpu-bundle`) gets the same size, ldd and run checks when it exists: its
  CUDA libraries resolve only to $FCNSEG_TEST_CUDA_LIBS (a `pip install --target` of the CUDA 13 wheels), and
  run.sh stops with exit 3 naming the four libraries when it finds none. Where no `.gpu/` exists (CI) those
  cases are skipped, saying so. Nothing here runs a CUDA kernel: that needs the GPU machine (docs/gpu-check.md).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_bundle  # noqa: E402

LIMIT_MIB = 60
CUDA_LIBS = os.environ.get("FCNSEG_TEST_CUDA_LIBS")  # a `pip install --target` folder of the CUDA 13 wheels
CUDA_SONAMES = {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"}
PROBE_CPU = ("gpu check: stopped at the driver probe: this pycaffe was built CPU-only (no CUDA); build the CUDA "
             "one with `make setup CAFFE=cuda`")


def test_library_classes():
    """glibc's and CUDA's libraries stay on the target; everything else travels."""
    for name in ("libc.so.6", "libm.so.6", "libpthread.so.0", "ld-linux-x86-64.so.2", "librt.so.1", "libdl.so.2"):
        assert gpu_bundle.GLIBC.match(name), name
    for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcuda.so.1"):
        assert gpu_bundle.CUDA.match(name), name
    for name in ("libstdc++.so.6", "libgcc_s.so.1", "libopenblas.so.0", "libcudart.so.12", "libcrypt.so.1",
                 "libprotobuf.so.32", "libglog.so.1"):
        assert not gpu_bundle.GLIBC.match(name) and not gpu_bundle.CUDA.match(name), name


def test_run_sh_without_archive(tmp_path):
    """run.sh next to no archive: exit 2 and the command that makes one."""
    (tmp_path / "run.sh").write_text((ROOT / "scripts/gpu_bundle_run.sh").read_text())
    proc = subprocess.run(["bash", str(tmp_path / "run.sh"), str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "make gpu-bundle" in proc.stderr


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    """The bundle around the CPU pycaffe, built with the bundler's own size check (xz -6, as `make gpu-bundle`)."""
    base = tmp_path_factory.mktemp("bundle")
    out = base / "gpu"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_bundle.py"), "--caffe", "cpu", "--out", str(out),
                           "--data-dir", str(base / "data"), "--xz-level", "6", "--max-mib", str(LIMIT_MIB),
                           "--python", sys.executable], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert re.search(r"gpu bundle: .* is \d+\.\d MiB \(limit 60", proc.stdout), proc.stdout
    return out


def bundles():
    cuda = ROOT / ".gpu"
    have = (cuda / "MANIFEST.json").is_file() and json.loads((cuda / "MANIFEST.json").read_text())["caffe"][
        "variant"] == "cuda"
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not have, reason="no CUDA bundle in .gpu/ (make gpu-bundle): the CPU-variant cases check the same bundler"))]


@pytest.fixture(params=bundles())
def bundle(request) -> Path:
    return ROOT / ".gpu" if request.param == "cuda" else request.getfixturevalue("cpu_bundle")


@pytest.fixture()
def unpacked(bundle, tmp_path) -> Path:
    with tarfile.open(bundle / gpu_bundle.ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="tar")
    return tmp_path / gpu_bundle.PAYLOAD


def isolated(bundle: Path, tmp_path: Path, *args: str, cuda: str | None = None) -> subprocess.CompletedProcess:
    """run.sh under `env -i`: no PATH beyond /usr/bin:/bin, no Python or loader variables, an empty work folder."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FCNSEG_GPU_WORK": str(tmp_path / "work")}
    if cuda:
        env["FCNSEG_CUDA_LIBS"] = cuda
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", str(bundle / "run.sh"),
                           str(tmp_path / "out"), "0", *args], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_size_and_no_cuda_inside(bundle):
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size <= LIMIT_MIB * 2**20, f"{size / 2**20:.1f} MiB"
    assert sorted(p.name for p in bundle.iterdir()) == ["MANIFEST.json", "fcnseg-gpu.tar.xz", "run.sh"]
    with tarfile.open(bundle / gpu_bundle.ARCHIVE) as tar:
        names = tar.getnames()
    assert not [n for n in names if re.search(r"/lib(cudart|cublas|cublasLt|curand|cuda)\.so", n)]
    for part in ("python/bin/python3.11", "caffe/caffe/_caffe.so", "src/fcnseg/cli.py", "src/configs/demo_hela.yaml",
                 "src/scripts/gpu_device_check.py", "data/frame17.tif", "data/hela/dataset.yaml", "lib/libopenblas.so.0"):
        assert f"{gpu_bundle.PAYLOAD}/{part}" in names, part


@pytest.mark.slow
def test_every_elf_resolves_in_bundle_glibc_or_cuda(unpacked, bundle):
    """ldd of every ELF with only the bundle (and the CUDA wheels, if given) on the loader path."""
    cuda_dir = str(Path(CUDA_LIBS, "nvidia/cu13/lib")) if CUDA_LIBS else None
    path = f"{unpacked}/lib:{unpacked}/python/lib" + (f":{cuda_dir}" if cuda_dir else "")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": path}
    elves = [p for p in unpacked.rglob("*") if p.is_file() and not p.is_symlink() and gpu_bundle.is_elf(p)]
    names = {p.name for p in elves}
    assert len(elves) > 100
    bad = []
    for elf in elves:
        for name, where in gpu_bundle.ldd(elf, env):
            if gpu_bundle.GLIBC.match(name):
                ok = name == "linux-vdso.so.1" or (  # the kernel's, no file
                    where is not None and re.match(r"^/(usr/)?lib(64|/x86_64-linux-gnu)?/", where))
            elif gpu_bundle.CUDA.match(name):
                # never from the bundle; from the given wheels when given (else wherever this machine has them)
                ok = where is None or not Path(where).resolve().is_relative_to(unpacked.resolve())
                if cuda_dir and name != "libcuda.so.1":
                    ok = where is not None and where.startswith(cuda_dir)
            elif where is None:
                ok = name in names  # a wheel's vendored sibling, found through its loader's RUNPATH
            else:
                ok = Path(where).resolve().is_relative_to(unpacked.resolve())
            if not ok:
                bad.append(f"{elf.relative_to(unpacked)}: {name} => {where}")
    assert not bad, "\n".join(bad[:20])


@pytest.mark.slow
def test_bundle_python_maps_only_itself_and_glibc(unpacked, tmp_path):
    """The bundle's Python importing everything the check needs loads no file from this machine but glibc's."""
    code = ("import os, caffe, fcnseg.cli, fcnseg.train, fcnseg.infer, numpy, scipy.ndimage, skimage, lmdb, PIL.Image,"
            " tifffile, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt;"
            " plt.subplots()[0].savefig(os.environ['HOME'] + '/f.png');"
            " print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if l.split()[-1].startswith('/')})))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONHOME": f"{unpacked}/python",
           "PYTHONPATH": f"{unpacked}/caffe:{unpacked}/site:{unpacked}/src", "PYTHONNOUSERSITE": "1",
           "LD_LIBRARY_PATH": f"{unpacked}/lib:{unpacked}/python/lib", "GLOG_minloglevel": "2",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    if CUDA_LIBS:
        env["LD_LIBRARY_PATH"] += f":{CUDA_LIBS}/nvidia/cu13/lib"
    proc = subprocess.run([f"{unpacked}/python/bin/python3.11", "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outside = [p for p in proc.stdout.split() if not p.startswith(str(unpacked))
               and not gpu_bundle.GLIBC.match(Path(p).name)
               and not p.startswith(("/usr/lib/locale/", "/usr/lib/x86_64-linux-gnu/gconv/"))
               and not (p.startswith(CUDA_LIBS) if CUDA_LIBS else gpu_bundle.CUDA.match(Path(p).name))]
    assert not outside, outside


@pytest.mark.slow
def test_isolated_run_stops_at_the_probe(bundle, tmp_path):
    """Unpacked into an empty folder and run under env -i: one clear line at the driver probe (no GPU here)."""
    variant = json.loads((bundle / "MANIFEST.json").read_text())["caffe"]["variant"]
    if variant == "cuda" and not CUDA_LIBS:
        # Without the wheels (HOME elsewhere, so no toolkit cache either) some are missing: exit 3, each named.
        proc = isolated(bundle, tmp_path)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        missing = sorted(so for so in CUDA_SONAMES if f"cuda: {so} MISSING" in proc.stderr)
        assert missing and all(f"cuda: {so} from /" in proc.stderr for so in CUDA_SONAMES.difference(missing))
        rep = json.loads((tmp_path / "out/gpu_check.json").read_text())
        assert rep["stage"] == "cuda-libraries" and sorted(rep["missing"].split()) == missing
        return
    proc = isolated(bundle, tmp_path, cuda=CUDA_LIBS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    if variant == "cpu":
        assert lines[0] == PROBE_CPU
    else:
        assert lines[0].startswith("gpu check: stopped at the driver probe: this pycaffe has CUDA 13.0 but no NVIDIA"
                                   " driver was found"), lines
        for so in CUDA_SONAMES:
            assert f"cuda: {so} from {CUDA_LIBS}/nvidia/cu13/lib/{so}" in proc.stderr
    rep = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert rep["ok"] is False and rep["stopped_at"] == "driver probe" and rep["python"].startswith("3.11")
    assert (tmp_path / "out/gpu_check.txt").read_text().strip() == lines[0]


@pytest.mark.slow
def test_isolated_cpu_rehearsal_trains_and_infers(cpu_bundle, tmp_path):
    """Everything `fcnseg train` and `fcnseg infer` import and read is in the bundle: two CPU iterations on the
    bundled HeLa tiles, with validation and a snapshot, then inference on frame 17."""
    proc = isolated(cpu_bundle, tmp_path, "--rehearse-cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert rep["ok"] is True and rep["train"]["exit"] == 0 and rep["infer"]["cpu"]["exit"] == 0
    assert [v["iter"] for v in rep["train"]["val"]] == [2]
    assert 0.0 <= rep["train"]["val_mean_iu"] <= 1.0
