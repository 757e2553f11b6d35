"""fcnseg.nets.unet and `model.norm: batch` (nets.parts): every arch x norm is aligned with its input by
construction, runs forward and backward, and keeps BatchNorm's statistics out of the solver's reach."""
import numpy as np
import pytest

from fcnseg.config import validate_config
from fcnseg.errors import ConfigError
from fcnseg.geometry import geometry_problems, phase_net
from fcnseg.nets import deploy_net, fixed_layers, train_val_net, upsampling_plan
from fcnseg.nets.unet import level_widths
from fcnseg.resolve import resolve

caffe = pytest.importorskip("caffe")

ARCHS = ("fcn32s", "fcn16s", "fcn8s", "unet")


def model(arch, norm="none", pad="minimal", stages=3, **extra):
    return {"arch": arch, "norm": norm, "pad": pad, "stages": stages, "base_channels": 4, "fc_channels": 8,
            "dropout": 0, **extra}


def load(net, tmp_path, phase="TEST"):
    path = tmp_path / "net.prototxt"
    path.write_text(str(net))
    return caffe.Net(str(path), getattr(caffe, phase))


def crops(net):
    return {layer.name: list(layer.crop_param.offset) for layer in net.layer if layer.type == "Crop"}


@pytest.mark.parametrize("pad", ["minimal", 100])
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_and_norm_is_aligned_and_learns(tmp_path, tiny_dataset, arch, norm, pad):
    config = resolve(validate_config({"model": model(arch, norm, pad), "data": {"root": str(tiny_dataset),
                                                                                "batch_size": 2}})).config
    train_val = train_val_net(config)
    for net in (phase_net(train_val, "TRAIN"), deploy_net(config, 32, 32)):
        assert geometry_problems(net) == []
    net = load(train_val, tmp_path, "TRAIN")
    loss = float(net.forward()["loss"])
    net.backward()
    assert np.isfinite(loss) and loss > 0
    assert net.blobs["score"].data.shape == net.blobs["label"].data.shape[:1] + (2, 32, 32)
    first = "enc1_1" if arch == "unet" else "conv1_1"
    last = "score" if arch == "unet" and pad == "minimal" else "score_conv" if arch == "unet" else "score_fr"
    assert np.abs(net.params[last][0].diff).sum() > 0
    # The classifier starts at zero, so one SGD-like step must reach the first layer through it.
    net.params[last][0].data[...] = -net.params[last][0].diff
    net.forward()
    net.backward()
    assert np.abs(net.params[first][0].diff).sum() > 0


@pytest.mark.parametrize("pad,offsets", [(92, {"enc2_2c": [4], "enc1_2c": [16], "score": [72]}),
                                         (100, {"enc2_2c": [4], "enc1_2c": [16], "score": [80]})])
def test_valid_unet_crops_the_skips_by_the_papers_offsets(tmp_path, pad, offsets):
    # Two levels of valid convolutions lose 20 pixels on each side (2 per convolution, scaled by the level's
    # stride: 2 + 4 + 8 + 4 + 2), so the pad less 20 is left to crop from the score.
    config = validate_config({"model": {**model("unet", pad=pad, stages=2), "num_classes": 2}})
    deploy = deploy_net(config, 45, 37)  # odd sizes: valid convolutions with a pad cover any size
    assert crops(deploy) == offsets
    net = load(deploy, tmp_path)
    net.forward()
    assert net.blobs["score"].data.shape == (1, 2, 45, 37)


def test_four_level_valid_unet_offsets_are_the_papers():
    config = validate_config({"model": {**model("unet", pad=92, stages=4), "num_classes": 2}})
    assert crops(deploy_net(config, 572, 572)) == {"enc4_2c": [4], "enc3_2c": [16], "enc2_2c": [40],
                                                   "enc1_2c": [88], "score": [0]}


def test_minimal_unet_needs_no_crop_and_keeps_every_size(tmp_path):
    config = validate_config({"model": {**model("unet", stages=3), "num_classes": 3}})
    deploy = deploy_net(config, 48, 72)
    assert crops(deploy) == {}
    net = load(deploy, tmp_path)
    net.forward()
    widths = level_widths(config.model)
    assert widths == [4, 8, 16, 32]
    assert net.blobs["enc4_2"].data.shape == (1, 32, 6, 9)
    assert net.blobs["concat1"].data.shape == (1, 8, 48, 72)  # skip (4) + up-convolution (4)
    assert net.blobs["score"].data.shape == (1, 3, 48, 72)
    assert upsampling_plan(config.model) == [("up3", 2), ("up2", 2), ("up1", 2)]
    assert fixed_layers(config.model) == set()


def test_batchnorm_statistics_never_learn_and_deploy_freezes_them():
    config = validate_config({"model": {**model("fcn8s", "batch", stages=3), "num_classes": 2},
                              "data": {"root": None}})
    for net, frozen in ((train_val_net(config), False), (deploy_net(config, 64, 64), True)):
        bns = [layer for layer in net.layer if layer.type == "BatchNorm"]
        assert [layer.name for layer in bns][:2] == ["conv1_1_bn", "conv1_2_bn"]
        assert len(bns) == 2 + 2 + 3 + 2  # every trunk convolution and fc6, fc7; never the score layers
        for layer in bns:
            assert [p.lr_mult for p in layer.param] == [0, 0, 0]
            assert layer.batch_norm_param.HasField("use_global_stats") == frozen
            assert layer.top == layer.bottom  # in place, followed by an in-place Scale with a bias
        scales = {layer.bottom[0] for layer in net.layer if layer.type == "Scale" and layer.scale_param.bias_term}
        assert {layer.top[0] for layer in bns} <= scales


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_test(tmp_path):
    config = validate_config({"model": {**model("unet", "batch", stages=1), "num_classes": 2}})
    net = load(deploy_net(config, 8, 8), tmp_path)
    net.params["enc1_1_bn"][0].data[...] = 3.0  # running sum of means
    net.params["enc1_1_bn"][1].data[...] = 8.0  # running sum of variances
    net.params["enc1_1_bn"][2].data[...] = 2.0  # their weight: mean 1.5, variance 4
    net.params["enc1_1"][0].data[...] = 0
    net.params["enc1_1"][1].data[...] = 5.5  # every output 5.5: normalised (5.5 - 1.5) / 2 = 2
    net.forward()
    np.testing.assert_allclose(net.blobs["enc1_1"].data, 2.0, rtol=1e-4)


def test_at_once_is_refused_for_a_unet():
    with pytest.raises(ConfigError, match="model.at_once"):
        validate_config({"model": {"arch": "unet", "at_once": True}})


@pytest.mark.parametrize("stages,least", [(2, 20), (4, 92), (5, 188)])
def test_valid_unet_pad_below_the_least_is_one_line_naming_it(tmp_path, stages, least):
    from fcnseg.config import unet_least_pad
    assert unet_least_pad(stages) == least
    validate_config({"model": {"arch": "unet", "stages": stages, "pad": least, "num_classes": 2}})
    with pytest.raises(ConfigError, match=rf"model.pad {least - 1} is too small .* use model.pad >= {least}"):
        validate_config({"model": {"arch": "unet", "stages": stages, "pad": least - 1}})


def test_make_proto_refuses_a_small_unet_pad_with_exit_2_writing_nothing(tmp_path, capsys):
    from fcnseg.cli import main
    from conftest import REPO
    code = main(["make-proto", str(REPO / "configs" / "demo_hela.yaml"), "--set", "data.root=null",
                 "--set", "model.arch=unet", "--set", "model.stages=4", "--set", "model.pad=50",
                 "--set", "model.num_classes=2", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "model.pad 50 is too small" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
