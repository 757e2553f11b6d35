"""The CLI skin: --version, --help on every command, make-proto outputs and one-line errors (exit 2)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fcnseg.cli import cli, main

REPO = Path(__file__).resolve().parents[1]


def fcnseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_version():
    r = fcnseg("--version")
    assert r.returncode == 0 and "fcnseg, version" in r.stdout


def test_help_on_every_command():
    def walk(group, path):
        for name, cmd in getattr(group, "commands", {}).items():
            yield path + [name], cmd
            yield from walk(cmd, path + [name])
    for path, _ in walk(cli, []):
        assert main(path + ["--help"]) == 0, path


def test_make_proto_writes_three_prototxts_and_config(tmp_path, capsys):
    rc = main(["make-proto", str(REPO / "configs/seed_reduced_1ch.yaml"), "-o", str(tmp_path / "net"),
               "--set", "data.root=null", "--set", "data.mean=0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "upscore 8x" in out and "stride 8" in out
    names = sorted(p.name for p in (tmp_path / "net").iterdir())
    assert names == ["config.yaml", "deploy.prototxt", "solver.prototxt", "train_val.prototxt"]
    resolved = yaml.safe_load((tmp_path / "net/config.yaml").read_text())
    assert resolved["model"]["stages"] == 3 and resolved["data"]["root"] is None
    tv = (tmp_path / "net/train_val.prototxt").read_text()
    assert 'source: "DATA_ROOT/train_images_lmdb"' in tv and "kernel_size: 16" in tv


@pytest.mark.parametrize("content,sets,expected", [
    ({"model": {"num_classes": 2, "stagez": 3}}, [], "unknown key 'model.stagez'; did you mean 'model.stages'?"),
    ({"model": {"num_classes": 2, "stages": "five"}}, [], "model.stages must be an integer"),
    ({"model": {"num_classes": 2, "arch": "fcn8s", "stages": 2}}, [], "needs model.stages >= 3 (got 2)"),
    ({"model": {"num_classes": 0}}, [], "model.num_classes"),
    ({"model": {}}, [], "model.num_classes is not set"),
    ({"model": {"num_classes": 2}}, ["solver.momentum=2"], "solver.momentum"),
])
def test_bad_configs_exit_2_with_one_line(tmp_path, content, sets, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(content))
    args = ["make-proto", cfg, "-o", tmp_path / "out"]
    for s in sets:
        args += ["--set", s]
    r = fcnseg(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
