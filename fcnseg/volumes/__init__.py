"""Volumes as stacks of 2-D slices: DICOM, NIfTI, HDF5 and Zarr, for `data import` and `infer`.

One door for the four readers (`fcnseg.dicom`, `fcnseg.nifti`, `fcnseg.arrays`): `volume_format(path)`
tells whether a path is a volume, `open_volume(path, options)` opens it as slices (`.shape` = slices,
rows, columns; `.slice(i)` reads one on demand; `.where(i)` names it; `.record()` says how it was read).
Everything after reading is the import's and infer's own: the percentile window, 16-bit handling,
tiling and the LMDBs see the slices exactly as they see the frames of a TIFF stack.

`volume_sources(images, labels, options)` is the import's hook: the image and mask volumes (or a volume
and a TIFF/.npy mask stack, or for a DICOM series folder a folder of mask images named like its slice
files) checked against each other (slice count and size; shape and affine for two
NIfTI files) and paired slice by slice, with the window a DICOM asks for and the `reader` record that
dataset.yaml keeps and training copies into inference.yaml, so that `infer` reads new volumes the same
way (same axis, volume, dataset key; DICOM values through the modality LUT).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from ..images import MASK_SUFFIXES, check_values, fixed_window, read_mask, read_stack
from .arrays import ArrayVolume, is_hdf5, is_zarr, open_array
from .dicom import DicomSeries, folder_has_dicom, looks_like_dicom, open_dicom, preset_window
from .nifti import NiftiVolume, check_same_grid, is_nifti, nifti_stem, open_nifti

VOLUME_FORMATS = ("dicom", "nifti", "hdf5", "zarr")


@dataclass(frozen=True)
class VolumeOptions:
    """How to read volumes (all optional): `axis` to slice along (NIfTI default 2, HDF5/Zarr default 0),
    `volume` of a 4-D NIfTI, `dataset` key / array path inside an HDF5 file or Zarr store (`label_dataset`
    for the masks, default `dataset`), and `dicom_window`: 'file' (the DICOM's Window Center/Width) or a
    CT preset name (dicom.WINDOW_PRESETS)."""

    axis: Optional[int] = None
    volume: Optional[int] = None
    dataset: Optional[str] = None
    label_dataset: Optional[str] = None
    dicom_window: Optional[str] = None

    def given(self) -> list[str]:
        """The options set, as their command-line names."""
        names = {"axis": "--axis", "volume": "--volume", "dataset": "--dataset", "label_dataset": "--label-dataset",
                 "dicom_window": "--dicom-window"}
        return [flag for key, flag in names.items() if getattr(self, key) is not None]

    def with_defaults(self, reader: Optional[dict], fmt: str) -> "VolumeOptions":
        """These options, with what is not given taken from a dataset's `reader` record of the same format
        (inference reads a new volume the way the training volume was read)."""
        if not reader or reader.get("format") != fmt:
            return self
        return VolumeOptions(self.axis if self.axis is not None else reader.get("axis"),
                             self.volume if self.volume is not None else reader.get("volume"),
                             self.dataset if self.dataset is not None else reader.get("dataset"),
                             self.label_dataset, self.dicom_window)


def volume_format(path: str | Path) -> Optional[str]:
    """'dicom', 'nifti', 'hdf5' or 'zarr' when `path` is a volume fcnseg reads as slices, else None
    (an ordinary image, stack or folder of images)."""
    path = Path(path)
    if path.is_dir():
        if is_zarr(path):
            return "zarr"
        return "dicom" if folder_has_dicom(path) else None
    if not path.is_file():
        return None
    if is_nifti(path):
        return "nifti"
    if is_hdf5(path):
        return "hdf5"
    if path.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy"):
        return None
    return "dicom" if looks_like_dicom(path) else None


def volume_stem(path: str | Path) -> str:
    """The name outputs of a volume start with: the file name without .nii/.nii.gz/.h5/.zarr/.dcm."""
    path = Path(path)
    if is_nifti(path):
        return nifti_stem(path)
    name = path.name[:-len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.name
    return Path(name).stem if Path(name).suffix else name


Volume = DicomSeries | NiftiVolume | ArrayVolume


def open_volume(path: str | Path, options: VolumeOptions = VolumeOptions(), option: str = "--dataset") -> Volume:
    """`path` (a `volume_format`) opened as slices with `options` (`option` names the dataset key in
    messages). DataError naming the file for anything unreadable or an option that does not apply to it."""
    path = Path(path)
    fmt = volume_format(path)
    if fmt is None:
        raise DataError(f"{path}: not a DICOM, NIfTI, HDF5 or Zarr volume")
    if fmt != "nifti" and options.volume is not None:
        raise DataError(f"--volume {options.volume}: applies to 4-D NIfTI files, not {path}")
    if fmt in ("dicom", "nifti") and options.dataset is not None:
        raise DataError(f"{option} {options.dataset}: applies to HDF5 files and Zarr stores, not {path}")
    if fmt == "dicom":
        if options.axis is not None:
            raise DataError(f"--axis {options.axis}: a DICOM series is sliced as stored (its slices or frames); "
                            "drop --axis")
        return open_dicom(path)
    if fmt == "nifti":
        return open_nifti(path, options.axis, options.volume)
    return open_array(path, options.dataset, options.axis, option)


@dataclass
class _Stack:
    """A TIFF/.npy mask stack beside an image volume, in the slice interface."""

    path: Path
    frames: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.frames.shape)

    def slice(self, index: int) -> np.ndarray:
        return self.frames[index]

    def where(self, index: int) -> str:
        return f"{self.path} frame {index}"


@dataclass
class VolumeSources:
    """What the import reads from a pair of volumes: one entry per slice (the fields of data.Pair:
    name, key, image reader, mask reader, image name, mask name), the window a DICOM asked for (None:
    the import decides as usual) and the reader record for dataset.yaml."""

    pairs: list[tuple[str, str, Callable[[], np.ndarray], Callable[[], np.ndarray], str, str]]
    window: Optional[dict]
    reader: dict
    volumes: list = field(default_factory=list)


def volume_sources(images: str | Path, labels: str | Path, options: VolumeOptions = VolumeOptions(),
                   window_values: Optional[tuple[float, float]] = None) -> Optional[VolumeSources]:
    """The slices of the volume `images` paired with those of `labels` (a volume, or a TIFF/.npy stack of
    one mask per slice), or None when neither is a volume and no volume option is given.

    Raises DataError for volumes that do not match (slice count, slice size, NIfTI shape and affine), a
    --dicom-window on something else than DICOM or together with --window-values, and the readers' errors.
    """
    images, labels = Path(images), Path(labels)
    image_fmt, label_fmt = volume_format(images), volume_format(labels)
    if image_fmt is None and label_fmt is None:
        if options.given():
            raise DataError(f"{', '.join(options.given())}: apply to volumes (DICOM, NIfTI, HDF5, Zarr), but "
                            f"--images {images} and --labels {labels} are not")
        return None
    if image_fmt is None:
        raise DataError(f"--images {images}: masks given as a {label_fmt} volume need their images as a volume "
                        "too (DICOM, NIfTI, HDF5, Zarr)")
    image = open_volume(images, VolumeOptions(options.axis, options.volume, options.dataset))
    if label_fmt is None and labels.is_dir():
        mask = _mask_folder(image, labels)
    elif label_fmt is None:
        mask = _Stack(labels, read_stack(labels, "mask"))
    elif label_fmt == "dicom":
        raise DataError(f"--labels {labels}: DICOM masks (SEG, RTSTRUCT) are not read; save the masks as "
                        "NIfTI, or as a TIFF/.npy stack with one mask per slice")
    else:
        dataset = options.label_dataset or (options.dataset if label_fmt == image_fmt else None)
        if images.resolve() == labels.resolve() and dataset == options.dataset:
            raise DataError(f"--labels {labels}: the same array as --images; name the masks' array with "
                            "--label-dataset KEY")
        mask = open_volume(labels, VolumeOptions(None if image_fmt == "dicom" else options.axis,
                                                 dataset=dataset if label_fmt in ("hdf5", "zarr") else None),
                           "--label-dataset" if options.label_dataset else "--dataset")
    if isinstance(image, NiftiVolume) and isinstance(mask, NiftiVolume):
        check_same_grid(image, mask)
    if isinstance(image, DicomSeries) and isinstance(mask, NiftiVolume):
        mask = _on_dicom_grid(image, mask)
    if image.shape != mask.shape:
        raise DataError(f"{_name(mask)} has {_shape_text(mask.shape)} but {_name(image)} has "
                        f"{_shape_text(image.shape)}; image and mask volumes are paired slice by slice")
    window = _dicom_window(image, options.dicom_window, window_values)
    reader = image.record()
    if window is not None:
        reader["window"] = window["method"]
    pairs = [(f"{images.name}#{i}", str(i),
              (lambda i=i: image.slice(i)),
              (lambda i=i: _mask_slice(mask, i)),
              image.where(i), mask.where(i))
             for i in range(image.shape[0])]
    return VolumeSources(pairs, window, reader, [image, mask])


@dataclass
class _MaskFolder:
    """One mask file per DICOM slice file, paired by file stem (slice i's file a.dcm with a.png)."""

    path: Path
    files: list[Path]
    rows: int
    columns: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.files), self.rows, self.columns

    def slice(self, index: int) -> np.ndarray:
        return read_mask(self.files[index])

    def where(self, index: int) -> str:
        return str(self.files[index])


def _mask_folder(image, folder: Path) -> _MaskFolder:
    """Masks for a DICOM series folder given as a folder of mask images named like the slice files."""
    if not isinstance(image, DicomSeries) or any(s.frame is not None for s in image.slices):
        raise DataError(f"--labels {folder}: a folder of masks pairs with a DICOM series folder by file stem; give "
                        "the masks of this volume as one NIfTI, HDF5, Zarr, TIFF or .npy stack")
    by_stem = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in MASK_SUFFIXES}
    files = []
    for s in image.slices:
        stem = s.path.stem if s.path.suffix.lower() in (".dcm", ".dicom", ".ima") else s.path.name
        if stem not in by_stem:
            raise DataError(f"{s.path}: no mask named {stem}{{{','.join(MASK_SUFFIXES)}}} in {folder}; masks for a "
                            "DICOM series folder are paired with the slice files by name")
        files.append(by_stem[stem])
    return _MaskFolder(folder, files, image.rows, image.columns)


def _name(volume) -> str:
    return volume.name() if isinstance(volume, ArrayVolume) else str(volume.path)


@dataclass
class _Transposed:
    """A NIfTI mask volume on a DICOM series' grid, read as (slice, row, column) like the series."""

    volume: NiftiVolume

    @property
    def path(self) -> Path:
        return self.volume.path

    @property
    def shape(self) -> tuple[int, int, int]:
        n, i, j = self.volume.shape
        return n, j, i

    def slice(self, index: int) -> np.ndarray:
        return self.volume.slice(index).T

    def where(self, index: int) -> str:
        return self.volume.where(index)


def _on_dicom_grid(series: DicomSeries, mask: NiftiVolume) -> _Transposed:
    """A NIfTI mask for a DICOM series must lie on the grid `fcnseg infer` writes for the series (i = column,
    j = row, k = slice, `DicomSeries.affine`): checked here, so that a mask from another grid (a flipped
    dcm2niix conversion, another series) is refused instead of silently misaligned."""
    expected = series.affine()
    if mask.axis != 2 or mask.spatial_shape != (series.columns, series.rows, len(series.slices)) \
            or not np.allclose(mask.affine, expected, atol=1e-2):
        raise DataError(f"{mask.path}: not on the voxel grid of the DICOM series {series.source} (expected "
                        f"{series.columns}x{series.rows}x{len(series.slices)} voxels, columns x rows x slices, with "
                        f"the series' affine); save the mask on that grid (as `fcnseg infer` writes its labels "
                        "for this series), or as a TIFF/.npy stack of one mask per slice in fcnseg's slice order")
    return _Transposed(mask)


def _shape_text(shape) -> str:
    return f"{shape[0]} slices of {shape[1]}x{shape[2]}"


def _mask_slice(mask, index: int) -> np.ndarray:
    """A mask slice, checked as `images.read_mask` checks a mask file (integer class ids)."""
    return check_values(np.asarray(mask.slice(index))[None], mask.where(index), "mask")[0]


def _dicom_window(image, choice: Optional[str], window_values) -> Optional[dict]:
    if choice is None:
        return None
    if not isinstance(image, DicomSeries):
        raise DataError(f"--dicom-window {choice}: applies to DICOM images; give --window-values LO,HI instead")
    if window_values is not None:
        raise DataError("give either --dicom-window or --window-values, not both")
    window = image.window_from_file() if choice == "file" else preset_window(choice)
    return {**window, **fixed_window(window["low"], window["high"]), "method": window["method"]}


def describe_reader(reader: dict) -> str:
    """One line on how a dataset's volumes were read: what an exported model's input values must be."""
    fmt = reader.get("format")
    if fmt == "dicom":
        text = f"DICOM {reader.get('modality') or ''} slices, {reader.get('values')}".replace("  ", " ")
        if reader.get("monochrome1"):
            text += ", MONOCHROME1 inverted"
        if reader.get("window"):
            text += f", window from {reader['window']}"
        return text + "; feed those values (fcnseg infer reads DICOM this way)"
    if fmt == "nifti":
        volume = f", volume {reader['volume']}" if reader.get("volume") is not None else ""
        return f"NIfTI slices along axis {reader.get('axis')}{volume}, values as stored (scl_slope/inter applied)"
    return (f"{fmt} array{' ' + repr(reader.get('dataset')) if reader.get('dataset') else ''} sliced along axis "
            f"{reader.get('axis')}, values as stored")
