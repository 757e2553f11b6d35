"""fcnseg.config: validation, suggestions, overrides. No Caffe needed."""
import pytest
import yaml

from fcnseg.config import Config, config_differences, load_config, validate_config
from fcnseg.errors import ConfigError


def test_defaults_are_the_reference():
    c = Config()
    assert (c.model.arch, c.model.stages, c.model.pad, c.model.input_channels) == ("fcn32s", 5, 100, 1)
    assert c.model.fc_channels == 4096 and c.model.dropout == 0.5
    assert c.data.ignore_label == 255 and c.loss.normalize is False
    assert c.model.net_stride == 32


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as e:
        validate_config({"model": {"stagez": 3}}, "c.yaml")
    assert str(e.value) == "c.yaml: unknown key 'model.stagez'; did you mean 'model.stages'?"


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'solvr'; did you mean 'solver'\?"):
        validate_config({"solvr": {}}, "c.yaml")


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as e:
        validate_config({"model": {"stages": "five"}}, "c.yaml")
    assert "model.stages must be an integer" in str(e.value) and "'five'" in str(e.value)


def test_fcn8s_with_two_stages_is_refused():
    with pytest.raises(ConfigError, match=r"fcn8s .* needs model.stages >= 3 \(got 2\)"):
        validate_config({"model": {"arch": "fcn8s", "stages": 2}})


def test_zero_classes_refused():
    with pytest.raises(ConfigError, match="model.num_classes"):
        validate_config({"model": {"num_classes": 0}})


def test_yaml11_exponent_without_dot_is_a_number():
    c = validate_config({"solver": {"base_lr": "1e-4"}})
    assert c.solver.base_lr == pytest.approx(1e-4)


def test_set_overrides_parse_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"num_classes": 3}}))
    c = load_config(p, ["solver.base_lr=1e-4", "model.pad=minimal", "data.batch_size=4", "loss.normalize=true"])
    assert c.solver.base_lr == pytest.approx(1e-4)
    assert c.model.pad == "minimal" and c.data.batch_size == 4 and c.loss.normalize is True
    assert c.model.num_classes == 3


def test_set_unknown_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'solver.base_lr'"):
        load_config(None, ["solver.base_rl=1"])


def test_set_without_equals_is_refused():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["solver.base_lr"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_lr_policy_parameters_required():
    with pytest.raises(ConfigError, match="needs solver.stepsize"):
        validate_config({"solver": {"lr_policy": "step", "gamma": 0.1}})


def test_pad_accepts_minimal_or_non_negative_int():
    assert validate_config({"model": {"pad": "minimal"}}).model.pad == "minimal"
    with pytest.raises(ConfigError, match="model.pad"):
        validate_config({"model": {"pad": -1}})
    with pytest.raises(ConfigError, match="model.pad"):
        validate_config({"model": {"pad": "huge"}})


def test_differences_list_changed_leaves():
    a, b = Config(), validate_config({"solver": {"base_lr": 1e-4}, "model": {"stages": 3}})
    assert config_differences(a, b) == ["model.stages: 5 -> 3", "solver.base_lr: 1e-10 -> 0.0001"]


def test_shipped_configs_validate_and_point_into_the_repo():
    """Every shipped config loads, and its data.root / init.weights land in the repo's data/, weights/
    and runs/ folders (where `make demo` and the README's commands put them), from any working folder."""
    from pathlib import Path
    repo = Path(__file__).parents[1]
    paths = sorted((repo / "configs").glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        config = load_config(path)
        for value in (config.data.root, config.init.weights):
            if value is not None:
                inside = Path(value).relative_to(repo)
                assert inside.parts[0] in ("data", "weights", "runs"), f"{path.name}: {value}"


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "c.yaml").write_text("data: {root: ../data/hela}\ninit: {weights: w/vgg.caffemodel}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(folder / "c.yaml")
    assert config.data.root == str(tmp_path / "data" / "hela")
    assert config.init.weights == str(folder / "w" / "vgg.caffemodel")
    # --set is typed on a command line: relative to the current folder
    config = load_config("../configs/c.yaml", ["data.root=mine", "init.weights=/abs/w.caffemodel"])
    assert config.data.root == str(elsewhere / "mine") and config.init.weights == "/abs/w.caffemodel"
    assert load_config(folder / "c.yaml", ["data.root=null"]).data.root is None
