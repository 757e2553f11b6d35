"""`fcnseg infer` on volumes (fcnseg.volume_infer): NIfTI and DICOM back to NIfTI in the input's geometry,
HDF5/Zarr block by block into Zarr, in one process and on a 2-worker Dask cluster, restartable. Tiny run
with random weights (conftest.make_run)."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_run, raw_image
from fcnseg.cli import main
from fcnseg.distribute import MANIFEST_FILE, connect, infer_on_cluster
from fcnseg.predict import InferOptions, label_image, load_predictor
from fcnseg.volume_infer import fill_label

pytest.importorskip("caffe")
nib = pytest.importorskip("nibabel")
zarr = pytest.importorskip("zarr")
pydicom = pytest.importorskip("pydicom")

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
CT_SERIES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("volumes"))


@pytest.fixture(scope="module")
def hu_run(tmp_path_factory) -> Path:
    """A run whose window is the CT soft-tissue window in HU, as a DICOM import with --dicom-window makes."""
    return make_run(tmp_path_factory.mktemp("hu"), window={"low": -160.0, "high": 240.0, "method": "dicom-preset"})


def labels_of(run: Path, image: np.ndarray) -> np.ndarray:
    _, probs, _ = label_image(load_predictor(run), image)
    return probs.argmax(axis=0).astype(np.uint8)


def test_nifti_labels_come_back_with_the_inputs_affine_and_header(tmp_path):
    source = NIB_DATA / "anatomical.nii"
    run = make_run(tmp_path / "r", window={"low": 0.0, "high": 1000.0, "method": "fixed"})
    assert main(["infer", "--run", run, source, "-o", tmp_path / "out"]) == 0
    written = nib.load(tmp_path / "out" / "anatomical_labels.nii")
    image = nib.load(source)
    assert written.shape == image.shape and written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, image.affine)
    for key in ("qform_code", "sform_code", "pixdim", "dim_info"):
        assert np.array_equal(written.header[key], image.header[key]), key
    labels = np.asanyarray(written.dataobj)
    data = np.asanyarray(image.dataobj)
    for k in (0, 12, 24):  # each slice is what infer gives the slice as a 2-D image
        assert np.array_equal(labels[:, :, k], labels_of(run, data[:, :, k]))


def test_4d_nifti_gives_the_chosen_volumes_labels(tmp_path):
    source = NIB_DATA / "example4d.nii.gz"
    run = make_run(tmp_path / "r", window={"low": 0.0, "high": 2000.0, "method": "fixed"})
    assert main(["infer", "--run", run, source, "--volume", "1", "--axis", "0", "-o", tmp_path / "out"]) == 0
    written = nib.load(tmp_path / "out" / "example4d_labels.nii.gz")
    assert written.shape == (128, 96, 24) and np.array_equal(written.affine, nib.load(source).affine)
    data = np.asanyarray(nib.load(source).dataobj)[..., 1]
    assert np.array_equal(np.asanyarray(written.dataobj)[40], labels_of(run, data[40]))


def test_dicom_series_labels_are_a_nifti_on_the_series_grid(hu_run, tmp_path):
    from fcnseg.volumes import open_volume
    assert main(["infer", "--run", hu_run, CT_SERIES, "-o", tmp_path / "out"]) == 0
    written = nib.load(tmp_path / "out" / "CT5N_labels.nii.gz")
    series = open_volume(CT_SERIES)
    assert written.shape == (16, 16, 5)  # columns, rows, slices
    assert np.allclose(written.affine, series.affine()) and int(written.header["sform_code"]) == 1
    # the lowest slice (k = 0) is the HU slice through the run's window
    assert np.array_equal(np.asanyarray(written.dataobj)[:, :, 0].T, labels_of(hu_run, series.slice(0)))
    # and a NIfTI mask on that grid is accepted as the series' mask by the import
    from fcnseg.volumes import volume_sources
    sources = volume_sources(CT_SERIES, tmp_path / "out" / "CT5N_labels.nii.gz")
    assert np.array_equal(sources.pairs[0][3](), np.asanyarray(written.dataobj)[:, :, 0].T)


def sparse_volume(folder: Path) -> Path:
    """A Zarr volume of 4 slices of 300 x 260, chunks of 1 x 96 x 96, with content in two places only."""
    array = zarr.create_array(str(folder / "vol.zarr"), shape=(4, 300, 260), chunks=(1, 96, 96), dtype="uint16",
                              fill_value=0)
    array[1, 20:200, 30:250] = raw_image(180, 220, seed=1)
    array[3, 200:300, 0:90] = raw_image(100, 90, seed=2)
    return folder / "vol.zarr"


@pytest.fixture(scope="module")
def zarr_reference(run, tmp_path_factory):
    """The single-process labels of the sparse volume, from the Zarr store and from the same array in HDF5."""
    folder = tmp_path_factory.mktemp("zarr")
    volume = sparse_volume(folder)
    with h5py.File(folder / "vol.h5", "w") as f:
        f.create_dataset("raw", data=zarr.open_array(str(volume))[:], chunks=(1, 96, 96))
    assert main(["infer", "--run", run, volume, "-o", folder / "one"]) == 0
    assert main(["infer", "--run", run, folder / "vol.h5", "--dataset", "raw", "-o", folder / "h5"]) == 0
    return folder, zarr.open_array(str(folder / "one" / "vol_labels.zarr"))


def test_zarr_blocks_skip_the_fill_and_agree_with_hdf5(run, zarr_reference):
    folder, labels = zarr_reference
    assert labels.shape == (4, 300, 260) and labels.dtype == np.uint8 and labels.chunks == (1, 96, 96)
    record = dict(labels.attrs)["fcnseg"]
    predictor = load_predictor(run)
    from fcnseg.volumes import open_volume
    fill, fraction = fill_label(predictor, open_volume(folder / "vol.zarr"), InferOptions())
    assert labels.fill_value == fill == record["fill_label"] and record["fill_label_fraction"] == fraction
    # slices 0 and 2 are empty and were never written; slice 1 and 3 only where content is within reach
    assert labels.nchunks_initialized < 4 * 4 * 3 and labels.nchunks_initialized > 0
    assert np.all(labels[0] == fill) and np.all(labels[2] == fill)
    assert np.array_equal(labels[:], zarr.open_array(str(folder / "h5" / "vol_labels.zarr"))[:])
    # away from the block edges, a block's labels are the whole slice's
    whole = labels_of(run, zarr.open_array(str(folder / "vol.zarr"))[1])
    assert np.array_equal(labels[1, 100:180, 40:60], whole[100:180, 40:60])


@pytest.mark.slow  # a 2-worker cluster (~20-40 s on 2 shared cores)
def test_workers_write_the_same_zarr_and_resume_only_missing_blocks(run, zarr_reference, tmp_path):
    folder, reference = zarr_reference
    out = tmp_path / "out"
    with connect(workers=2) as client:
        nifti = NIB_DATA / "anatomical.nii"
        result = infer_on_cluster(client, run, [folder / "vol.zarr", nifti], out, InferOptions(), report=print)
        assert result.exit_code == 0 and result.images == 2
        written = zarr.open_array(str(out / "vol_labels.zarr"))
        assert np.array_equal(written[:], reference[:])
        assert main(["infer", "--run", run, nifti, "-o", tmp_path / "one"]) == 0  # a NIfTI is one task
        cluster, single = (nib.load(p) for p in (out / "anatomical_labels.nii", tmp_path / "one" / "anatomical_labels.nii"))
        assert np.array_equal(cluster.affine, single.affine)
        # the same labels, up to BLAS rounding (workers run single-threaded) flipping a near tie
        assert np.mean(np.asanyarray(cluster.dataobj) == np.asanyarray(single.dataobj)) > 0.999
        (out / "anatomical_labels.nii").unlink()
        lines = [line for line in (out / MANIFEST_FILE).read_text().splitlines() if "anatomical" not in line]
        done = [json.loads(line) for line in lines if '"done"' in line]
        assert sorted(d["frame"] for d in done) == list(range(4 * 4 * 3))
        # as if killed after the first 20 blocks: the manifest lost the rest, and their chunks hold garbage
        kept = lines[:2] + [line for line in lines[2:] if json.loads(line)["frame"] < 20]
        (out / MANIFEST_FILE).write_text("\n".join(kept) + "\n")
        written[1, 0:96, 96:192] = 7  # block 13, done before the 'kill'
        written[1, 192:288, 192:260] = 7  # block 20, not done
        again = infer_on_cluster(client, run, [folder / "vol.zarr"], out, InferOptions(), report=print)
    assert again.exit_code == 0
    redone = [json.loads(line)["frame"] for line in (out / MANIFEST_FILE).read_text().splitlines()[len(kept):]]
    assert sorted(redone) == list(range(20, 48))
    assert np.all(written[1, 0:96, 96:192] == 7)  # not recomputed
    assert np.array_equal(written[1, 192:288, 192:260], reference[1, 192:288, 192:260])
    assert np.array_equal(written[2:], reference[2:])


def test_bad_volume_inputs_are_listed_and_exit_2(run, tmp_path, capsys):
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 8, 8), np.uint16))
    assert main(["infer", "--run", run, tmp_path / "vol.h5", "--dataset", "nope", "-o", tmp_path / "out"]) == 2
    assert "has no dataset 'nope'; it holds raw" in capsys.readouterr().err
    assert main(["infer", "--run", run, NIB_DATA / "anatomical.nii", "--overlay", "-o", tmp_path / "out"]) == 2
    assert "--overlay and --probs write 2-D pictures" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())
    shutil.rmtree(tmp_path / "out")


def test_export_carries_the_reader_and_onnx_infer_reads_dicom_the_same_way(hu_run, tmp_path, capsys):
    import yaml

    from fcnseg.export import export_onnx
    hu_run = Path(shutil.copytree(hu_run, tmp_path / "run"))  # a copied run folder works without its dataset
    facts = yaml.safe_load((hu_run / "inference.yaml").read_text())
    facts["reader"] = {"format": "dicom", "modality": "CT", "values": "modality LUT (rescale slope/intercept) -> HU",
                       "monochrome1": None, "sorted_by": "position along the slice normal", "window": "dicom-preset"}
    (hu_run / "inference.yaml").write_text(yaml.safe_dump(facts))
    result = export_onnx(hu_run, tmp_path / "m.onnx", with_preprocessing=True)
    assert any(line.startswith("trained on volumes: DICOM CT slices") and "HU" in line for line in result.lines())
    onnx = pytest.importorskip("onnx")
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["reader"]["format"] == "dicom"
    assert main(["infer", "--onnx", tmp_path / "m.onnx", CT_SERIES, "-o", tmp_path / "onnx"]) == 0
    assert main(["infer", "--run", hu_run, CT_SERIES, "-o", tmp_path / "caffe"]) == 0
    onnx_labels = np.asanyarray(nib.load(tmp_path / "onnx" / "CT5N_labels.nii.gz").dataobj)
    caffe_labels = np.asanyarray(nib.load(tmp_path / "caffe" / "CT5N_labels.nii.gz").dataobj)
    assert np.mean(onnx_labels == caffe_labels) > 0.99  # float rounding may flip a tie, nothing more
