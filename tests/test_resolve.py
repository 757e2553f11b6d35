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
