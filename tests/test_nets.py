"""fcnseg.nets and make-proto: geometry by construction, bilinear fixed upsampling, runnable nets."""
import numpy as np
import pytest

from fcnseg.config import SKIPS_BY_ARCH

from fcnseg.config import validate_config
from fcnseg.resolve import resolve
from fcnseg.geometry import blob_maps, trunk_stride
from fcnseg.nets import deploy_net, train_val_net, upsampling_plan


def resolve_cfg(config):
    """The resolved config (tests that need only the config)."""
    return resolve(config).config

caffe = pytest.importorskip("caffe")


def cfg(**model):
    return validate_config({"model": {"num_classes": 2, **model}})


def layers_of(net, kind):
    return [layer for layer in net.layer if layer.type == kind]


def load(net, tmp_path, phase="TEST", name="net.prototxt"):
    path = tmp_path / name
    path.write_text(str(net))
    return caffe.Net(str(path), getattr(caffe, phase))


@pytest.mark.parametrize("arch,offsets,deconvs", [
    ("fcn32s", {"score": 19}, [("upscore", 64, 32)]),
    ("fcn16s", {"score_pool4c": 5, "score": 27}, [("upscore2", 4, 2), ("upscore16", 32, 16)]),
    ("fcn8s", {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
     [("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)]),
])
def test_reference_offsets_and_deconvolutions(arch, offsets, deconvs):
    for net in (deploy_net(cfg(arch=arch), 500, 500), train_val_net(cfg(arch=arch))):
        crops = {layer.name: list(layer.crop_param.offset) for layer in layers_of(net, "Crop")}
        assert crops == {k: [v] for k, v in offsets.items()}
        got = [(d.name, d.convolution_param.kernel_size[0], d.convolution_param.stride[0])
               for d in layers_of(net, "Deconvolution")]
        assert got == deconvs
        for d in layers_of(net, "Deconvolution"):
            p = d.convolution_param
            assert p.group == 2 and p.num_output == 2 and p.bias_term is False
            assert p.weight_filler.type == "bilinear" and [q.lr_mult for q in d.param] == [0]


def test_geometry_module_agrees_with_coord_map():
    for arch in ("fcn32s", "fcn16s", "fcn8s"):
        for pad in (100, "minimal"):
            net = deploy_net(cfg(arch=arch, pad=pad), 256, 256)
            _, checks = blob_maps(net)
            assert checks and all(c.problem == "" and c.given == [c.offset] for c in checks)
            assert trunk_stride(net) == 32


def test_every_learnable_layer_has_a_filler():
    net = train_val_net(cfg(arch="fcn8s", at_once=True))
    for layer in layers_of(net, "Convolution"):
        assert layer.convolution_param.HasField("weight_filler"), layer.name
        assert layer.convolution_param.weight_filler.type in ("msra", "constant")
        if layer.name.startswith(("conv", "fc")):
            assert layer.convolution_param.weight_filler.type == "msra"


def test_at_once_scales_skips():
    net = deploy_net(cfg(arch="fcn8s", at_once=True), 256, 256)
    scales = {s.name: s.scale_param.filler.value for s in layers_of(net, "Scale")}
    assert scales == pytest.approx({"scale_pool4": 0.01, "scale_pool3": 0.0001})
    assert all([p.lr_mult for p in s.param] == [0] for s in layers_of(net, "Scale"))


def test_trunk_names_and_fc_shapes():
    net = deploy_net(cfg(stages=5, fc_channels=64), 256, 256)
    names = [layer.name for layer in layers_of(net, "Convolution")]
    assert names[:13] == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                          "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    fc6, fc7 = (next(layer for layer in net.layer if layer.name == n) for n in ("fc6", "fc7"))
    assert fc6.convolution_param.kernel_size == [7] and fc7.convolution_param.kernel_size == [1]
    assert fc6.convolution_param.num_output == 64


def test_seed_depth_gets_8x_upsampling():
    assert upsampling_plan(cfg(stages=3).model) == [("upscore", 8)]
    assert upsampling_plan(cfg(stages=3, arch="fcn8s").model) == [
        ("upscore2", 2), ("upscore_pool2", 2), ("upscore", 2)]
    assert upsampling_plan(cfg(stages=5, arch="fcn16s").model) == [("upscore2", 2), ("upscore16", 16)]


SIZES = [(1, 1), (7, 5), (32, 32), (97, 131), (255, 257), (700, 1100)]


@pytest.mark.parametrize("arch,stages", [(a, s) for a in ("fcn32s", "fcn16s", "fcn8s") for s in range(1, 6)
                                         if s > SKIPS_BY_ARCH[a]])
def test_deploy_reshapes_to_any_size(tmp_path, arch, stages):
    c = cfg(arch=arch, stages=stages, fc_channels=8)
    plan = upsampling_plan(c.model)
    assert np.prod([f for _, f in plan]) == 2 ** stages  # final factor equals the stride
    net = load(deploy_net(c, 64, 64), tmp_path)
    for h, w in SIZES:
        net.blobs["data"].reshape(1, 1, h, w)
        net.reshape()
        assert net.blobs["score"].data.shape == (1, 2, h, w), (h, w)
    net.blobs["data"].reshape(1, 1, 97, 131)
    net.reshape()
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=(1, 1, 97, 131))
    assert net.forward()["score"].shape == (1, 2, 97, 131)


def test_loaded_upsampling_is_exact_bilinear(tmp_path):
    from fcnseg.nets import bilinear_kernel
    net = load(deploy_net(cfg(arch="fcn8s", fc_channels=8), 64, 64), tmp_path)
    for name, factor in upsampling_plan(cfg(arch="fcn8s").model):
        w = net.params[name][0].data
        assert w.shape == (2, 1, 2 * factor, 2 * factor)
        for c in range(2):
            np.testing.assert_allclose(w[c, 0], bilinear_kernel(2 * factor), rtol=0, atol=1e-7)
        assert len(net.params[name]) == 1  # no bias


def test_bilinear_kernel_values():
    from fcnseg.nets import bilinear_kernel
    k = bilinear_kernel(4)
    np.testing.assert_allclose(k[0], [0.0625, 0.1875, 0.1875, 0.0625])
    assert k.shape == (4, 4) and k.sum() == pytest.approx(4.0)


def test_upsampling_does_not_learn(tmp_path):
    """Two SGD steps move the trunk (the control: the net does learn) and leave the bilinear upsampling as it was."""
    from conftest import write_tiny_dataset
    root = write_tiny_dataset(tmp_path / "d")
    resolved = resolve(validate_config({"model": {"stages": 2, "fc_channels": 8, "arch": "fcn16s"},
                                        "data": {"root": str(root), "batch_size": 2},
                                        "solver": {"base_lr": 0.1, "momentum": 0.9}}))
    from fcnseg.runs import build_definition, write_definition
    import os
    write_definition(build_definition(resolved), tmp_path / "run")
    cwd = os.getcwd()
    os.chdir(tmp_path / "run")
    try:
        solver = caffe.get_solver("solver.prototxt")
        fixed = {n: solver.net.params[n][0].data.copy() for n in ("upscore2", "upscore")}
        learning = solver.net.params["conv1_1"][0].data.copy()
        solver.step(2)
    finally:
        os.chdir(cwd)
    for name, w in fixed.items():
        np.testing.assert_array_equal(solver.net.params[name][0].data, w)
    assert not np.allclose(solver.net.params["conv1_1"][0].data, learning)


def test_train_val_runs_forward_backward_on_tiny_lmdb(tmp_path, tiny_dataset):
    c = resolve_cfg(validate_config({"model": {"stages": 3, "fc_channels": 16},
                                        "data": {"root": str(tiny_dataset), "batch_size": 2}}))
    net = load(train_val_net(c), tmp_path, phase="TRAIN")
    loss = float(net.forward()["loss"])
    net.backward()
    assert np.isfinite(loss) and loss > 0
    assert net.blobs["score"].data.shape == (2, 2, 32, 32)
    # Score layers start at zero (the reference's choice), so the first gradient reaches them only.
    assert np.abs(net.params["score_fr"][0].diff).sum() > 0
    assert net.blobs["data"].data.min() == -80.0  # the dataset mean (80) was subtracted from 0-valued pixels
    assert set(np.unique(net.blobs["label"].data)) <= {0.0, 1.0}


def test_minimal_pad_reaches_same_output_size(tmp_path):
    net = load(deploy_net(cfg(pad="minimal", fc_channels=8), 256, 256), tmp_path)
    assert net.blobs["conv1_1"].data.shape[2:] == (256, 256)
    assert net.blobs["score"].data.shape == (1, 2, 256, 256)


def test_ignore_label_collision_refused():
    from fcnseg.errors import ConfigError
    with pytest.raises(ConfigError, match="data.ignore_label 1 collides"):
        train_val_net(validate_config({"model": {"num_classes": 3}, "data": {"ignore_label": 1}}))


def test_foreground_loss_matches_a_hand_computation(tmp_path):
    from fcnseg.nets import foreground_loss
    c = validate_config({"model": {"num_classes": 3}, "loss": {"foreground_weight": 0.7}})
    n = caffe.NetSpec()
    n.score = caffe.layers.Input(input_param=dict(shape=dict(dim=[2, 3, 4, 5])))
    n.label = caffe.layers.Input(input_param=dict(shape=dict(dim=[2, 1, 4, 5])))
    foreground_loss(n, n.score, n.label, c)
    proto = n.to_proto()
    assert {layer.type for layer in proto.layer} == {"Input", "Threshold", "Eltwise", "Power", "SoftmaxWithLoss"}
    assert [layer.loss_weight for layer in proto.layer if layer.name == "loss_fg"] == [[pytest.approx(0.7)]]
    net = load(proto, tmp_path, "TRAIN")
    rng = np.random.default_rng(0)
    score = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    label = rng.choice([0, 1, 2, 255], size=(2, 1, 4, 5)).astype(np.float32)
    net.blobs["score"].data[...], net.blobs["label"].data[...] = score, label
    loss = float(net.forward()["loss_fg"])
    prob = np.exp(score) / np.exp(score).sum(1, keepdims=True)
    total, count = 0.0, 0
    for b in range(2):
        for y in range(4):
            for x in range(5):
                if label[b, 0, y, x] in (1, 2):
                    total -= np.log(prob[b, int(label[b, 0, y, x]), y, x])
                    count += 1
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert set(np.unique(net.blobs["label_fg"].data).tolist()) == {1.0, 2.0, 255.0}


def test_train_val_net_has_the_foreground_loss_only_when_weighted():
    plain = resolve_cfg(validate_config({"model": {"num_classes": 2}}))
    assert "loss_fg" not in [layer.name for layer in train_val_net(plain).layer]
    weighted = resolve_cfg(validate_config({"model": {"num_classes": 2}, "loss": {"foreground_weight": 1.0}}))
    assert "loss_fg" in [layer.name for layer in train_val_net(weighted).layer]
