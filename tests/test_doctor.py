"""fcnseg.doctor: each finding on a minimal prototxt that triggers it and one that does not; the seed;
every net make-proto writes; the CLI."""
import json

import numpy as np
import pytest

from fcnseg.config import SKIPS_BY_ARCH

from conftest import SEED_DIR, write_lmdb

caffe = pytest.importorskip("caffe")

from google.protobuf import text_format  # noqa: E402

from fcnseg import doctor  # noqa: E402
from fcnseg.config import validate_config  # noqa: E402
from fcnseg.doctor import diagnose_config, diagnose_files, format_findings, read_net, read_solver  # noqa: E402
from fcnseg.errors import ConfigError  # noqa: E402
from fcnseg.geometry import blob_maps  # noqa: E402

pb = caffe.proto.caffe_pb2


# --- minimal prototxts ------------------------------------------------------------------------------

def input_layer(c=1, h=64, w=64, n=1):
    return (f'layer {{ name: "input" type: "Input" top: "data" top: "label" input_param {{ '
            f'shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} shape {{ dim: {n} dim: 1 dim: {h} dim: {w} }} }} }}')


def data_layers(tmp, batch=1, mean="", phases=("TRAIN", "TEST")):
    out = []
    for phase in phases:
        split = "train" if phase == "TRAIN" else "val"
        for top, kind in (("data", "images"), ("label", "labels")):
            transform = f"transform_param {{ {mean} }}" if top == "data" and mean else ""
            out.append(f'layer {{ name: "{top}" type: "Data" top: "{top}" include {{ phase: {phase} }} {transform} '
                       f'data_param {{ source: "{tmp}/{split}_{kind}" batch_size: {batch} backend: LMDB }} }}')
    return "\n".join(out)


def conv(name, bottom, n=4, k=3, pad=1, filler='weight_filler { type: "msra" }', relu=True, lr=None):
    param = f"param {{ lr_mult: {lr} }}" if lr is not None else ""
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" {param} '
            f'convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} {filler} }} }}')
    if relu:
        text += f'\nlayer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}'
    return text


def pool(name, bottom):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')


def deconv(name, bottom, k=4, s=2, n=2, group=2, filler='weight_filler { type: "bilinear" }', lr=0):
    param = f"param {{ lr_mult: {lr} }}" if lr is not None else ""
    return (f'layer {{ name: "{name}" type: "Deconvolution" bottom: "{bottom}" top: "{name}" {param} '
            f'convolution_param {{ num_output: {n} group: {group} kernel_size: {k} stride: {s} bias_term: false '
            f'{filler} }} }}')


def crop(offset=1, bottom="upscore"):
    return (f'layer {{ name: "score" type: "Crop" bottom: "{bottom}" bottom: "data" top: "score" '
            f'crop_param {{ axis: 2 offset: {offset} }} }}')


def loss(normalize="normalization: VALID", ignore=255):
    return ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
            f'loss_param {{ ignore_label: {ignore} {normalize} }} }}')


SCORE = conv("score_fr", "pool1", n=2, k=1, pad=0, filler='weight_filler { type: "constant" }', relu=False)


def small_net(source=None, *, trunk=None, up=None, cropped=None, lossed=None):
    """conv1 (3x3 pad 1) -> pool1 -> score_fr -> 2x bilinear upscore -> Crop offset 1 -> loss: no errors."""
    return "\n".join([source or input_layer(), trunk or conv("conv1", "data"), pool("pool1", "conv1"), SCORE,
                      up or deconv("upscore", "score_fr"), cropped or crop(1), lossed or loss()])


def deep_net(stages=3, convs=8, filler='weight_filler { type: "msra" }', extra=""):
    """`convs` ReLU convolutions spread over `stages` pooling stages, a score, a matching upsampling."""
    layers, bottom, per = [input_layer()], "data", -(-convs // stages)
    made = 0
    for s in range(1, stages + 1):
        for i in range(per):
            if made == convs:
                break
            name = f"conv{s}_{i + 1}"
            layers.append(conv(name, bottom, filler=filler))
            bottom, made = name, made + 1
        layers.append(pool(f"pool{s}", bottom))
        bottom = f"pool{s}"
    f = 2 ** stages
    layers += [extra, conv("score_fr", bottom, n=2, k=1, pad=0, filler='weight_filler { type: "constant" }',
                           relu=False), deconv("upscore", "score_fr", k=2 * f, s=f)]
    offset = blob_maps(text_format.Parse("\n".join(layers + [crop(0)]), pb.NetParameter()))[1][0].offset
    return "\n".join(layers + [crop(offset), loss()])


def solver_text(lr=1e-4, momentum=0.9, kind="SGD", extra=""):
    return f'net: "train_val.prototxt" base_lr: {lr} momentum: {momentum} type: "{kind}" {extra}'


def run(tmp_path, net_text, solver=None, **kwargs):
    path = tmp_path / "train_val.prototxt"
    path.write_text(net_text)
    spath = None
    if solver is not None:
        spath = tmp_path / "solver.prototxt"
        spath.write_text(solver)
    return diagnose_files(path, spath, **kwargs)


def codes(findings, severity=None):
    return {f.code for f in findings if severity is None or f.severity == severity}


def find(findings, code):
    return next(f for f in findings if f.code == code)


def write_weights(path, layers):
    """A caffemodel holding zero-valued blobs of the given {name: shape}."""
    net = pb.NetParameter()
    for name, shape in layers.items():
        layer = net.layer.add(name=name, type="Convolution")
        blob = layer.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend(np.zeros(int(np.prod(shape)), np.float32).tolist())
    path.write_bytes(net.SerializeToString())
    return path


# --- the seed, make-proto's nets, the CLI -----------------------------------------------------------

def test_seed_errors_name_both_strides():
    findings = diagnose_files(SEED_DIR / "train_val.prototxt", SEED_DIR / "solver.prototxt")
    assert {"upsampling-stride", "zero-init", "from-scratch", "solver-step"} <= codes(findings, "error")
    up = find(findings, "upsampling-stride")
    assert "stride is 8" in up.message and "32×" in up.message
    assert "kernel_size 16, stride 8" in up.fix and "offset then becomes 79" in up.fix
    step = find(findings, "solver-step")
    assert "0.01" in step.message and "10×" in step.message and "Momentum 0.99" in step.message
    assert [f.severity for f in findings] == sorted((f.severity for f in findings), key=doctor.SEVERITIES.index)


def test_cli_exit_codes_and_json(run_cli, tmp_path, capsys):
    assert run_cli("doctor", SEED_DIR / "train_val.prototxt", SEED_DIR / "solver.prototxt") == 1
    text = capsys.readouterr().out
    assert "ERROR   upsampling-stride" in text and "fix:" in text and "doctor: 4 errors" in text
    assert run_cli("doctor", "--json", SEED_DIR / "train_val.prototxt") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] >= 3 and {"severity", "code", "layer", "message", "fix"} == set(data["findings"][0])
    (tmp_path / "n.prototxt").write_text(small_net())
    assert run_cli("doctor", tmp_path / "n.prototxt") == 0
    assert run_cli("doctor") == 2
    config = tmp_path / "c.yaml"
    config.write_text("model: {num_classes: 2}\n")  # full VGG16 depth, init.weights null
    assert run_cli("doctor", "--config", config) == 1
    assert "ERROR   from-scratch" in capsys.readouterr().out
    assert run_cli("doctor", "--config", config, "--set", "model.stages=2") == 0


def test_deploy_net_gets_geometry_checks_only(tmp_path):
    assert run(tmp_path, small_net(lossed=" ")) == []
    assert codes(run(tmp_path, small_net(lossed=" ", up=deconv("upscore", "score_fr", k=8, s=4)))) == {
        "upsampling-stride"}


def test_unparsable_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "a"\n  typo: 1\n}\n')
    with pytest.raises(ConfigError, match=r"bad.prototxt: line 3: .*typo"):
        read_net(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_solver(tmp_path / "missing.prototxt")
    v1 = tmp_path / "v1.prototxt"
    v1.write_text('layers { name: "c" type: CONVOLUTION }')
    with pytest.raises(ConfigError, match="V1"):
        read_net(v1)


ARCHS = [(a, s) for a in ("fcn32s", "fcn16s", "fcn8s") for s in range(1, 6)
         if s > SKIPS_BY_ARCH[a]]


def _fake_weights(monkeypatch, config):
    """Make doctor see a caffemodel holding exactly the trunk of `config`'s net."""
    from fcnseg.nets import deploy_net
    net = deploy_net(config, 64, 64)
    n = doctor.NetFacts.build(net, config.model.input_channels)
    shapes = {layer.name: [doctor.expected_shape(n, layer)] for layer in net.layer
              if layer.type == "Convolution" and layer.name.startswith(("conv", "fc"))}
    monkeypatch.setattr(doctor, "caffemodel_shapes", lambda path: shapes)


@pytest.mark.parametrize("pad", [100, "minimal"])
@pytest.mark.parametrize("arch,stages", ARCHS)
def test_make_proto_nets_have_no_errors(monkeypatch, tmp_path, arch, stages, pad):
    from fcnseg.resolve import resolve
    from fcnseg.runs import build_definition, write_definition
    config = validate_config({"model": {"arch": arch, "stages": stages, "num_classes": 2, "fc_channels": 64,
                                        "pad": pad}, "init": {"weights": "vgg16_1ch.caffemodel"}})
    _fake_weights(monkeypatch, config)
    assert not codes(diagnose_config(config), "error")
    paths = write_definition(build_definition(resolve(config)), tmp_path)
    found = diagnose_files(paths["train_val.prototxt"], paths["solver.prototxt"], weights="w.caffemodel")
    assert not codes(found, "error"), format_findings(found)


def test_shipped_configs_have_no_errors(monkeypatch):
    from fcnseg.config import load_config
    from conftest import REPO
    for name in ("fcn32_1ch", "fcn16_1ch", "fcn8_1ch", "seed_reduced_1ch", "demo_hela", "demo_hela_fcn8s", "demo_bacteria"):
        config = load_config(REPO / "configs" / f"{name}.yaml", ["data.root=null", "model.num_classes=2"])
        if config.init.weights:
            _fake_weights(monkeypatch, config)
        assert not codes(diagnose_config(config), "error"), name


# --- 1, 2: geometry ---------------------------------------------------------------------------------

def test_upsampling_must_equal_stride(tmp_path):
    assert codes(run(tmp_path, small_net())) == {"batch-one"}
    found = run(tmp_path, small_net(up=deconv("upscore", "score_fr", k=8, s=4)))
    f = find(found, "upsampling-stride")
    assert f.severity == "error" and "stride is 2" in f.message and "4×" in f.message


def test_crop_offset_must_match_geometry(tmp_path):
    f = find(run(tmp_path, small_net(cropped=crop(19))), "crop-offset")
    assert f.severity == "error" and "offset: 1" in f.fix and f.layer == "score"
    assert "crop-offset" not in codes(run(tmp_path, small_net(cropped=crop(1))))


@pytest.mark.parametrize("trunk,up,why", [
    (conv("conv1", "data", k=5, pad=0), None, "does not cover"),
    (None, deconv("upscore", "score_fr", k=3, s=2), "fraction of a pixel"),
])
def test_uncomputable_crops(tmp_path, trunk, up, why):
    f = find(run(tmp_path, small_net(trunk=trunk, up=up)), "crop-uncomputable")
    assert f.severity == "error" and why in f.message
    assert "crop-uncomputable" not in codes(run(tmp_path, small_net()))


# --- 3: upsampling ----------------------------------------------------------------------------------

def test_upsampling_filler_learning_and_group(tmp_path):
    frozen_zero = run(tmp_path, small_net(up=deconv("upscore", "score_fr", filler="")))
    assert find(frozen_zero, "upsampling-filler").severity == "error"
    learning = run(tmp_path, small_net(up=deconv("upscore", "score_fr", filler='weight_filler { type: "gaussian" }',
                                                 lr=1)))
    assert find(learning, "upsampling-filler").severity == "warning"
    assert find(learning, "upsampling-learns").severity == "info"
    grouped = run(tmp_path, small_net(up=deconv("upscore", "score_fr", group=1)))
    assert find(grouped, "upsampling-group").severity == "error" and "group: 2" in find(grouped, "upsampling-group").fix
    assert not codes(run(tmp_path, small_net())) & {"upsampling-filler", "upsampling-learns", "upsampling-group"}


# --- 4: zero initialisation -------------------------------------------------------------------------

def test_layers_without_filler_under_relu(tmp_path):
    found = run(tmp_path, small_net(trunk=conv("conv1", "data", filler="")))
    f = find(found, "zero-init")
    assert f.severity == "error" and f.layer == "conv1" and "ln 2" in f.message
    assert "zero-init" not in codes(run(tmp_path, small_net()))  # score_fr at constant 0 has no ReLU: fine
    weights = write_weights(tmp_path / "w.caffemodel", {"conv1": (4, 1, 3, 3)})
    covered = run(tmp_path, small_net(trunk=conv("conv1", "data", filler="")), weights=weights)
    assert "zero-init" not in codes(covered)


# --- 5: from scratch, weights -----------------------------------------------------------------------

def test_from_scratch_depth_and_recipe(tmp_path):
    adam, sgd = solver_text(kind="Adam"), solver_text()
    assert find(run(tmp_path, deep_net(), adam), "from-scratch").severity == "info"
    assert find(run(tmp_path, deep_net(), sgd), "from-scratch").severity == "warning"
    f = find(run(tmp_path, deep_net(stages=4, convs=10), adam), "from-scratch")
    assert f.severity == "error" and "fcnseg weights convert" in f.fix and "stride 16" in f.message
    gauss = deep_net(filler='weight_filler { type: "gaussian" std: 0.01 }')
    assert find(run(tmp_path, gauss, adam), "from-scratch").severity == "error"
    assert "from-scratch" not in codes(run(tmp_path, deep_net(convs=7), sgd))       # FCN-AlexNet depth
    bn = 'layer { name: "bn" type: "BatchNorm" bottom: "pool3" top: "pool3" }'
    assert "from-scratch" not in codes(run(tmp_path, deep_net(stages=4, convs=10, extra=bn.replace("pool3", "pool4")), sgd))
    weights = write_weights(tmp_path / "w.caffemodel", {"conv1_1": (4, 1, 3, 3)})
    assert "from-scratch" not in codes(run(tmp_path, gauss, adam, weights=weights))


def test_weights_channels_shapes_and_names(tmp_path):
    rgb = write_weights(tmp_path / "rgb.caffemodel", {"conv1": (4, 3, 3, 3)})
    f = find(run(tmp_path, small_net(), weights=rgb), "weights-channels")
    assert f.severity == "error" and "3 input channels" in f.message and "has 1" in f.message
    gray = write_weights(tmp_path / "gray.caffemodel", {"conv1": (4, 1, 3, 3)})
    assert not codes(run(tmp_path, small_net(), weights=gray), "error")
    wrong = write_weights(tmp_path / "wrong.caffemodel", {"conv1": (4, 1, 3, 3), "score_fr": (21, 4, 1, 1)})
    f = find(run(tmp_path, small_net(), weights=wrong), "weights-shape")
    assert "'score_fr' is 21×4×1×1 in the weights but 2×4×1×1" in f.message
    other = write_weights(tmp_path / "other.caffemodel", {"fc8": (2, 4, 1, 1)})
    assert find(run(tmp_path, small_net(), weights=other), "weights-unused").severity == "error"
    (tmp_path / "junk.caffemodel").write_text("not a model")
    assert find(run(tmp_path, small_net(), weights=tmp_path / "junk.caffemodel"), "weights-unreadable")


# --- 6, 7: solver -----------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize,lr,momentum,kind,expected", [
    ("normalization: VALID", 1e-4, 0.99, "SGD", "error"),      # the seed's mix: 10x AlexNet's step
    ("normalization: VALID", 1e-4, 0.9, "SGD", None),          # FCN-AlexNet
    ("normalize: false", 1e-10, 0.99, "SGD", None),            # FCN VGG on 500x500
    ("normalize: false", 1e-4, 0.9, "SGD", "error"),           # AlexNet's lr on a summed loss
    ("normalization: NONE", 1e-14, 0.99, "SGD", "info"),       # the reference's staged 8s fine-tuning
    ("normalization: VALID", 1e-4, 0.99, "Adam", None),        # adaptive: step does not scale with lr/(1-m)
])
def test_effective_step_against_recipes(tmp_path, normalize, lr, momentum, kind, expected):
    net = small_net(input_layer(h=500, w=500), lossed=loss(normalize))
    found = [f for f in run(tmp_path, net, solver_text(lr, momentum, kind)) if f.code == "solver-step"]
    assert [f.severity for f in found] == ([expected] if expected else [])


@pytest.mark.parametrize("tile", [256, 500])
def test_staged_reference_rates_pass_on_small_tiles(tmp_path, tile):
    """The staged recipe of docs/training.md as shipped (16s at 1e-12, 8s at 1e-14, summed loss) on 256² or 500²
    tiles is the reference's own fine-tuning: no solver-step finding. The same 1e-14 on the 32s net gets
    the note that it is a fine-tuning rate (from VGG16 the weights would barely move)."""
    from conftest import REPO, write_tiny_dataset
    from fcnseg.config import load_config
    data = write_tiny_dataset(tmp_path / "data", n_train=1, n_val=1, size=tile)
    for name, lr in (("fcn16_1ch", None), ("fcn8_1ch", None), ("fcn32_1ch", 1e-14)):
        sets = [f"data.root={data}", "init.weights=null"] + ([f"solver.base_lr={lr}"] if lr else [])
        found = [f for f in diagnose_config(load_config(REPO / "configs" / f"{name}.yaml", sets))
                 if f.code == "solver-step"]
        assert [f.severity for f in found] == (["info"] if lr else []), (name, tile, format_findings(found))


def test_batch_one_without_accumulation(tmp_path):
    assert find(run(tmp_path, small_net(), solver_text()), "batch-one").severity == "info"
    assert "batch-one" not in codes(run(tmp_path, small_net(), solver_text(extra="iter_size: 4")))
    assert "batch-one" not in codes(run(tmp_path, small_net(input_layer(n=4)), solver_text()))


# --- 8: mean ----------------------------------------------------------------------------------------

@pytest.fixture
def lmdbs(tmp_path):
    """train/val image and label LMDBs: 1-channel 8x8 images, labels {0, 1} with both classes common."""
    def make(labels=None, n_train=4, n_val=4, label_size=8, images_n=None):
        rng = np.random.default_rng(0)
        for split, n in (("train", n_train), ("val", n_val)):
            labs = labels if labels is not None else [np.arange(64).reshape(1, 8, 8) % 2] * n
            write_lmdb(tmp_path / f"{split}_images", [rng.integers(0, 255, (1, 8, 8)) for _ in range(images_n or n)])
            write_lmdb(tmp_path / f"{split}_labels",
                       [np.resize(lab, (1, label_size, label_size)) for lab in labs[:n]])
        return tmp_path
    return make


def data_net(tmp, mean="", batch=1):
    return small_net(data_layers(tmp, batch, mean))


def test_mean_values_and_mean_file_channels(tmp_path, lmdbs):
    lmdbs()
    assert find(run(tmp_path, data_net(tmp_path, "mean_value: 1 mean_value: 2 mean_value: 3")),
                "mean-channels").severity == "error"
    assert "mean-channels" not in codes(run(tmp_path, data_net(tmp_path, "mean_value: 1")))
    for channels, bad in ((3, True), (1, False)):
        blob = pb.BlobProto(num=1, channels=channels, height=8, width=8)
        blob.data.extend([0.0] * channels * 64)
        (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
        found = run(tmp_path, data_net(tmp_path, f'mean_file: "{tmp_path}/mean.binaryproto"'))
        assert ("mean-channels" in codes(found)) is bad
    missing = run(tmp_path, data_net(tmp_path, 'mean_file: "/nowhere/mean.binaryproto"'))
    assert find(missing, "mean-file").severity == "info"


# --- 9: data check ----------------------------------------------------------------------------------

def test_data_check_clean(tmp_path, lmdbs):
    lmdbs()
    assert not codes(run(tmp_path, data_net(tmp_path), data_check=True)) & {
        "mask-255", "label-range", "data-count", "data-size", "class-imbalance", "data-unreadable"}


@pytest.mark.parametrize("make,code", [
    (dict(labels=[np.full((1, 8, 8), 255, np.uint8) * (np.arange(64).reshape(1, 8, 8) % 2)] * 4), "mask-255"),
    (dict(labels=[np.arange(64).reshape(1, 8, 8) % 3] * 4), "label-range"),
    (dict(images_n=5), "data-count"),
    (dict(label_size=4), "data-size"),
    (dict(labels=[np.zeros((1, 8, 8))] * 4), "class-imbalance"),
])
def test_data_check_findings(tmp_path, lmdbs, make, code):
    lmdbs(**make)
    assert code in codes(run(tmp_path, data_net(tmp_path), data_check=True))
    assert code not in codes(run(tmp_path, data_net(tmp_path)))  # only with --data-check


def test_data_check_unreadable_source(tmp_path):
    f = find(run(tmp_path, data_net(tmp_path / "nowhere"), data_check=True), "data-unreadable")
    assert f.severity == "warning"


# --- 10: housekeeping -------------------------------------------------------------------------------

def test_val_coverage(tmp_path, lmdbs):
    lmdbs(n_val=4)
    assert find(run(tmp_path, data_net(tmp_path), solver_text(extra="test_iter: 2")), "val-coverage").severity \
        == "warning"
    assert find(run(tmp_path, data_net(tmp_path), solver_text(extra="test_iter: 736")), "val-coverage").severity \
        == "info"
    assert "val-coverage" not in codes(run(tmp_path, data_net(tmp_path), solver_text(extra="test_iter: 4")))


def test_snapshot_folder_must_exist(tmp_path):
    f = find(run(tmp_path, small_net(), solver_text(extra='snapshot_prefix: "snaps/net"')), "snapshot-dir")
    assert f.severity == "warning" and "mkdir -p snaps" in f.fix
    (tmp_path / "snaps").mkdir()
    assert "snapshot-dir" not in codes(run(tmp_path, small_net(), solver_text(extra='snapshot_prefix: "snaps/net"')))


def test_ignore_label_collides_with_class(tmp_path):
    assert find(run(tmp_path, small_net(lossed=loss(ignore=1))), "ignore-label").severity == "error"
    assert "ignore-label" not in codes(run(tmp_path, small_net(lossed=loss(ignore=255))))


# --- head class counts, solver step by distance, one finding per layer ------------------------------

def test_head_classes_name_each_layer_and_k(tmp_path):
    up4 = deconv("upscore", "score_fr", n=3, group=1)  # the score has 2 classes
    f = find(run(tmp_path, small_net(up=up4)), "head-classes")
    assert f.severity == "error" and "'score_fr' 2" in f.message and "'upscore' 3" in f.message
    assert "takes 2 channels and puts out 3" in f.message and "most of them say" in f.fix
    assert "head-classes" not in codes(run(tmp_path, small_net()))


def test_in_place_layers_on_the_score_end_the_walk_back_to_the_score_layer(tmp_path):
    """A ReLU on score_fr and a Dropout on score, both in place: doctor names score_fr and K = 2."""
    import signal

    dropout = 'layer { name: "drop" type: "Dropout" bottom: "score" top: "score" }'
    text = small_net(lossed=dropout + "\n" + loss()).replace(SCORE, conv("score_fr", "pool1", n=2, k=1, pad=0))

    def hung(*_):
        raise TimeoutError("doctor's walk back from the loss did not end")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        n = doctor.NetFacts.build(text_format.Parse(text, pb.NetParameter()))
        findings = run(tmp_path, text)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert n.score_layer == "score_fr" and n.num_classes == 2
    assert "head-classes" not in codes(findings)


def test_head_classes_at_an_eltwise(tmp_path):
    skip = "\n".join([
        input_layer(), conv("conv1", "data"), pool("pool1", "conv1"), conv("conv2", "pool1"), pool("pool2", "conv2"),
        conv("score_fr", "pool2", n=2, k=1, pad=0, relu=False), deconv("upscore2", "score_fr", n=4, group=4),
        conv("score_pool1", "pool1", n=2, k=1, pad=0, relu=False),
        'layer { name: "fuse" type: "Eltwise" bottom: "upscore2" bottom: "score_pool1" top: "fuse" }',
        deconv("upscore", "fuse"), crop(0, "upscore"), loss()])
    f = find(run(tmp_path, skip), "head-classes")
    assert "Eltwise 'fuse' adds 'upscore2' (4 channels) and 'score_pool1' (2 channels)" in f.message
    assert f.layer == "score_fr, upscore2, score_pool1, upscore"


@pytest.mark.parametrize("lr,momentum,expected", [
    (1e-9, 0.99, "error"),     # the case: summed-loss lr on a normalized loss, 10^4 x too small
    (1e-7, 0.9, "warning"),    # 1000 x too small
    (1e-6, 0.9, None),         # 100 x too small: within the warning band's edge
    (2e-4, 0.9, None),
])
def test_solver_step_too_small_by_distance(tmp_path, lr, momentum, expected):
    found = [f for f in run(tmp_path, small_net(), solver_text(lr, momentum)) if f.code == "solver-step"]
    assert [f.severity for f in found] == ([expected] if expected else [])
    if expected:
        assert "barely move the weights" in found[0].message


def test_one_finding_per_deconvolution(tmp_path):
    fillerless_ungrouped = deconv("upscore", "score_fr", group=1, filler="")
    found = [f for f in run(tmp_path, small_net(up=fillerless_ungrouped)) if f.layer == "upscore"]
    assert [f.code for f in found] == ["upsampling-filler"]
    single = deconv("upscore", "score_fr", n=1, group=1)  # one channel: a bilinear filler mixes nothing
    net = small_net(up=single).replace("num_output: 2 kernel_size: 1", "num_output: 1 kernel_size: 1")
    assert "upsampling-group" not in codes(run(tmp_path, net))


def test_config_with_weights_lacking_trunk_layers_is_an_error(tmp_path):
    """doctor --config (and train, before writing its run): fcnseg refuses weights without the whole trunk."""
    net = pb.NetParameter()
    blob = net.layer.add(name="conv1_1", type="Convolution").blobs.add()
    blob.shape.dim.extend([64, 1, 3, 3])
    blob.data.extend([0.0] * 576)
    path = tmp_path / "conv1_1_only.caffemodel"
    path.write_bytes(net.SerializeToString())
    config = validate_config({"model": {"num_classes": 2}, "init": {"weights": str(path)}})
    [f] = [f for f in diagnose_config(config) if f.code == "weights-missing"]
    assert f.severity == "error" and f.message.startswith("conv1_2, conv2_1,")
    assert "conv5_3 are not in conv1_1_only.caffemodel" in f.message and "fcnseg train refuses" in f.message
    assert "conv1_1" not in f.layer.split(", ")


def test_config_mean_against_recorded_weights_mean(tmp_path):
    """doctor --config: a numeric data.mean far from the gray mean M recorded in converted weights."""
    net = pb.NetParameter()
    layer = net.layer.add(name="conv1_1", type="Convolution")
    layer.transform_param.mean_value.append(114.452)
    blob = layer.blobs.add()
    blob.shape.dim.extend([64, 1, 3, 3])
    blob.data.extend([0.0] * 576)
    path = tmp_path / "vgg16_1ch.caffemodel"
    path.write_bytes(net.SerializeToString())

    def mean_findings(mean, scale=1.0):
        config = validate_config({"model": {"num_classes": 2}, "init": {"weights": str(path)},
                                  "data": {"mean": mean, "scale": scale}})
        return [f for f in diagnose_config(config) if f.code == "weights-mean"]
    off = mean_findings(30.0)
    assert len(off) == 1 and off[0].severity == "warning" and "data.mean: 114.452" in off[0].fix
    assert "subtracts data.mean 30" in off[0].message
    assert mean_findings(116.0) == []            # within a few grey levels
    assert len(mean_findings(114.452, scale=0.5)) == 1
    assert mean_findings("dataset") == []        # the dataset's own mean: not a typed number
