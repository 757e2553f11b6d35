"""Make the GPU-check bundle: one folder (default .gpu/, at most 60 MiB) that runs fcnseg's device check on
an x86-64 GPU machine with glibc >= 2.36, an NVIDIA driver >= 580 and the CUDA 13 runtime libraries
(libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, e.g. PyTorch's pip packages), and
nothing else: no Python 3.11, no package registry, no Debian libraries (docs/gpu-check.md).

    .venv/bin/python scripts/gpu_bundle.py [--out .gpu] [--max-mib 60] [--caffe cuda|cpu]
    (`make gpu-bundle` runs it)

What goes in, traced rather than guessed: the venv's Python imports everything the check runs (caffe,
fcnseg's train/infer/data/eval modules, scripts/gpu_check.py, matplotlib drawing a figure, tifffile, PIL,
lmdb); every stdlib and site-packages module file it loaded, with the whole subpackage it sits in (tests
and caches left out), plus matplotlib's rc file and DejaVu fonts; the pycaffe folder built by
scripts/install_caffe.sh (cuda: SASS for sm_90 plus PTX unless FCNSEG_CUDA_ARCHS says otherwise); the
interpreter, libpython and stdlib extension modules; then every shared library that `ldd` finds for any
ELF in the bundle, except glibc's and the CUDA libraries above (those come from the GPU machine); fcnseg's
source, configs and the check's scripts; the HeLa demo dataset (imported LMDB tiles) and frame 17.
All of it in one tar.xz beside `run.sh` (scripts/gpu_bundle_run.sh) and MANIFEST.json.
Exit 0 with the size printed, 1 when the bundle exceeds --max-mib or a library cannot be resolved.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "fcnseg-gpu"
ARCHIVE = PAYLOAD + ".tar.xz"
DEFAULT_ARCHS = "90-real;90-virtual"
# Shared objects the target's glibc (libc6) provides: never carried.
GLIBC = re.compile(r"^(ld-linux-x86-64\.so\.2|lib(c|m|mvec|pthread|dl|rt|resolv|util|anl|BrokenLocale|thread_db)"
                   r"\.so\.\d+|libnss_\w+\.so\.\d+|linux-vdso\.so\.1)$")
# The CUDA libraries the GPU machine has (its Python packages) and the driver's: never carried.
CUDA = re.compile(r"^lib(cudart\.so\.13|cublas\.so\.13|cublasLt\.so\.13|curand\.so\.10|cuda\.so\.1)$")
CUDA_NEEDED = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"]
# The check's scripts (besides fcnseg/ and configs/).
SCRIPTS = ["gpu_device_check.py", "gpu_check.py", "bench.py", "torch_fcn_worker.py", "demo_frame.py"]
SKIP_DIRS = {"__pycache__", "tests", "test", "testing_data"}
STDLIB_SKIP = {"site-packages", "config-3.11-x86_64-linux-gnu", "test", "idlelib", "tkinter", "turtledemo",
               "ensurepip", "lib2to3", "pydoc_data", "distutils"}
# matplotlib's rc file and the fonts a plot with the default style may use (LastResortHE: matplotlib's
# fallback, which it opens for every text); the trace adds what it saw opened.
MPL_KEEP = ("mpl-data/matplotlibrc", "mpl-data/fonts/ttf/DejaVuSans.ttf", "mpl-data/fonts/ttf/DejaVuSans-Bold.ttf",
            "mpl-data/fonts/ttf/DejaVuSans-Oblique.ttf", "mpl-data/fonts/ttf/DejaVuSans-BoldOblique.ttf",
            "mpl-data/fonts/ttf/DejaVuSansMono.ttf", "mpl-data/fonts/ttf/LastResortHE-Regular.ttf",
            "mpl-data/fonts/ttf/LICENSE_DEJAVU")

# What the check imports, run in the venv's Python with the bundle's pycaffe first on sys.path.
TRACE = r"""
import json, os, sys, tempfile
opened = set()
def _hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.add(args[0])
sys.addaudithook(_hook)
os.environ["GLOG_minloglevel"] = "2"
import numpy as np
import caffe, caffe.coord_map
import fcnseg.cli, fcnseg.train, fcnseg.infer, fcnseg.data, fcnseg.dataset, fcnseg.evaluate, fcnseg.metrics
import fcnseg.images, fcnseg.runs, fcnseg.solver, fcnseg.nets, fcnseg.config, fcnseg.caffe_env, fcnseg.weights
import gpu_check, bench
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tifffile, PIL.Image, lmdb, tqdm, yaml, click
import tensorboardX, threadpoolctl  # train writes TensorBoard events (imported lazily); fcnseg info names the BLAS
with tempfile.TemporaryDirectory() as tmp:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0], "o-", label="a"); ax.set_xlabel("x"); ax.grid(alpha=0.3); ax.legend()
    fig.savefig(os.path.join(tmp, "f.png"), dpi=50)
    img = (np.arange(64, dtype=np.uint16).reshape(8, 8))
    tifffile.imwrite(os.path.join(tmp, "a.tif"), img); tifffile.imread(os.path.join(tmp, "a.tif"))
    PIL.Image.fromarray(img.astype(np.uint8)).save(os.path.join(tmp, "a.png"))
    np.asarray(PIL.Image.open(os.path.join(tmp, "a.png")))
    env = lmdb.open(os.path.join(tmp, "db"), map_size=1 << 20); env.close()
files = set()
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f:
        files.add(os.path.realpath(f))
for line in open("/proc/self/maps"):
    p = line.split()[-1]
    if p.startswith("/"):
        files.add(os.path.realpath(p))
data = sorted({os.path.realpath(f) for f in opened if os.path.isfile(f) and not f.endswith(".pyc")} - files)
print(json.dumps({"modules": sorted(files), "opened": data}))
"""


def log(msg: str) -> None:
    print(f"[gpu_bundle] {msg}", file=sys.stderr, flush=True)


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def ldd(path: Path, env: dict | None = None) -> list[tuple[str, str | None]]:
    """(needed name, resolved path or None) for every library `ldd` lists for `path`."""
    proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env)
    out = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))$", line)
        if m:
            out.append((m.group(1), m.group(3)))
            continue
        m = re.match(r"^(\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            out.append((os.path.basename(m.group(1)), m.group(1)))
    return out


def caffe_folder(py: str, variant: str) -> Path:
    """The pycaffe folder of `variant` from scripts/install_caffe.sh (cached build, or built now)."""
    env = dict(os.environ, FCNSEG_CAFFE=variant)
    if variant == "cuda":
        env.setdefault("FCNSEG_CUDA_ARCHS", DEFAULT_ARCHS)
        log(f"CUDA pycaffe for architectures {env['FCNSEG_CUDA_ARCHS']} (built once, cached; ~13-30 min)")
    proc = subprocess.run(["bash", str(ROOT / "scripts/install_caffe.sh"), py], stdout=subprocess.PIPE, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"gpu_bundle: scripts/install_caffe.sh ({variant}) failed (its messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def ensure_data(py: str, root: Path) -> tuple[Path, Path]:
    """The imported HeLa demo dataset (ROOT/hela) and its raw stack (ROOT/hela_raw), made as `make demo`
    makes them (data/ by default, so a `make demo` already done is reused)."""
    fcnseg = [py, "-m", "fcnseg.cli"]
    raw, ds = root / "hela_raw", root / "hela"
    if not (raw / "hela_images.tif").is_file():
        subprocess.run(fcnseg + ["data", "fetch-demo", "-o", str(raw)], check=True, cwd=ROOT)
    if not (ds / "dataset.yaml").is_file():
        subprocess.run(fcnseg + ["data", "import", "--images", str(raw / "hela_images.tif"), "--labels",
                                 str(raw / "hela_masks.tif"), "--binarize", "--tile", "256", "--val", "16-19",
                                 "-o", str(ds)], check=True, cwd=ROOT)
    return ds, raw / "hela_images.tif"


# Sources of compiled modules (fontTools ships 2 MB of bezierTools.c) are never read at run time.
SOURCE_SUFFIXES = (".pyc", ".c", ".cpp", ".h", ".hpp", ".pyx", ".pxd", ".pxi")


def copy_tree(src: Path, dst: Path, skip: set[str] = SKIP_DIRS) -> None:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in skip or n.endswith(SOURCE_SUFFIXES)],
                    symlinks=False, dirs_exist_ok=True)


def select_from(root: Path, traced: set[Path], dst: Path, skip_top: set[str] = frozenset()) -> list[str]:
    """Copy from `root` every top-level module that was traced: a file as is, a package with its top-level
    files and each first-level subpackage holding a traced file. Returns the top-level names copied."""
    root = root.resolve()
    tops: dict[str, set[str]] = {}
    for f in traced:
        try:
            rel = f.relative_to(root)
        except ValueError:
            continue
        if rel.parts[0] in skip_top or len(rel.parts) == 0:
            continue
        tops.setdefault(rel.parts[0], set())
        if len(rel.parts) > 2:
            tops[rel.parts[0]].add(rel.parts[1])
    for top, subs in sorted(tops.items()):
        src = root / top
        if src.is_file():
            shutil.copy2(src, dst / top)
            continue
        (dst / top).mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            # Extension modules at a package's top are taken only when loaded (PIL's _avif, _webp, _imagingtk
            # would bring 8 MB of codecs); a subpackage that was used is taken whole.
            if entry.is_file() and not entry.name.endswith(SOURCE_SUFFIXES) and (entry.suffix != ".so"
                                                                                  or entry in traced):
                shutil.copy2(entry, dst / top / entry.name)
            elif entry.is_dir() and entry.name in subs and entry.name not in SKIP_DIRS:
                copy_tree(entry, dst / top / entry.name)
    return sorted(tops)


def site_packages(py: str, site: Path, traced: set[Path], dst: Path) -> list[str]:
    """The venv's packages the check loaded (see select_from), their .libs folders and dist-info."""
    tops = select_from(site, traced, dst, skip_top={"__editable___fcnseg_0_1_0_finder.py", "_distutils_hack"})
    mpl = site / "matplotlib"
    if (dst / "matplotlib").is_dir():
        for rel in MPL_KEEP:
            (dst / "matplotlib" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(mpl / rel, dst / "matplotlib" / rel)
    # dist-info of each distribution that owns a copied top-level name (importlib.metadata versions).
    owners = json.loads(subprocess.run(
        [py, "-c", "import importlib.metadata as m, json; print(json.dumps(m.packages_distributions()))"],
        capture_output=True, text=True, check=True).stdout)
    dists = {d for t in tops for d in owners.get(t.removesuffix(".py"), [])}
    for info in site.glob("*.dist-info"):
        name = info.name.split("-")[0].lower().replace("_", "-")
        if any(name == d.lower().replace("_", "-") for d in dists):
            copy_tree(info, dst / info.name)
    return tops


def stdlib(base: Path, traced: set[Path], dst: Path) -> None:
    """Interpreter, libpython and the stdlib: every top-level module file, the subpackages the check loaded
    (plus encodings and importlib, which Python needs to start) and lib-dynload's extension modules."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lib = (base / "lib" / ver).resolve()
    (dst / "bin").mkdir(parents=True)
    (dst / "lib" / ver).mkdir(parents=True)
    shutil.copy2(base / "bin" / ver, dst / "bin" / ver)
    for so in (base / "lib").glob(f"lib{ver}.so.*"):  # the soname the interpreter needs, not the dev link
        shutil.copy2(so, dst / "lib" / so.name, follow_symlinks=True)
    subs = {f.relative_to(lib).parts[0] for f in traced if f.is_relative_to(lib) and len(f.relative_to(lib).parts) > 1}
    subs |= {"encodings", "importlib", "json", "collections", "logging", "email", "concurrent", "xml", "urllib"}
    for entry in lib.iterdir():
        if entry.is_file() and entry.suffix == ".py":
            shutil.copy2(entry, dst / "lib" / ver / entry.name)
        elif entry.is_dir() and entry.name in subs and entry.name not in STDLIB_SKIP and entry.name != "lib-dynload":
            copy_tree(entry, dst / "lib" / ver / entry.name)
    dyn = dst / "lib" / ver / "lib-dynload"
    dyn.mkdir()
    for so in (lib / "lib-dynload").glob("*.so"):
        if re.match(r"^(_test|_xx|xx|_tkinter|_ctypes_test|_curses|_dbm|_gdbm|readline|nis|_sqlite3)", so.name):
            continue
        shutil.copy2(so, dyn / so.name)


def shared_libs(bundle: Path, dst: Path) -> dict[str, str]:
    """Copy every library that ldd resolves for an ELF of the bundle, outside the bundle, except glibc's and
    CUDA's, until nothing new appears. Returns {needed name: source path}."""
    copied: dict[str, str] = {}
    env = dict(os.environ, LD_LIBRARY_PATH=f"{dst}:{bundle}/python/lib")
    while True:
        new = {}
        elves = sorted(p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p))
        # A wheel's vendored library (numpy.libs/...) may need a sibling that only its loader's RUNPATH
        # finds: a name present in the bundle counts as resolved there.
        names = {p.name for p in elves}
        for path in elves:
            for name, where in ldd(path, env):
                if GLIBC.match(name) or CUDA.match(name) or name in copied or name in new:
                    continue
                if where is None and name in names:
                    continue
                if where is None:
                    sys.exit(f"gpu_bundle: {path} needs {name}, which ldd cannot find on this machine")
                if not Path(where).resolve().is_relative_to(bundle.resolve()):
                    new[name] = where
        if not new:
            return copied
        for name, where in new.items():
            shutil.copy2(where, dst / name, follow_symlinks=True)
            copied[name] = str(Path(where).resolve())


def prune_vendored(bundle: Path) -> list[str]:
    """Remove the files of wheels' vendored-library folders (numpy.libs, pillow.libs, ...) that no ELF of the
    bundle outside those folders needs (after select_from left some extension modules out)."""
    libs_dirs = [d for d in (bundle / "site").glob("*.libs") if d.is_dir()]
    users = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)
             and not any(p.is_relative_to(d) for d in libs_dirs)]
    needed = {name for p in users for name, _ in ldd(p)}
    removed = []
    for d in libs_dirs:
        for f in d.iterdir():
            if f.name not in needed:
                f.unlink()
                removed.append(f"{d.name}/{f.name}")
    return removed


def strip(paths: list[Path]) -> None:
    """Drop symbol tables and debug sections (libpython arrives with 20 MB of them); the code is unchanged."""
    subprocess.run(["strip", "--strip-unneeded", *map(str, paths)], check=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(args) -> int:
    t0 = time.time()
    py = args.python
    caffe_py = caffe_folder(py, args.caffe)
    ds, stack = ensure_data(py, Path(args.data_dir).resolve())
    base = Path(subprocess.run([py, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True,
                               check=True).stdout.strip())
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    log(f"tracing what the check imports (pycaffe {caffe_py})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(caffe_py), str(ROOT), str(ROOT / "scripts")]),
               GLOG_minloglevel="2", MPLBACKEND="Agg")
    proc = subprocess.run([py, "-c", TRACE], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"gpu_bundle: the import trace failed:\n{proc.stderr[-2000:]}")
    trace = json.loads(proc.stdout.strip().splitlines()[-1])
    traced = {Path(p) for p in trace["modules"]}
    opened = {Path(p) for p in trace["opened"]}
    loaded_caffe = [p for p in traced if p.name.startswith("_caffe") and p.suffix == ".so"]
    if not loaded_caffe or not loaded_caffe[0].is_relative_to(caffe_py.resolve()):
        sys.exit(f"gpu_bundle: the trace imported another pycaffe ({loaded_caffe}), not {caffe_py}")

    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix=".gpu-bundle-", dir=out.parent))
    try:
        stage = work / PAYLOAD
        stage.mkdir()
        log(f"Python {sys.version_info.major}.{sys.version_info.minor} from {base}")
        stdlib(base, traced, stage / "python")
        log(f"packages from {site}")
        tops = site_packages(py, site, traced, stage / "site")
        # Data files the packages read while traced (matplotlib's fonts, rc file, ...), one by one.
        for f in opened:
            if f.is_relative_to(site.resolve()) and (f.relative_to(site.resolve()).parts[0] in tops):
                dest = stage / "site" / f.relative_to(site.resolve())
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest)
        copy_tree(caffe_py, stage / "caffe", skip=SKIP_DIRS | {"imagenet"})  # imagenet/: an example's mean
        for sub in ("fcnseg", "configs"):
            files = subprocess.run(["git", "ls-files", sub], capture_output=True, text=True, cwd=ROOT,
                                   check=True).stdout.split()
            for f in files:
                (stage / "src" / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, stage / "src" / f)
        (stage / "src/scripts").mkdir(parents=True)
        for s in SCRIPTS:
            shutil.copy2(ROOT / "scripts" / s, stage / "src/scripts" / s)
        log(f"data: {ds} and frame 17 of {stack}")
        copy_tree(ds, stage / "data/hela", skip={"preview.png", "lock.mdb"})
        subprocess.run([py, str(ROOT / "scripts/demo_frame.py"), str(stack), "17", str(stage / "data/frame17.tif")],
                       check=True, capture_output=True)
        for r in prune_vendored(stage):
            log(f"left out {r} (nothing loads it)")
        log("shared libraries (ldd closure, without glibc and CUDA)")
        (stage / "lib").mkdir()
        libs = shared_libs(stage, stage / "lib")
        # Debian's libraries, the interpreter and its extension modules (pyenv builds them with -g: 12 MB
        # of lib-dynload become 5), pycaffe, and the wheels' binaries (numpy's and scipy's OpenBLAS keep their
        # symbol tables: 23 MB stripped out of 105 MB; the isolated rehearsal in tests/test_gpu_bundle.py runs
        # the stripped copies). Since libdnnl (oneDNN, 40 MB) joined the ldd closure this is what keeps the
        # bundle under 60 MiB, with xz -9.
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        strip([*(stage / "lib").iterdir(), *(stage / "python/lib").glob("libpython*"), stage / "python/bin" / ver,
               *(stage / "python/lib" / ver / "lib-dynload").glob("*.so"), *(stage / "caffe").rglob("*.so"),
               *(p for p in (stage / "site").rglob("*.so*") if p.is_file() and not p.is_symlink()
                 and not p.parent.name.endswith(".libs"))])
        recipe = (caffe_py.parent / "RECIPE").read_text() if (caffe_py.parent / "RECIPE").is_file() else ""
        manifest = {
            "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
            "caffe": {"variant": args.caffe, "folder": str(caffe_py), "recipe": recipe.splitlines()},
            "python": sys.version.split()[0], "packages": tops, "libraries": libs,
            "cuda_needed": CUDA_NEEDED if args.caffe == "cuda" else [],
            "unpacked_bytes": du(stage),
        }
        (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        log(f"compressing {du(stage) / 2**20:.1f} MiB with xz -{args.xz_level}")
        dest = work / "out"
        dest.mkdir()
        subprocess.run(["tar", "-C", str(work), "--owner=0", "--group=0", "--sort=name", "-I",
                        f"xz -{args.xz_level} -T{args.jobs}", "-cf", str(dest / ARCHIVE), PAYLOAD], check=True)
        shutil.copy2(ROOT / "scripts/gpu_bundle_run.sh", dest / "run.sh")
        (dest / "run.sh").chmod(0o755)
        manifest["archive_sha256"] = sha256(dest / ARCHIVE)
        (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        size = du(dest)
        if out.exists():
            shutil.rmtree(out)
        dest.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = size / 2**20
    print(f"gpu bundle: {out} is {mib:.1f} MiB (limit {args.max_mib} MiB; {manifest['unpacked_bytes'] / 2**20:.0f} "
          f"MiB unpacked; pycaffe {args.caffe}; made in {time.time() - t0:.0f} s)")
    if mib > args.max_mib:
        print(f"gpu bundle: {mib:.1f} MiB is over the limit of {args.max_mib} MiB", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"), help="the bundle folder (replaced)")
    ap.add_argument("--max-mib", type=float, default=60.0, help="fail when the folder is bigger")
    ap.add_argument("--caffe", choices=["cuda", "cpu"], default="cuda",
                    help="pycaffe variant (cpu: the same bundle around the CPU build, for tests without CUDA)")
    ap.add_argument("--data-dir", default=str(ROOT / "data"), help="where hela_raw/ and hela/ are (or are made)")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"), help="the venv's interpreter")
    ap.add_argument("--xz-level", default="9", help="xz preset (9: ~5 %% smaller than 6, which multithreads better)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("FCNSEG_JOBS", "0")), help="xz threads (0: all)")
    return build(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
