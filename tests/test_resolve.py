"""fcnseg/resolve.py: the config resolved once: num_classes from the dataset, the input mean from the weights or
the dataset, and where it came from."""
import pytest

from fcnseg import caffemodel
from fcnseg.config import validate_config



def test_auto_mean_comes_from_the_converted_weights(tmp_path, models, tiny_dataset):
    from fcnseg.dataset import read_dataset
    from fcnseg.resolve import input_mean_choice, resolve
    m = caffemodel.recorded_gray_mean(models["loadable_1ch"])
    base = {"model": {"num_classes": 2}, "data": {"root": str(tiny_dataset)},
            "init": {"weights": str(models["loadable_1ch"])}}
    assert resolve(validate_config(base)).config.data.mean == pytest.approx(m)
    value, source = input_mean_choice(validate_config(base), read_dataset(tiny_dataset))
    assert value == pytest.approx(m) and "recorded in" in source
    numeric = validate_config({**base, "data": {"root": str(tiny_dataset), "mean": 100.0}})
    assert resolve(numeric).config.data.mean == 100.0
    forced = validate_config({**base, "data": {"root": str(tiny_dataset), "mean": "dataset"}})
    assert resolve(forced).config.data.mean == 80.0  # the tiny dataset's stored mean
    # Without weights that say, auto falls back to the dataset, and says why.
    three = validate_config({**base, "init": {"weights": str(models["loadable"])}})
    value, source = input_mean_choice(three, read_dataset(tiny_dataset))
    assert value == 80.0 and "records no input mean" in source
    missing = validate_config({**base, "init": {"weights": str(tmp_path / "later.caffemodel")}})
    assert "is not there yet" in input_mean_choice(missing, read_dataset(tiny_dataset))[1]


@pytest.mark.parametrize("train_split,extra,weight,why", [
    ({"class_pixels": [880, 120]}, {}, 0.0, "class 1 12 % of the train pixels, none under 2 %"),
    ({"class_pixels": [990, 10]}, {}, 1.0, "class 1 1 % of the train pixels, under 2 %"),
    ({"class_pixels": [967, 33]}, {"train_tiles": {"sparse_classes": ["bacteria"]}}, 1.0,
     "bacteria under 2 % of the source pixels, as the import found"),
    ({}, {}, 0.0, "the dataset records no class pixels"),
    ({"class_pixels": [880, 80, 40]}, {"instances": {"interior": 1, "boundary": 2}}, 1.0,
     "objects (data imported with --instances): the interior and boundary pixels weighted up, as the U-Net "
     "paper weights its separation borders"),
])
def test_auto_foreground_weight_follows_the_class_fractions(tmp_path, tiny_dataset, train_split, extra, weight, why):
    import yaml

    from fcnseg.resolve import resolve
    meta = yaml.safe_load((tiny_dataset / "dataset.yaml").read_text())
    meta["splits"]["train"].update(train_split)
    meta.update(extra)
    (tiny_dataset / "dataset.yaml").write_text(yaml.safe_dump(meta))
    resolved = resolve(validate_config({"data": {"root": str(tiny_dataset)}}))
    assert resolved.config.loss.foreground_weight == weight
    assert resolved.describe_loss() == f"loss.foreground_weight {weight:g} (auto: {why})"
    given = resolve(validate_config({"data": {"root": str(tiny_dataset)}, "loss": {"foreground_weight": 0.5}}))
    assert given.config.loss.foreground_weight == 0.5 and given.describe_loss() is None


def test_foreground_weight_must_be_auto_or_a_non_negative_number():
    from fcnseg.errors import ConfigError
    assert validate_config({}).loss.foreground_weight == "auto"
    with pytest.raises(ConfigError, match=r"loss.foreground_weight: must be 'auto' or a number >= 0 \(got -1"):
        validate_config({"loss": {"foreground_weight": -1}})
    with pytest.raises(ConfigError, match="loss.foreground_weight"):
        validate_config({"loss": {"foreground_weight": "often"}})
