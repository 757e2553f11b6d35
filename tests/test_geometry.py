"""fcnseg.geometry: coordinate maps over parsed prototxts (make-proto's self-check and doctor's reading)."""
from fractions import Fraction

import pytest

from conftest import SEED_DIR

caffe = pytest.importorskip("caffe")

from google.protobuf import text_format  # noqa: E402

from fcnseg.geometry import (IDENTITY, Map, blob_maps, blob_traces, in_phase, layer_map, phase_net,  # noqa: E402
                             spatial_crop_offsets, trunk_stride)

pb = caffe.proto.caffe_pb2


def parse(text):
    return text_format.Parse(text, pb.NetParameter())


def layer(text):
    return parse(f"layer {{ {text} }}").layer[0]


def test_layer_maps_follow_coord_map():
    conv = layer('name: "c" type: "Convolution" convolution_param { kernel_size: 3 pad: 100 }')
    pool = layer('name: "p" type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }')
    up = layer('name: "u" type: "Deconvolution" convolution_param { kernel_size: 64 stride: 32 }')
    assert layer_map(conv) == (1, 99)
    assert layer_map(pool) == (Fraction(1, 2), Fraction(-1, 4))
    # This Caffe's ConvolutionParameter gives stride_h a default of 1: only `stride` is set here.
    assert layer_map(up) == (32, Fraction(63, 2))
    assert Map(Fraction(1, 2), Fraction(3)).then(Fraction(4), Fraction(1)) == Map(Fraction(2), Fraction(13))


def test_seed_traces_name_stride_and_upsampling():
    net = phase_net(text_format.Parse((SEED_DIR / "train_val.prototxt").read_text(), pb.NetParameter()), "TRAIN")
    traces, checks = blob_traces(net)
    up = traces["upscore"]
    assert (up.stride, up.upsampling, up.map.scale) == (8, 32, 4)
    assert [name for name, _ in up.resampling] == ["pool1", "pool2", "pool3", "upscore"]
    assert trunk_stride(net) == 8
    (check,) = checks
    assert check.problem == "scale mismatch" and check.scale == 4 and check.given == [19]


SKIP_NET = """
input: "data"
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "c" type: "Convolution" bottom: "pool" top: "c" convolution_param { kernel_size: 5 pad: 0 } }
layer { name: "cc" type: "Crop" bottom: "pool" bottom: "c" top: "cc" crop_param { offset: %d } }
"""


def test_crop_top_is_shifted_in_its_own_pixels():
    maps, (check,) = blob_maps(parse(SKIP_NET % 2))   # net-level `input:` names the input blob
    assert check.offset == 2 and check.matches
    assert maps["cc"] == maps["c"]                    # cropped pool lines up with c, at scale 1/2
    maps, (check,) = blob_maps(parse(SKIP_NET % 1))
    assert not check.matches and maps["cc"].shift - maps["c"].shift == 1


@pytest.mark.parametrize("param,expected", [
    ("", (0, 0)), ("offset: 19", (19, 19)), ("axis: 2 offset: 3 offset: 4", (3, 4)),
    ("axis: 1 offset: 0 offset: 5 offset: 6", (5, 6)), ("axis: 3 offset: 7", (0, 7)),
])
def test_spatial_crop_offsets(param, expected):
    assert spatial_crop_offsets(layer(f'name: "s" type: "Crop" crop_param {{ {param} }}')) == expected


def test_phases():
    net = parse('layer { name: "a" type: "Data" top: "data" include { phase: TRAIN } }'
                'layer { name: "b" type: "Data" top: "data" include { phase: TEST } }'
                'layer { name: "c" type: "ReLU" bottom: "data" top: "data" exclude { phase: TEST } }'
                'layer { name: "d" type: "ReLU" bottom: "data" top: "data" }')
    assert [layer.name for layer in phase_net(net, "TRAIN").layer] == ["a", "c", "d"]
    assert [layer.name for layer in phase_net(net, "TEST").layer] == ["b", "d"]
    assert in_phase(net.layer[3], "TEST") and len(net.layer) == 4  # the original is untouched


def test_unmapped_crop_is_reported():
    net = parse('input: "data" layer { name: "x" type: "Interp" bottom: "data" top: "x" }'
                'layer { name: "s" type: "Crop" bottom: "x" bottom: "data" top: "s" }')
    maps, (check,) = blob_maps(net)
    assert maps["data"] == IDENTITY and "no coordinate map" in check.problem and check.offset is None
