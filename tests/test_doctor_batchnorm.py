"""doctor.checks_norm: BatchNorm statistics with a learning rate, frozen with nothing to freeze, without a Scale,
and on one image per step; and fcnseg's own BatchNorm nets (every arch) pass doctor without an error."""
import pytest

from google.protobuf import text_format

from fcnseg import doctor
from fcnseg.caffe_env import caffe_pb2
from fcnseg.config import validate_config
from fcnseg.nets import train_val_net

pytest.importorskip("caffe")

SOLVER = 'net: "train_val.prototxt" base_lr: 0.001 type: "Adam" momentum: 0.9 momentum2: 0.999'


def bn_net(arch="unet", batch=4):
    config = validate_config({"model": {"arch": arch, "stages": 3, "norm": "batch", "num_classes": 2,
                                        "base_channels": 8, "fc_channels": 16, "pad": "minimal"},
                              "data": {"batch_size": batch}, "loss": {"normalize": True}})
    return train_val_net(config)


def diagnose(tmp_path, net, solver=SOLVER, **kwargs):
    parsed = text_format.Parse(solver, caffe_pb2().SolverParameter())
    return doctor.diagnose(net, parsed, image_size=(64, 64), input_channels=1, base_dirs=(tmp_path,),
                           check_snapshot_dir=False, **kwargs)


def of(findings, code):
    return [f for f in findings if f.code == code]


def batchnorms(net):
    return [layer for layer in net.layer if layer.type == "BatchNorm"]


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s", "unet"])
def test_fcnsegs_batchnorm_nets_have_no_batchnorm_finding(tmp_path, arch):
    findings = diagnose(tmp_path, bn_net(arch))
    assert not [f for f in findings if f.code.startswith("batchnorm")]
    assert not of(findings, "from-scratch") or of(findings, "from-scratch")[0].severity != "error"


def test_statistics_with_a_learning_rate_are_an_error_naming_caffes_abort(tmp_path):
    net = bn_net()
    bn = batchnorms(net)[2]
    bn.param[0].lr_mult = 1
    [finding] = of(diagnose(tmp_path, net), "batchnorm-lr")
    assert finding.severity == "error" and finding.layer == bn.name
    assert "Cannot configure batch normalization statistics" in finding.message
    assert "lr_mult: 0" in finding.fix


def test_frozen_statistics_from_scratch_are_an_error_and_with_weights_a_note(tmp_path):
    net = bn_net()
    for layer in batchnorms(net)[:3]:
        layer.batch_norm_param.use_global_stats = True
    [finding] = of(diagnose(tmp_path, net), "batchnorm-frozen")
    assert finding.severity == "error" and finding.layer.split(", ") == [b.name for b in batchnorms(net)[:3]]
    assert "mean and variance of 0" in finding.message

    weights = caffe_pb2().NetParameter()
    for layer in batchnorms(net)[:3]:
        held = weights.layer.add(name=layer.name, type="BatchNorm")
        for shape in ([8], [8], [1]):
            blob = held.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend([1.0] * shape[0])
    (tmp_path / "w.caffemodel").write_bytes(weights.SerializeToString())
    [finding] = of(diagnose(tmp_path, net, weights=tmp_path / "w.caffemodel"), "batchnorm-frozen")
    assert finding.severity == "info"


def test_batchnorm_without_scale_is_a_warning(tmp_path):
    net = bn_net()
    kept = [layer for layer in net.layer if not (layer.type == "Scale" and layer.name == "enc2_1_scale")]
    del net.layer[:]
    net.layer.extend(kept)
    [finding] = of(diagnose(tmp_path, net), "batchnorm-no-scale")
    assert finding.severity == "warning" and finding.layer == "enc2_1_bn"


def test_batch_of_one_is_noted(tmp_path):
    assert of(diagnose(tmp_path, bn_net(batch=4)), "batchnorm-batch-one") == []
    [finding] = of(diagnose(tmp_path, bn_net(batch=1)), "batchnorm-batch-one")
    assert finding.severity == "info"
