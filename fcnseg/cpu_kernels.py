"""Which CPU features and convolution kernels Caffe runs here, decided in one place and reported from it.

Caffe is compiled for generic x86-64; what depends on the CPU is chosen at run time by the libraries it links:
oneDNN (Convolution/Deconvolution since patch 0004) by the instruction set it may use -- the CPU's, capped by
`ONEDNN_MAX_CPU_ISA` -- and OpenBLAS by its core type (`OPENBLAS_CORETYPE`). oneDNN 2.6 has Winograd
F(4x4, 3x3) only for `avx512_core`; where it is missing, patch 0008 runs fcnseg's own Winograd F(4x4, 3x3)
(transforms around oneDNN's sgemm, which exists for every ISA). `FCNSEG_CAFFE_WINOGRAD=0` turns Winograd
off (oneDNN's direct kernels), `=fcnseg` runs fcnseg's Winograd even where oneDNN has one,
`FCNSEG_CAFFE_DNNL=0` turns oneDNN off (Caffe's im2col + GEMM).

`kernel_report()` reads all of this once per process (`KernelReport.line()` is what `fcnseg train` and
`fcnseg infer` print); `info_lines()` adds the versions a bug report needs (`fcnseg info`). The tests of the
kernels (tests/test_caffe_conv.py) ask this module what must run on the CPU they run on.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy
from google import protobuf
from threadpoolctl import threadpool_info

from . import __version__
from .caffe_env import import_caffe
from .errors import CaffeUnavailableError

DNNL_LIBRARY = "libdnnl.so.2"  # the soname Caffe links (-ldnnl, Debian's libdnnl2)
# oneDNN's dnnl_cpu_isa_t values (dnnl_types.h); each includes the bits of the ISAs below it.
ONEDNN_ISAS = {0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0x407: "avx2_vnni", 0xF: "avx512_mic",
               0x1F: "avx512_mic_4ops", 0x27: "avx512_core", 0x67: "avx512_core_vnni",
               0xE7: "avx512_core_bf16", 0x3E7: "avx512_core_amx"}
AVX512_CORE = 0x27  # oneDNN 2.6's jit_wino_4x3 needs it
FCNSEG_WINOGRAD_PATCH = "0008-fcnseg-winograd-f4x4-3x3.patch"
PATCH_DIR = Path(__file__).resolve().parents[1] / "scripts" / "caffe_patches"

WINOGRAD_ONEDNN = "Winograd F(4x4,3x3) (oneDNN)"
WINOGRAD_FCNSEG = "Winograd F(4x4,3x3) (fcnseg, on oneDNN's sgemm)"
DIRECT_ONEDNN = "direct (oneDNN)"
IM2COL = "im2col + GEMM (Caffe)"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first processor in `cpuinfo` (empty where the file does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_family(flags: set[str]) -> str:
    """The vector extensions that matter for these kernels, as people name them: AVX-512, AVX2+FMA, ..."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX-512"
    if {"avx2", "fma"} <= flags:
        return "AVX2+FMA"
    if "avx" in flags:
        return "AVX"
    return "SSE" if "sse4_1" in flags else "x86-64" if platform.machine() in ("x86_64", "AMD64") else platform.machine()


def onednn_isa_code() -> Optional[int]:
    """The instruction set oneDNN uses in this process (dnnl_get_effective_cpu_isa: the CPU's, capped by
    ONEDNN_MAX_CPU_ISA, fixed at its first use), or None where libdnnl cannot be loaded."""
    try:
        lib = ctypes.CDLL(DNNL_LIBRARY)
    except OSError:
        return None
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
    return int(lib.dnnl_get_effective_cpu_isa())


def onednn_version() -> Optional[str]:
    """oneDNN's version as major.minor.patch, or None where libdnnl cannot be loaded."""
    try:
        lib = ctypes.CDLL(DNNL_LIBRARY)
    except OSError:
        return None

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                    ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]

    lib.dnnl_version.restype = ctypes.POINTER(Version)
    v = lib.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def onednn_has_winograd(isa_code: Optional[int]) -> bool:
    """True where oneDNN 2.6 implements Winograd convolution for this ISA (avx512_core and above)."""
    return isa_code is not None and isa_code & AVX512_CORE == AVX512_CORE


def openmp_threads() -> int:
    """The threads Caffe's OpenMP loops and oneDNN use: OMP_NUM_THREADS, else the cores this process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class CaffeBuild:
    """The pycaffe build on sys.path: its cache key (folder name), patch names, and where it lies."""

    path: Optional[Path]
    key: Optional[str]
    patches: Optional[tuple[str, ...]]  # None where neither the build nor this checkout can tell

    @property
    def has_fcnseg_winograd(self) -> bool:
        return bool(self.patches) and FCNSEG_WINOGRAD_PATCH in self.patches


def patches_hash(patch_dir: Path) -> str:
    """scripts/install_caffe.sh's `patches=` value: sha256 of the sorted patches' `sha256sum` lines, 16 hex."""
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.name}\n"
                    for p in sorted(patch_dir.glob("*.patch")))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def caffe_build() -> CaffeBuild:
    """Locate the importable `caffe` without importing it; read the build's PATCHES (written by
    install_caffe.sh), else name this checkout's patches when their hash is the build's RECIPE `patches=`."""
    spec = importlib.util.find_spec("caffe")
    if spec is None or spec.origin is None:
        return CaffeBuild(None, None, None)
    folder = Path(spec.origin).resolve().parents[2]  # <cache>/caffe/<key>/python/caffe/__init__.py
    listed = folder / "PATCHES"
    if listed.is_file():
        return CaffeBuild(folder, folder.name, tuple(listed.read_text().split()))
    recipe = folder / "RECIPE"
    wanted = next((ln.split("=", 1)[1] for ln in recipe.read_text().splitlines() if ln.startswith("patches=")),
                  None) if recipe.is_file() else None
    if wanted and PATCH_DIR.is_dir() and patches_hash(PATCH_DIR) == wanted:
        return CaffeBuild(folder, folder.name, tuple(p.name for p in sorted(PATCH_DIR.glob("*.patch"))))
    return CaffeBuild(folder, folder.name if recipe.is_file() else None, None)


# fcnseg's Winograd runs by itself (where oneDNN has none) on layers of at least this size, where it measured
# faster than oneDNN's AVX2 direct kernels (docs/performance.md); the same numbers are in patch 0008.
FCNSEG_MIN_IN, FCNSEG_MIN_OUT, FCNSEG_MIN_TILES = 128, 128, 128


def tiles(n: int, oh: int, ow: int) -> int:
    """4x4 output tiles of a batch of n (oh, ow) outputs: the columns of Winograd's GEMMs."""
    return n * -(-oh // 4) * -(-ow // 4)


def layer_kernel(ic: int, oc: int, n_tiles: int, isa_code: Optional[int], build: CaffeBuild,
                 environ=os.environ) -> str:
    """What Caffe runs for one 3x3 stride-1 convolution with `ic` inputs, `oc` outputs over `n_tiles` tiles (see
    `tiles`): the rule patches 0006 and 0008 apply in C++ (DnnlConv's constructor)."""
    if environ.get("FCNSEG_CAFFE_DNNL") == "0" or isa_code is None:
        return IM2COL
    switch = environ.get("FCNSEG_CAFFE_WINOGRAD")
    if switch == "0" or ic % 16 or oc % 16:  # Winograd pads channels to 16: a 1-channel layer stays direct
        return DIRECT_ONEDNN
    if build.has_fcnseg_winograd and switch == "fcnseg":
        return WINOGRAD_FCNSEG
    if onednn_has_winograd(isa_code):
        return WINOGRAD_ONEDNN
    if build.has_fcnseg_winograd and ic >= FCNSEG_MIN_IN and oc >= FCNSEG_MIN_OUT and n_tiles >= FCNSEG_MIN_TILES:
        return WINOGRAD_FCNSEG
    return DIRECT_ONEDNN


def conv3x3_kernel(isa_code: Optional[int], build: CaffeBuild, environ=os.environ) -> str:
    """The 3x3 stride-1 convolutions in words: what a VGG-sized layer runs, and what smaller ones run where
    that differs (fcnseg's Winograd takes only the large layers)."""
    large = layer_kernel(512, 512, 10**6, isa_code, build, environ)
    small = layer_kernel(16, 16, 1, isa_code, build, environ)
    if large == small:
        return large
    return (f"{large} for >= {FCNSEG_MIN_IN} in and {FCNSEG_MIN_OUT} out channels over >= {FCNSEG_MIN_TILES} "
            f"tiles, {small} below")


@dataclass(frozen=True)
class KernelReport:
    """The CPU and kernel facts of this process, as read once by `kernel_report()`."""

    family: str
    onednn_isa: Optional[str]
    capped: Optional[str]  # ONEDNN_MAX_CPU_ISA where set
    threads: int
    conv3x3: str
    build: CaffeBuild

    def line(self) -> str:
        """One line: 'CPU: AVX-512 (oneDNN avx512_core_bf16), 2 threads; 3x3 convolutions: Winograd ...'."""
        isa = f"oneDNN {self.onednn_isa}" if self.onednn_isa else "no oneDNN"
        if self.capped:
            isa += f", ONEDNN_MAX_CPU_ISA={self.capped}"
        return f"CPU: {self.family} ({isa}), {self.threads} threads; 3x3 convolutions: {self.conv3x3}"


_REPORT: Optional[KernelReport] = None


def kernel_report() -> KernelReport:
    """Read the CPU, oneDNN's ISA, the build and the switches once per process (oneDNN fixes its ISA at
    first use, and the switches are read when each layer's kernels are built)."""
    global _REPORT
    if _REPORT is None:
        code = onednn_isa_code()
        build = caffe_build()
        _REPORT = KernelReport(cpu_family(cpu_flags()), None if code is None else ONEDNN_ISAS.get(code, hex(code)),
                               os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
                               openmp_threads(), conv3x3_kernel(code, build), build)
    return _REPORT


def blas_lines() -> list[str]:
    """Each BLAS loaded in this process (Caffe's OpenBLAS, numpy's) with version, core type and threads,
    from threadpoolctl; call after importing caffe to see Caffe's."""
    rows = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        arch = f", {lib['architecture']}" if lib.get("architecture") else ""
        layer = f", {lib['threading_layer']}" if lib.get("threading_layer") else ""
        path = Path(lib.get("filepath", "?"))
        owner = "Caffe's, from the system" if str(path).startswith("/usr/lib") else f"from {path.parent.name}"
        rows.append(f"{lib.get('internal_api')} {lib.get('version')}{arch}{layer}, {lib.get('num_threads')} "
                    f"threads ({owner}: {path.name})")
    return rows


def info_lines() -> list[str]:
    """`fcnseg info`: the kernel line, then the versions a bug report needs (fcnseg, Python, numpy, protobuf,
    the Caffe build and its patches, oneDNN, each BLAS)."""
    report = kernel_report()
    caffe_status = "not importable: run `make setup`"
    if report.build.path is not None:
        try:
            import_caffe()  # loads Caffe's OpenBLAS too, for the BLAS lines
            caffe_status = f"{report.build.path / 'python'}"
        except CaffeUnavailableError as exc:  # reported, not raised: info is for broken setups too
            caffe_status = str(exc)
    patches = ", ".join(report.build.patches) if report.build.patches else "unknown (a build from another checkout)"
    lines = [report.line(),
             f"fcnseg {__version__}; Python {platform.python_version()} ({sys.executable}); numpy {numpy.__version__}; "
             f"protobuf {protobuf.__version__}",
             f"pycaffe: {caffe_status}",
             f"Caffe build: key {report.build.key or 'unknown'}; patches: {patches}",
             f"oneDNN: {onednn_version() or 'not found'}" + (f" ({report.onednn_isa})" if report.onednn_isa else "")]
    lines += [f"BLAS: {row}" for row in blas_lines()] or ["BLAS: none loaded"]
    lines.append(f"OS: {platform.platform()}; CPU flags: {report.family}; {os.cpu_count()} CPUs")
    return lines
