"""The package's shape, read from its source with `ast` (no import): imports run one way, from the stages down to
the building blocks, with no circle; no module is over 600 lines; an import inside a function is of a heavy or
optional dependency only, and says why."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "fcnseg"
MAX_LINES = 600

# Each module's layer: a module imports only from lower layers (modules of one subpackage may import each other,
# without a circle). Building blocks first, then the stages, then the command line.
LAYERS = [
    {"errors", "files", "geometry", "metrics", "object_metrics", "vgg16", "recipes", "conventions"},  # facts
    {"config", "caffe_env", "images", "diskspace", "integrity"},
    {"caffemodel", "dataset", "nets", "volumes", "cpu_kernels"},  # cpu_kernels: which CPU kernels Caffe runs
    {"inputs", "solver", "weight_formats", "verify"},
    {"resolve", "onnxmodel"},
    {"runs"},
    # stages, and the net on one image; tensorboard_events writes train's events as TensorBoard files
    {"data", "weights", "doctor", "evaluate", "export", "predict", "tensorboard_events"},
    {"objects"},  # probabilities into objects, between the net on one image and the commands that write them
    # train runs doctor and weights; volume_infer labels volumes with predict; evaluate_objects scores predict's
    # objects; bioimageio_package packs export's graph as a bioimage.io model
    {"train", "volume_infer", "evaluate_objects", "bioimageio_package"},
    {"infer"},  # files in, files out: images (predict) and volumes (volume_infer)
    {"distribute"},  # infer on a Dask cluster
    {"cli", "napari_plugin"},  # the front ends: the command line, and napari's widgets (fcnseg[napari])
]
# What a function may import lazily: heavy or optional dependencies only (pycaffe itself is loaded by caffe_env).
LAZY_ALLOWED = {"caffe", "torch", "onnx", "onnxruntime", "dask", "distributed", "matplotlib", "h5py", "pydicom",
                "nibabel", "zarr", "tensorboardX", "scipy", "skimage"}


def modules() -> dict[str, Path]:
    """{dotted name below fcnseg ('data.importer', 'cli'): path} for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, ast.AST, bool]]:
    """(imported fcnseg module, node, inside a function) for each import in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                target = ".".join(base + [alias.name])
                target = target if target in known else ".".join(base)
                if target:
                    out.append((target, node, id(node) not in top_level))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for full in names:
                if full.startswith("fcnseg."):
                    out.append((full[len("fcnseg."):], node, id(node) not in top_level))
    return [(t, n, inner) for t, n, inner in out if t != name]


def layer(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer():
    assert {name.split(".")[0] for name in modules()} == set().union(*LAYERS)


def test_imports_run_downhill_without_circles():
    mods = modules()
    edges = {name: {t for t, _, _ in imports(name, path, set(mods))} for name, path in mods.items()}
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, targets in edges.items() for b in targets
             if a.split(".")[0] != b.split(".")[0] and layer(b) >= layer(a)]
    assert not wrong, "\n".join(wrong)
    # inside a subpackage: no circle either
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import circle: " + " -> ".join(trail + [node])
        state[node] = "open"
        for nxt in edges[node]:
            visit(nxt, trail + [node])
        state[node] = "done"

    for name in mods:
        visit(name, [])


def test_no_module_is_over_600_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_imports_inside_functions_are_heavy_or_optional_and_say_why():
    found = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level:
                module = node.names[0].name if isinstance(node, ast.Import) else "." * node.level + (node.module or "")
                why = re.search(r"# noqa: PLC0415 - \S", lines[node.lineno - 1])
                if module.split(".")[0] not in LAZY_ALLOWED or not why:
                    found.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from .files import write_atomic\n", ["files"]),
    ("def f():\n    from ..caffemodel import shape_text\n", ["caffemodel"]),
    ("from . import files, runs\n", ["files", "runs"]),
])
def test_the_import_reader_resolves_relative_imports(tmp_path, source, expected):
    """The walk above must see what it checks: relative imports at any depth, inside functions too."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {"files", "runs", "caffemodel", "doctor.facts"}
    name = "doctor.facts" if source.startswith("def") else "infer"
    assert [t for t, _, _ in imports(name, path, known)] == expected
