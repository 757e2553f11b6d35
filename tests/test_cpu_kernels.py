"""fcnseg.cpu_kernels: the CPU family, oneDNN's ISA (and its cap), the kernel rule for 3x3 layers, the build's
patches, and `fcnseg info`. Which kernel each layer really runs is checked in tests/test_caffe_conv.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg import cpu_kernels
from fcnseg.cli import main
from fcnseg.cpu_kernels import (DIRECT_ONEDNN, IM2COL, WINOGRAD_FCNSEG, WINOGRAD_ONEDNN, CaffeBuild, conv3x3_kernel,
                                cpu_family, cpu_flags)

ROOT = Path(__file__).resolve().parents[1]
AVX2, AVX512_CORE, AVX512_BF16 = 0x7, 0x27, 0xE7
WITH_0008 = CaffeBuild(None, "k", ("0007-cpu-batchnorm-scale-relu.patch", cpu_kernels.FCNSEG_WINOGRAD_PATCH))
WITHOUT_0008 = CaffeBuild(None, "k", ("0007-cpu-batchnorm-scale-relu.patch",))


def test_cpu_flags_and_family_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx avx2 fma\n\nprocessor\t: 1\n")
    assert {"avx2", "fma", "sse4_1"} <= cpu_flags(info)
    assert cpu_family(cpu_flags(info)) == "AVX2+FMA"
    assert cpu_family({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}) == "AVX-512"
    assert cpu_family({"avx2", "fma", "avx512f"}) == "AVX2+FMA"  # no avx512_core without BW/VL/DQ
    assert cpu_family({"avx", "sse4_1"}) == "AVX"
    assert cpu_flags(tmp_path / "missing") == set()


def test_onednn_has_winograd_from_avx512_core_up():
    assert not cpu_kernels.onednn_has_winograd(AVX2)
    assert not cpu_kernels.onednn_has_winograd(None)
    assert not cpu_kernels.onednn_has_winograd(0xF)  # avx512_mic (Xeon Phi) lacks avx512_core's bits
    assert cpu_kernels.onednn_has_winograd(AVX512_CORE)
    assert cpu_kernels.onednn_has_winograd(AVX512_BF16)


BIG, SMALL = (512, 512, 10**4), (16, 16, 10**4)  # (in, out, tiles): VGG's conv4, a U-Net's first level


@pytest.mark.parametrize("layer,isa,build,env,expected", [
    (BIG, AVX512_BF16, WITH_0008, {}, WINOGRAD_ONEDNN),
    (BIG, AVX512_BF16, WITHOUT_0008, {}, WINOGRAD_ONEDNN),
    (BIG, AVX512_BF16, WITH_0008, {"FCNSEG_CAFFE_WINOGRAD": "fcnseg"}, WINOGRAD_FCNSEG),
    (SMALL, AVX512_BF16, WITH_0008, {"FCNSEG_CAFFE_WINOGRAD": "fcnseg"}, WINOGRAD_FCNSEG),
    (BIG, AVX512_BF16, WITHOUT_0008, {"FCNSEG_CAFFE_WINOGRAD": "fcnseg"}, WINOGRAD_ONEDNN),
    (BIG, AVX2, WITH_0008, {}, WINOGRAD_FCNSEG),
    ((128, 128, 128), AVX2, WITH_0008, {}, WINOGRAD_FCNSEG),  # the smallest layer it takes by itself
    ((64, 128, 10**4), AVX2, WITH_0008, {}, DIRECT_ONEDNN),
    ((128, 64, 10**4), AVX2, WITH_0008, {}, DIRECT_ONEDNN),
    ((512, 512, 127), AVX2, WITH_0008, {}, DIRECT_ONEDNN),
    (SMALL, AVX2, WITH_0008, {}, DIRECT_ONEDNN),
    (BIG, AVX2, WITHOUT_0008, {}, DIRECT_ONEDNN),  # the build issue 34 was filed against, on an AVX2 host
    (BIG, AVX2, WITH_0008, {"FCNSEG_CAFFE_WINOGRAD": "0"}, DIRECT_ONEDNN),
    (BIG, AVX512_BF16, WITH_0008, {"FCNSEG_CAFFE_WINOGRAD": "0"}, DIRECT_ONEDNN),
    ((1, 64, 10**4), AVX512_BF16, WITH_0008, {"FCNSEG_CAFFE_WINOGRAD": "fcnseg"}, DIRECT_ONEDNN),
    (BIG, AVX2, WITH_0008, {"FCNSEG_CAFFE_DNNL": "0"}, IM2COL),
    (BIG, None, WITH_0008, {}, IM2COL),
])
def test_the_3x3_kernel_rule(layer, isa, build, env, expected):
    assert cpu_kernels.layer_kernel(*layer, isa, build, env) == expected


def test_the_kernel_line_names_both_kernels_where_they_differ():
    assert conv3x3_kernel(AVX512_BF16, WITH_0008, {}) == WINOGRAD_ONEDNN
    assert conv3x3_kernel(AVX2, WITHOUT_0008, {}) == DIRECT_ONEDNN
    assert conv3x3_kernel(AVX2, WITH_0008, {}) == \
        f"{WINOGRAD_FCNSEG} for >= 128 in and 128 out channels over >= 128 tiles, {DIRECT_ONEDNN} below"
    assert cpu_kernels.tiles(4, 256, 255) == 4 * 64 * 64


def test_patches_hash_is_the_one_in_the_cache_key():
    # scripts/install_caffe.sh puts `patches=<this hash>` into the recipe; caffe_build() matches builds by it.
    script = ("cd scripts/caffe_patches && find . -maxdepth 1 -name '*.patch' -type f | sort | "
              "xargs -r sha256sum | sha256sum | cut -c1-16")
    shell = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert cpu_kernels.patches_hash(cpu_kernels.PATCH_DIR) == shell.strip()


def test_caffe_build_is_named_by_its_folder_and_lists_its_patches():
    build = cpu_kernels.caffe_build()
    if build.path is None:
        pytest.skip("no pycaffe on this interpreter's path (make setup builds it)")
    assert build.key == build.path.name and (build.path / "python" / "caffe").is_dir()
    assert build.patches is not None and build.patches[0].startswith("0001-")
    assert build.has_fcnseg_winograd == (cpu_kernels.FCNSEG_WINOGRAD_PATCH in build.patches)


LINE = "from fcnseg.cpu_kernels import kernel_report, onednn_isa_code; print(hex(onednn_isa_code())); " \
       "print(kernel_report().line())"


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="needs a CPU with AVX2 to cap oneDNN at it")
def test_the_line_under_onednn_capped_at_avx2():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("FCNSEG_CAFFE_WINOGRAD", None)
    env.pop("FCNSEG_CAFFE_DNNL", None)
    isa, line = subprocess.run([sys.executable, "-c", LINE], env=env, capture_output=True, text=True,
                               check=True).stdout.splitlines()
    assert isa == hex(AVX2)
    assert line.startswith(f"CPU: {cpu_family(cpu_flags())} (oneDNN avx2, ONEDNN_MAX_CPU_ISA=AVX2), ")
    assert line.endswith(f"threads; 3x3 convolutions: {conv3x3_kernel(AVX2, cpu_kernels.caffe_build(), env)}")
    threads = subprocess.run([sys.executable, "-c", LINE], env={**env, "OMP_NUM_THREADS": "3"},
                             capture_output=True, text=True, check=True).stdout
    assert ", 3 threads; " in threads


def test_info_prints_the_kernel_line_and_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == cpu_kernels.kernel_report().line()
    text = "\n".join(out)
    assert f"Python {sys.version.split()[0]}" in text and "numpy " in text and "protobuf " in text
    build = cpu_kernels.caffe_build()
    if build.path is not None:
        assert f"Caffe build: key {build.key}; patches: 0001-" in text
        assert any(line.startswith("BLAS: openblas") and "Caffe's" in line for line in out), text
    if cpu_kernels.onednn_version():
        assert any(line.startswith("oneDNN: 2.") for line in out), text
