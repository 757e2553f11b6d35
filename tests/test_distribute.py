"""fcnseg.distribute: `fcnseg infer` on a real local Dask cluster of 2 worker processes (tiny run, random
weights). Outputs are compared byte for byte with single-process `infer`."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import REPO, make_objects_run, make_run, raw_image
from fcnseg.cli import main
from fcnseg.distribute import MANIFEST_FILE, SINGLE_THREAD_ENV, connect, infer_on_cluster
from fcnseg.errors import ConfigError, RunError
from fcnseg.predict import InferOptions

pytest.importorskip("caffe")
distributed = pytest.importorskip("distributed")

OPTIONS = InferOptions(overlay=True, probs=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("distribute"))


@pytest.fixture(scope="module")
def client():
    with connect(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of three single images of different sizes and a stack of five frames."""
    folder = tmp_path_factory.mktemp("inputs")
    for i, shape in enumerate([(97, 131), (40, 50), (64, 33)]):
        tifffile.imwrite(folder / f"img{i}.tif", raw_image(*shape, seed=i))
    stack = np.stack([raw_image(45, 60, seed=10 + i) for i in range(5)])
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    return folder


@pytest.fixture(scope="module")
def reference(run, inputs, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of single-process `fcnseg infer` with the workers' thread settings: {file name: bytes}.
    (Its own process: BLAS reads its thread count once, and a different count rounds differently.)"""
    out = tmp_path_factory.mktemp("single")
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "fcnseg.cli", "infer", "--run", str(run), str(inputs),
                           "-o", str(out), "--overlay", "--probs"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "labelled 8 image(s)" in done.stdout
    return contents(out)


def contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != MANIFEST_FILE}


def test_folder_and_stack_are_byte_identical_to_single_process(run, client, inputs, reference, tmp_path):
    result = infer_on_cluster(client, run, [inputs], tmp_path, OPTIONS, report=lambda line: None)
    assert (result.exit_code, result.images, result.skipped, result.failures) == (0, 8, 0, [])
    assert sorted(reference) == sorted(f"{s}{k}" for s in ["img0", "img1", "img2"] + [f"stack_{i:03d}" for i in range(5)]
                                       for k in (".png", "_overlay.png", "_probs.npy"))
    assert contents(tmp_path) == reference
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_rerun_recomputes_only_deleted_outputs(run, client, inputs, reference, tmp_path):
    infer_on_cluster(client, run, [inputs], tmp_path, OPTIONS, report=lambda line: None)
    deleted = ["img1", "stack_000", "stack_002", "stack_004"]
    for stem in deleted:
        (tmp_path / f"{stem}.png").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()
            if p.name != MANIFEST_FILE and not p.name.startswith(tuple(deleted))}
    result = infer_on_cluster(client, run, [inputs], tmp_path, OPTIONS, report=lambda line: None)
    assert (result.exit_code, result.images, result.skipped) == (0, len(deleted), 8 - len(deleted))
    assert {p.name for p in result.written} == {f"{s}{k}" for s in deleted
                                               for k in (".png", "_overlay.png", "_probs.npy")}
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in kept} == kept  # untouched
    assert contents(tmp_path) == reference


def test_other_options_or_changed_input_are_labelled_again(run, client, inputs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", raw_image(30, 40, seed=1))
    tifffile.imwrite(folder / "b.tif", raw_image(30, 40, seed=2))
    out = tmp_path / "out"
    assert infer_on_cluster(client, run, [folder], out, InferOptions(), report=print).images == 2
    with open(out / MANIFEST_FILE, "a") as f:
        f.write('{"done": "')  # a client killed mid-line
    assert infer_on_cluster(client, run, [folder], out, InferOptions(), report=print).skipped == 2
    (out / "a.png").unlink()
    assert infer_on_cluster(client, run, [folder], out, InferOptions(), report=print).images == 1
    assert infer_on_cluster(client, run, [folder], out, InferOptions(), report=print).skipped == 2
    assert infer_on_cluster(client, run, [folder], out, InferOptions(probs=True), report=print).images == 2
    tifffile.imwrite(folder / "b.tif", raw_image(30, 40, seed=3))  # same size, new mtime
    result = infer_on_cluster(client, run, [folder], out, InferOptions(probs=True), report=print)
    assert (result.images, result.skipped) == (1, 1)
    assert [p.name for p in result.written] == ["b.png", "b_probs.npy"]


class KillOnce(distributed.WorkerPlugin):
    """Test hook: the first worker to start a task `task` (label_frame, label_file) kills its own
    process (SIGKILL), as an out-of-memory kill or a lost node would; once (the marker file says it
    happened), or every time with `always`."""

    def __init__(self, marker: str, task: str = "label_frame", always: bool = False):
        self.marker, self.task, self.always = marker, task, always

    def transition(self, key, start, finish, **kwargs):
        name = key if isinstance(key, str) else str(key)
        if finish == "executing" and name.startswith(self.task) and (self.always or not os.path.exists(self.marker)):
            with open(self.marker, "a") as f:
                f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow  # a worker process restarts (~5-10 s)
def test_a_killed_worker_is_retried_and_outputs_are_complete(run, inputs, reference, tmp_path):
    marker = tmp_path / "killed"
    with connect(workers=2) as client:
        pids = set(client.run(os.getpid).values())
        client.register_plugin(KillOnce(str(marker)))
        result = infer_on_cluster(client, run, [inputs], tmp_path / "out", OPTIONS, report=print)
    assert int(marker.read_text()) in pids  # one of the workers really died
    assert (result.exit_code, result.images, result.failures) == (0, 8, [])
    assert contents(tmp_path / "out") == reference


def test_cli_with_workers_lists_bad_inputs_and_exits_1(run, inputs, reference, tmp_path, capsys):
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    code = main(["infer", "--run", run, inputs, tmp_path / "broken.tif", "-o", out, "--overlay", "--probs",
                 "--workers", "2"])
    assert code == 1
    captured = capsys.readouterr()
    assert "broken.tif: cannot read" in captured.err and "1 input(s) failed" in captured.out
    assert "labelled 8 image(s)" in captured.out
    assert contents(out) == reference


def test_run_level_errors_come_before_any_image(client, inputs, tmp_path):
    run = make_run(tmp_path, weights=False)
    with pytest.raises(RunError, match="no weights"):
        infer_on_cluster(client, run, [inputs], tmp_path / "out", report=print)
    assert not (tmp_path / "out").exists()


def test_cli_run_level_error_is_one_line_without_a_worker_traceback(inputs, tmp_path):
    """The workers' own stderr (where Dask logs a failed task's traceback) is the command's stderr."""
    run = make_run(tmp_path, weights=False)
    done = subprocess.run([sys.executable, "-m", "fcnseg.cli", "infer", "--run", str(run), str(inputs),
                           "-o", str(tmp_path / "out"), "--workers", "2"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Compute Failed" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no weights" in errors[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_workers_and_scheduler_exclude_each_other(run, inputs, tmp_path, capsys):
    assert main(["infer", "--run", run, inputs, "-o", tmp_path, "--workers", "2", "--scheduler", "x"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--workers or --scheduler|either"):
        with connect():
            pass


# ---- large images, tile by tile ----------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_large_image_streams_tile_by_tile_with_identical_outputs(run, tmp_path, suffix):
    from fcnseg import distribute
    from fcnseg.infer import label_and_save, read_frames
    from fcnseg.predict import load_predictor

    raw = raw_image(203, 341, seed=5)
    path = tmp_path / f"big{suffix}"
    tifffile.imwrite(path, raw) if suffix == ".tif" else np.save(path, raw)
    assert isinstance(distribute.open_lazily(path), np.memmap)
    options = InferOptions(overlay=True, probs=True, tile=64)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    whole.mkdir()
    streamed.mkdir()
    predictor = load_predictor(run)
    expected = label_and_save(predictor, read_frames(path, False)[0][2], str(path), whole, "big", options)
    distribute._STACK.clear()
    task = distribute.label_file(str(path), str(run), options, str(streamed))
    assert task.failure is None and task.outcome.tiled
    assert not distribute._STACK  # never read whole
    assert [p.name for p in task.outcome.written] == [p.name for p in expected.written]
    assert contents(streamed) == contents(whole)


def test_compressed_or_stacked_tiffs_are_read_whole(tmp_path):
    from fcnseg.distribute import open_lazily

    tifffile.imwrite(tmp_path / "zip.tif", raw_image(50, 60), compression="zlib")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([raw_image(50, 60)] * 2), photometric="minisblack")
    np.save(tmp_path / "float.npy", raw_image(50, 60).astype(np.float32))
    assert [open_lazily(tmp_path / n) for n in ("zip.tif", "stack.tif", "float.npy")] == [None, None, None]


def test_scheduler_joins_a_running_cluster(run, inputs, reference, tmp_path, capsys):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                                  env=dict(SINGLE_THREAD_ENV)) as cluster:
        code = main(["infer", "--run", run, inputs, "-o", tmp_path, "--overlay", "--probs",
                     "--scheduler", cluster.scheduler_address])
    assert code == 0 and "labelled 8 image(s)" in capsys.readouterr().out
    assert contents(tmp_path) == reference


def test_missing_scheduler_file_exits_2(run, inputs, tmp_path, capsys):
    assert main(["infer", "--run", run, inputs, "-o", tmp_path, "--scheduler", tmp_path / "sched.json"]) == 2
    assert "sched.json: scheduler file not found" in capsys.readouterr().err


@pytest.mark.slow  # four worker restarts (~20 s)
def test_an_input_whose_workers_keep_dying_is_listed_as_failed(run, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "deadly.tif", raw_image(30, 40))
    marker = tmp_path / "killed"
    with connect(workers=1) as client:
        client.register_plugin(KillOnce(str(marker), task="label_file", always=True))
        result = infer_on_cluster(client, run, [tmp_path / "deadly.tif"], tmp_path / "out", report=print)
    assert len(marker.read_text().split()) == 4  # WORKER_DEATHS_ALLOWED + 1
    assert result.exit_code == 2
    [message] = result.failures
    assert message.startswith(f"{tmp_path / 'deadly.tif'}: every worker that ran it died (Dask KilledWorker); ")
    assert message.endswith("out of memory? give workers more memory, or tile it smaller with --tile")


def test_onnx_model_on_the_cluster_is_byte_identical(run, client, inputs, tmp_path):
    from fcnseg.export import export_onnx

    model = tmp_path / "model.onnx"
    export_onnx(run, model)
    single = tmp_path / "single"
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "fcnseg.cli", "infer", "--onnx", str(model), str(inputs),
                           "-o", str(single), "--probs"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    options = InferOptions(probs=True, onnx=str(model))
    result = infer_on_cluster(client, None, [inputs], tmp_path / "cluster", options, report=print)
    assert (result.exit_code, result.images) == (0, 8)
    assert contents(tmp_path / "cluster") == contents(single)


# ---- objects (--instances) -----------------------------------------------------------------------------

def test_objects_on_two_workers_are_the_single_process_objects(client, tmp_path):
    """A large image labelled for objects on the cluster (streamed tile by tile, the objects split on the
    stitched map) and in one process: the same ids, table and outlines, byte for byte; and a stack's frames
    spread over both workers."""
    run = make_objects_run(tmp_path / "r")
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "big.tif", raw_image(203, 341, seed=5))
    tifffile.imwrite(inputs / "stack.tif", np.stack([raw_image(45, 60, seed=i) for i in range(3)]),
                     photometric="minisblack")
    options = InferOptions(instances=True, tile=64)
    single, cluster = tmp_path / "single", tmp_path / "cluster"
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": str(REPO)}  # the workers' BLAS threads (see reference)
    done = subprocess.run([sys.executable, "-m", "fcnseg.cli", "infer", "--run", str(run), str(inputs), "-o",
                           str(single), "--instances", "--tile", "64"], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = infer_on_cluster(client, run, [inputs], cluster, options)
    assert result.exit_code == 0 and result.images == 4
    expected = contents(single)
    assert {n for n in expected if n.endswith("_instances.tif")} == {
        "big_instances.tif", "stack_000_instances.tif", "stack_001_instances.tif", "stack_002_instances.tif"}
    assert tifffile.imread(single / "big_instances.tif").max() > 1
    assert contents(cluster) == expected
