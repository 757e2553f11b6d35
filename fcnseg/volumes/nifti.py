"""NIfTI volumes (`.nii`, `.nii.gz`, NIfTI-1 and -2, with nibabel) as slices, and label volumes back.

`open_nifti(path, axis, volume)` gives a `NiftiVolume`: a 3-D volume (or volume `volume` of a 4-D one)
cut into 2-D slices along `axis` (default the last spatial axis, k), each read on demand through
nibabel's array proxy (an uncompressed `.nii` is memory-mapped; scl_slope/scl_inter are applied, as
nibabel's `dataobj` does). A slice keeps the other two axes in their stored order, so no transpose is
ever needed to write labels back: `save_labels(labels, path)` writes the label volume with the input's
affine and header (uint8, no scaling, the qform/sform codes kept), so it overlays in 3D Slicer,
ITK-SNAP, FSLeyes or napari.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import files
from ..errors import DataError
from ..images import check_decoded_size
from ..geometry import sliced_shape

NIFTI_SUFFIXES = (".nii", ".nii.gz")
AFFINE_TOLERANCE = 1e-3  # mm: image and mask affines closer than this are the same grid


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """`path`'s name without .nii / .nii.gz."""
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4] if name.lower().endswith(".nii") else path.stem


def _nibabel():
    try:
        import nibabel  # noqa: PLC0415 - optional dependency (fcnseg[formats])
    except ImportError:
        raise DataError("reading NIfTI needs nibabel: pip install 'fcnseg[formats]'") from None
    return nibabel


@dataclass
class NiftiVolume:
    """One 3-D volume of a NIfTI file, sliced along `axis` (see the module docstring)."""

    path: Path
    image: object  # the nibabel image
    axis: int
    volume: Optional[int]  # the 4-D index, None for a 3-D file

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[:3])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns): the slicing axis first, the other two in stored order."""
        return sliced_shape(self.spatial_shape, self.axis)

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.image.affine, np.float64)

    def where(self, index: int) -> str:
        return f"{self.path} slice {index} (axis {self.axis}" + (f", volume {self.volume})" if self.volume is not None
                                                                 else ")")

    def slice(self, index: int) -> np.ndarray:
        """Slice `index` along the axis, values as stored (scaled by scl_slope/inter when the header says so)."""
        where: list = [slice(None)] * 3
        where[self.axis] = index
        if self.volume is not None:
            where.append(self.volume)
        try:
            array = np.asanyarray(self.image.dataobj[tuple(where)])
        except Exception as exc:  # noqa: BLE001 - any decoding failure (truncated gzip, ...) is a bad file
            raise DataError(f"{self.where(index)}: cannot read ({exc.__class__.__name__}: {exc})") from None
        array = np.asarray(array)
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def record(self) -> dict:
        return {"format": "nifti", "axis": self.axis, "volume": self.volume}

    def label_volume(self, slices: np.ndarray) -> np.ndarray:
        """(slices, rows, columns) labels back in the file's spatial axis order."""
        return np.moveaxis(np.asarray(slices), 0, self.axis)

    def save_labels(self, labels: np.ndarray, path: Path) -> None:
        """Write `labels` (spatial shape, uint8) as a NIfTI file at `path` (.nii or .nii.gz) with this
        volume's affine and header: data type uint8, no scaling, 3-D, qform/sform and their codes kept."""
        header = self.image.header.copy()
        header.set_data_dtype(np.uint8)
        out = type(self.image)(np.asarray(labels, np.uint8), self.image.affine, header)
        out.header.set_slope_inter(1.0, 0.0)
        qform, qcode = self.image.get_qform(coded=True)
        sform, scode = self.image.get_sform(coded=True)
        out.set_qform(self.image.get_qform(), int(qcode) if qform is not None else 0)
        out.set_sform(self.image.get_sform(), int(scode) if sform is not None else 0)
        out.header["cal_min"], out.header["cal_max"] = 0, int(labels.max()) if labels.size else 0
        data = out.to_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.compress(data, compresslevel=6)
        files.write_bytes_atomic(path, data)


def open_nifti(path: str | Path, axis: Optional[int] = None, volume: Optional[int] = None,
               option: str = "--axis") -> NiftiVolume:
    """The NIfTI file `path` sliced along `axis` (0, 1 or 2; default 2, the last spatial axis). A 4-D file
    needs `volume` (its index along the 4th axis) unless it holds one volume. DataError naming the file for
    an unreadable file, a 5-D+ file, a missing or out-of-range volume or axis."""
    nib = _nibabel()
    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, reported in one line
        raise DataError(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise DataError(f"{path}: a NIfTI header with {len(shape)} dimension(s) {shape}; the file is damaged")
    if len(shape) == 2:
        raise DataError(f"{path}: a 2-D NIfTI ({shape[0]}x{shape[1]}); fcnseg reads NIfTI volumes: save it as PNG "
                        "or TIFF, or as a 3-D volume with one slice")
    if len(shape) > 4 and any(n != 1 for n in shape[4:]):
        raise DataError(f"{path}: a {len(shape)}-D NIfTI of shape {shape}; fcnseg reads 3-D volumes and one volume "
                        "of a 4-D series")
    if len(shape) >= 4 and shape[3] > 1:
        if volume is None:
            raise DataError(f"{path}: a 4-D NIfTI of {shape[3]} volumes ({'x'.join(map(str, shape[:3]))} each); "
                            f"choose one with --volume T (0..{shape[3] - 1})")
        if not 0 <= volume < shape[3]:
            raise DataError(f"--volume {volume}: {path} has volumes 0..{shape[3] - 1}")
    elif volume not in (None, 0):
        raise DataError(f"--volume {volume}: {path} is a 3-D volume; drop --volume")
    else:
        volume = 0 if len(shape) >= 4 else None
    axis = 2 if axis is None else axis
    if axis not in (0, 1, 2):
        raise DataError(f"{option} {axis}: a NIfTI volume has spatial axes 0, 1, 2 (i, j, k); 2 slices along k")
    if 0 in shape[:3]:
        raise DataError(f"{path}: a NIfTI volume of {'x'.join(map(str, shape[:3]))} voxels holds none; the file is "
                        "damaged")
    check_decoded_size(path, [n for i, n in enumerate(shape[:3]) if i != axis], image.get_data_dtype().itemsize)
    return NiftiVolume(path, image, axis, volume)


def check_same_grid(image: NiftiVolume, mask: NiftiVolume) -> None:
    """DataError when a mask volume is not on its image's voxel grid (shape and affine)."""
    if image.spatial_shape != mask.spatial_shape:
        raise DataError(f"{mask.path}: mask volume is {'x'.join(map(str, mask.spatial_shape))} but its image "
                        f"{image.path} is {'x'.join(map(str, image.spatial_shape))}; they must match voxel for voxel")
    if not np.allclose(image.affine, mask.affine, atol=AFFINE_TOLERANCE):
        diff = float(np.abs(image.affine - mask.affine).max())
        raise DataError(f"{mask.path}: its affine differs from its image {image.path}'s (by up to {diff:.4g} mm), so "
                        "the mask sits elsewhere in space; resample it onto the image's grid (e.g. in 3D Slicer or "
                        "with nibabel.processing.resample_from_to) and save it again")
