"""DICOM, NIfTI, HDF5 and Zarr volumes read as slices (fcnseg.dicom, .nifti, .arrays, .volumes) and imported
by `fcnseg data import`: real files shipped inside pydicom's and nibabel's wheels, and volumes written here
with h5py and zarr. No Caffe needed."""
import os
import shutil
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
import yaml

from fcnseg.cli import main
from fcnseg.dataset import datum_array, read_dataset
from fcnseg.errors import DataError
from fcnseg.images import apply_window
from fcnseg.volumes import VolumeOptions, open_volume, volume_format, volume_sources

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
zarr = pytest.importorskip("zarr")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT_SERIES = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 slices of one CT series, file names in descending z
OTHER_SERIES = DICOMDIR_TESTS / "77654033" / "CT2"  # 4 slices of another series
MONOCHROME1 = DICOMDIR_TESTS / "77654033" / "CR1" / "6154"  # a CR image stored MONOCHROME1


def shipped(name: str) -> Path:
    """A file shipped in the pydicom wheel (get_testdata_file finds it locally; nothing is downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in the installed pydicom wheel"
    return Path(path)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# ---- DICOM ---------------------------------------------------------------------------------------------

def test_ct_small_gives_hounsfield_units():
    path = shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    series = open_volume(path)
    assert volume_format(path) == "dicom" and series.shape == (1, 128, 128)
    hu = series.slice(0)
    # pydicom's own modality LUT, and the first stored values 175, 180, 166, 143 minus 1024
    assert np.array_equal(hu, apply_modality_lut(ds.pixel_array, ds))
    assert hu[0, :4].tolist() == [-849.0, -844.0, -858.0, -881.0]
    assert series.record()["values"].endswith("-> HU")


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_implicit.dcm"])
def test_transfer_syntaxes_decode_to_the_same_pixels(name):
    reference = open_volume(shipped("MR_small.dcm")).slice(0)
    assert reference.dtype == np.int16 and reference[10, 10:14].tolist() == [760, 653, 463, 531]
    values = open_volume(shipped(name)).slice(0)
    assert values.dtype == np.int16 and values.dtype.isnative  # big-endian data comes back native
    assert np.array_equal(values, reference)


def test_lossy_jpeg2000_ct_decodes_through_the_openjpeg_plugin():
    path = shipped("693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    assert "JPEG 2000" in ds.file_meta.TransferSyntaxUID.name
    hu = open_volume(path).slice(0)
    assert hu.shape == (512, 512)
    assert np.array_equal(hu, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_monochrome1_is_inverted_and_its_window_mirrored():
    ds = pydicom.dcmread(MONOCHROME1, force=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12
    series = open_volume(MONOCHROME1)
    modality = apply_modality_lut(ds.pixel_array, ds)
    low, high = 0 * 0.684 + 200, 4095 * 0.684 + 200  # the 12-bit stored range through the rescale
    assert np.allclose(series.slice(0), (low + high) - modality, atol=1e-3)
    assert series.slice(0).argmax() == modality.argmin()
    window = series.window_from_file()  # center 1600, width 2800 -> 200..3000, mirrored
    assert window["low"] == pytest.approx(low + high - 3000) and window["high"] == pytest.approx(low + high - 200)
    assert series.record()["monochrome1"] == "inverted"


def test_series_folder_is_sorted_by_position_not_file_name(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    files = sorted(CT_SERIES.iterdir())
    # names that sort in an order unrelated to the positions
    for name, src in zip(["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"], files):
        shutil.copy(src, folder / name)
    series = open_volume(folder)
    assert series.shape == (5, 16, 16)
    z = [float(pydicom.dcmread(s.path, force=True).ImagePositionPatient[2]) for s in series.slices]
    assert z == sorted(z) and z[0] == pytest.approx(-1.2375) and z[-1] == pytest.approx(8.7625)
    for i, s in enumerate(series.slices):
        ds = pydicom.dcmread(s.path, force=True)
        assert np.array_equal(series.slice(i), apply_modality_lut(ds.pixel_array, ds))
    # the affine steps 2.5 mm along z between slices and starts at the lowest slice
    affine = series.affine()
    assert affine[2, 2] == pytest.approx(2.5) and affine[2, 3] == pytest.approx(-1.2375)
    assert series.window_from_file()["low"] == -160.0 and series.window_from_file()["high"] == 240.0


def test_multi_frame_file_gives_its_frames():
    series = open_volume(shipped("rtdose.dcm"))
    frames = pydicom.dcmread(shipped("rtdose.dcm")).pixel_array
    assert series.shape == (15, 10, 10) and series.sorted_by.startswith("per-frame position")
    for i in (0, 7, 14):
        assert np.array_equal(series.slice(i), frames[i])
    assert np.array_equal(series.slice(0), pydicom.dcmread(shipped("rtdose_1frame.dcm")).pixel_array)


def test_two_series_in_a_folder_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in list(CT_SERIES.iterdir()) + list(OTHER_SERIES.iterdir()):
        shutil.copy(src, folder / f"{src.parent.name}_{src.name}")
    masks = tmp_path / "masks.npy"
    np.save(masks, np.zeros((9, 16, 16), np.uint8))
    assert main(["data", "import", "--images", folder, "--labels", masks, "-o", tmp_path / "ds"]) == 2
    err = one_line_error(capsys)
    assert "holds 2 DICOM series" in err and "one series per folder" in err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_dicom_without_pixel_data_is_one_line_exit_2(tmp_path, capsys):
    masks = tmp_path / "masks.npy"
    np.save(masks, np.zeros((1, 8, 8), np.uint8))
    assert main(["data", "import", "--images", shipped("rtplan.dcm"), "--labels", masks, "-o", tmp_path / "ds"]) == 2
    err = one_line_error(capsys)
    assert "rtplan.dcm: DICOM without pixel data" in err
    assert not (tmp_path / "ds").exists()


def test_dicom_import_with_the_files_window_records_hu_and_the_window(tmp_path, capsys):
    masks = np.zeros((5, 16, 16), np.uint8)
    masks[:, 4:12, 4:12] = 1
    np.save(tmp_path / "masks.npy", masks)
    out = tmp_path / "ds"
    assert main(["data", "import", "--images", CT_SERIES, "--labels", tmp_path / "masks.npy", "--val", "4",
                 "--dicom-window", "file", "-o", out]) == 0
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["window"]["low"] == -160.0 and meta["window"]["high"] == 240.0
    assert meta["window"]["method"] == "dicom-file" and meta["window"]["center"] == 40.0
    assert meta["reader"]["format"] == "dicom" and meta["reader"]["values"].endswith("-> HU")
    assert read_dataset(out).reader["window"] == "dicom-file"
    # what the LMDB holds is the HU slice through that window: slice 0 is the lowest position
    series = open_volume(CT_SERIES)
    with lmdb.open(str(out / "train_images_lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        stored = datum_array(txn.get(b"%08d" % 0))[0]
    assert np.array_equal(stored, apply_window(series.slice(0), meta["window"]))


def test_dicom_series_with_a_folder_of_png_masks_pairs_them_by_file_name(tmp_path):
    from fcnseg.images import save_label_png
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, src in enumerate(sorted(CT_SERIES.iterdir())):  # file names 2062 .. 3353: z from high to low
        mask = np.zeros((16, 16), np.uint8)
        mask[:i + 1, :] = 1  # i + 1 rows of foreground identify the file
        save_label_png(masks / f"{src.name}.png", mask)
    out = tmp_path / "ds"
    assert main(["data", "import", "--images", CT_SERIES, "--labels", masks, "--val", "0", "-o", out]) == 0
    with lmdb.open(str(out / "val_labels_lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        first = datum_array(txn.get(b"%08d" % 0))[0]
    assert int(first[:, 0].sum()) == 5  # slice 0 is the lowest position: file 3353, the fifth name
    (masks / "2392.png").unlink()
    with pytest.raises(DataError, match="2392: no mask named 2392"):
        volume_sources(CT_SERIES, masks)


def test_ct_presets_are_centre_and_width_in_hu():
    from fcnseg.volumes.dicom import preset_window
    assert preset_window("soft-tissue")["low"] == -160.0 and preset_window("soft-tissue")["high"] == 240.0
    assert preset_window("lung")["low"] == -1350.0 and preset_window("lung")["high"] == 150.0
    with pytest.raises(DataError, match="unknown; give 'file'"):
        preset_window("kidney")


def test_dicom_window_needs_dicom_and_excludes_window_values(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(DataError, match="either --dicom-window or --window-values"):
        volume_sources(CT_SERIES, tmp_path / "m.npy", VolumeOptions(dicom_window="lung"), (0.0, 1.0))
    nifti = NIB_DATA / "anatomical.nii"
    mask = tmp_path / "mask.nii"
    image = nib.load(nifti)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), mask)
    with pytest.raises(DataError, match="applies to DICOM images"):
        volume_sources(nifti, mask, VolumeOptions(dicom_window="file"))


# ---- NIfTI ---------------------------------------------------------------------------------------------

def test_nifti_slices_along_the_chosen_axis():
    path = NIB_DATA / "anatomical.nii"
    data = np.asanyarray(nib.load(path).dataobj)
    assert data.shape == (33, 41, 25)
    last = open_volume(path)
    assert last.shape == (25, 33, 41) and np.array_equal(last.slice(7), data[:, :, 7])
    first = open_volume(path, VolumeOptions(axis=0))
    assert first.shape == (33, 41, 25) and np.array_equal(first.slice(5), data[5])
    assert last.slice(7).dtype == np.int16 and last.slice(7).dtype.isnative  # stored big-endian
    assert last.record() == {"format": "nifti", "axis": 2, "volume": None}


def test_4d_nifti_needs_a_volume_and_reads_that_one():
    path = NIB_DATA / "example4d.nii.gz"
    with pytest.raises(DataError, match=r"4-D NIfTI of 2 volumes .* --volume T \(0..1\)"):
        open_volume(path)
    volume = open_volume(path, VolumeOptions(volume=1))
    data = np.asanyarray(nib.load(path).dataobj)
    assert volume.shape == (24, 128, 96)
    assert np.array_equal(volume.slice(10), data[:, :, 10, 1])
    with pytest.raises(DataError, match="--volume 2: .* has volumes 0..1"):
        open_volume(path, VolumeOptions(volume=2))


def test_nifti_import_pairs_slices_and_records_the_axis(tmp_path):
    path = NIB_DATA / "anatomical.nii"
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    mask = (data > np.percentile(data, 70)).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, image.affine, image.header), tmp_path / "mask.nii.gz")
    out = tmp_path / "ds"
    assert main(["data", "import", "--images", path, "--labels", tmp_path / "mask.nii.gz", "--val", "20-24",
                 "-o", out]) == 0
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["reader"] == {"format": "nifti", "axis": 2, "volume": None}
    assert meta["splits"]["train"]["samples"] == 20 and meta["splits"]["val"]["samples"] == 5
    assert meta["window"]["method"] == "percentile"  # 16-bit data: the import's own percentile window
    assert meta["splits"]["train"]["class_pixels"][1] == int(mask[:, :, :20].sum())
    with lmdb.open(str(out / "val_labels_lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        assert np.array_equal(datum_array(txn.get(b"%08d" % 2))[0], mask[:, :, 22])


def test_nifti_mask_with_another_affine_is_one_line_exit_2(tmp_path, capsys):
    path = NIB_DATA / "anatomical.nii"
    image = nib.load(path)
    shifted = image.affine.copy()
    shifted[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), shifted), tmp_path / "mask.nii.gz")
    assert main(["data", "import", "--images", path, "--labels", tmp_path / "mask.nii.gz", "-o", tmp_path / "ds"]) == 2
    err = one_line_error(capsys)
    assert "mask.nii.gz: its affine differs from its image" in err and "by up to 4 mm" in err
    assert not (tmp_path / "ds").exists()


# ---- HDF5 / Zarr ---------------------------------------------------------------------------------------

def volume_and_masks(n: int = 6, h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    masks = np.zeros((n, h, w), np.uint8)
    masks[:, 10:30, 12:40] = 1
    images = (1000 + 2000 * masks.astype(np.int64) + rng.integers(0, 300, masks.shape)).astype(np.uint16)
    return images, masks


def test_hdf5_import_with_dataset_keys_in_one_file(tmp_path):
    images, masks = volume_and_masks()
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("volumes/raw", data=images, chunks=(1, 20, 25))
        f.create_dataset("volumes/labels", data=masks)
    out = tmp_path / "ds"
    assert main(["data", "import", "--images", tmp_path / "vol.h5", "--labels", tmp_path / "vol.h5",
                 "--dataset", "volumes/raw", "--label-dataset", "volumes/labels", "--val", "5", "-o", out]) == 0
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["reader"] == {"format": "hdf5", "dataset": "volumes/raw", "axis": 0}
    with lmdb.open(str(out / "val_images_lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        assert np.array_equal(datum_array(txn.get(b"%08d" % 0))[0], apply_window(images[5], meta["window"]))


def test_hdf5_key_that_does_not_exist_is_one_line_exit_2(tmp_path, capsys):
    images, masks = volume_and_masks()
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("raw", data=images)
        f.create_dataset("labels", data=masks)
    assert main(["data", "import", "--images", tmp_path / "vol.h5", "--labels", tmp_path / "vol.h5",
                 "--dataset", "volume", "--label-dataset", "labels", "-o", tmp_path / "ds"]) == 2
    err = one_line_error(capsys)
    assert "--dataset volume:" in err and "has no dataset 'volume'; it holds labels, raw" in err
    assert not (tmp_path / "ds").exists()


def test_zarr_slices_are_read_lazily_along_the_axis(tmp_path):
    images, _ = volume_and_masks()
    array = zarr.create_array(str(tmp_path / "vol.zarr"), shape=images.shape, chunks=(1, 20, 25), dtype="uint16")
    array[:] = images
    volume = open_volume(tmp_path / "vol.zarr", VolumeOptions(axis=2))
    assert volume_format(tmp_path / "vol.zarr") == "zarr"
    assert volume.shape == (50, 6, 40) and np.array_equal(volume.slice(13), images[:, :, 13])
    assert np.array_equal(volume.region(2, slice(5, 9), slice(1, 3)), images[5:9, 1:3, 2])
    assert volume.chunks == (25, 1, 20)


def test_ome_zarr_group_gives_its_full_resolution_level(tmp_path):
    images, masks = volume_and_masks()
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "czyx"],
                                  "datasets": [{"path": "0"}, {"path": "1"}]}]
    root.create_array("0", shape=(1, *images.shape), chunks=(1, 1, 20, 25), dtype="uint16")[:] = images[None]
    root.create_array("1", shape=(1, 6, 20, 25), dtype="uint16")
    volume = open_volume(tmp_path / "img.ome.zarr")
    assert volume.key == "0" and volume.shape == (6, 40, 50)
    assert np.array_equal(volume.slice(3), images[3])
    out = tmp_path / "ds"
    np.save(tmp_path / "masks.npy", masks)
    assert main(["data", "import", "--images", tmp_path / "img.ome.zarr", "--labels", tmp_path / "masks.npy",
                 "--val", "0", "-o", out]) == 0
    assert yaml.safe_load((out / "dataset.yaml").read_text())["reader"]["dataset"] == "0"


def test_volume_options_on_plain_images_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8), np.uint16))
    np.save(tmp_path / "m.npy", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="--axis: apply to volumes"):
        volume_sources(tmp_path / "a.npy", tmp_path / "m.npy", VolumeOptions(axis=1))
    assert volume_sources(tmp_path / "a.npy", tmp_path / "m.npy") is None


def test_inference_facts_carry_the_reader_and_old_files_read_without_it(tmp_path):
    from fcnseg.runs import InferenceFacts
    facts = {"num_classes": 2, "classes": ["a", "b"], "ignore_label": 255, "window": None, "mean": 1.0,
             "scale": 1.0, "input_channels": 1, "pad": "minimal", "arch": "fcn32s", "stages": 2, "net_stride": 4,
             "input_multiple": 4, "dataset": None, "fcnseg_version": "0"}
    assert InferenceFacts.from_dict(facts, "x").reader is None
    reader = {"format": "nifti", "axis": 1, "volume": None}
    assert InferenceFacts.from_dict({**facts, "reader": reader}, "x").reader == reader
    options = VolumeOptions().with_defaults(reader, "nifti")
    assert options.axis == 1 and VolumeOptions(axis=0).with_defaults(reader, "nifti").axis == 0
    assert VolumeOptions().with_defaults(reader, "hdf5").axis is None


def test_no_test_file_needs_a_download():
    # every pydicom file these tests read ships in the wheel
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm",
                 "693_J2KI.dcm", "rtdose.dcm", "rtplan.dcm"):
        assert os.path.isfile(shipped(name))
    assert MONOCHROME1.is_file() and CT_SERIES.is_dir() and OTHER_SERIES.is_dir()
