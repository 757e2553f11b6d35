"""Chunked array volumes: an HDF5 dataset (h5py) or a Zarr / OME-Zarr array (zarr 3), read lazily.

`open_array(path, dataset, axis)` gives an `ArrayVolume` cut into 2-D slices along `axis` (default 0, the
z of a z, y, x array): only what is indexed is read from disk, slice by slice or (`region`) a window of
a slice, so a volume larger than memory is never whole in RAM.

- HDF5 (`.h5`, `.hdf5`, `.hdf`): `dataset` is the key of the dataset inside the file ("raw",
  "volumes/raw"); it may be left out when the file holds exactly one dataset.
- Zarr (a folder with `zarr.json`, or `.zarray`/`.zgroup` for Zarr 2): the path may point at the array
  itself, or at a group with `dataset` the array's path inside it. An OME-Zarr image group (with
  `multiscales` metadata) without `dataset` gives its full-resolution level, the first of its datasets.
- Arrays with more than three axes (OME-Zarr's t, c, z, y, x) must have every axis but the last three
  of length 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..geometry import sliced_shape

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def is_hdf5(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in HDF5_SUFFIXES


def is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def _zarr():
    try:
        import zarr  # noqa: PLC0415 - optional dependency (fcnseg[formats])
    except ImportError:
        raise DataError("reading Zarr needs zarr: pip install 'fcnseg[formats]'") from None
    return zarr


@dataclass
class ArrayVolume:
    """A 3-D array (HDF5 dataset or Zarr array) sliced along `axis` (see the module docstring)."""

    path: Path
    format: str  # "hdf5" or "zarr"
    key: Optional[str]  # the dataset key (HDF5) or array path inside the store (Zarr), None for the root
    array: object  # h5py.Dataset or zarr.Array
    axis: int
    lead: int  # leading axes of length 1 (OME-Zarr t, c) dropped before the three spatial ones

    @property
    def full_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[self.lead:])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns): the slicing axis first, the other two in stored order."""
        return sliced_shape(self.full_shape, self.axis)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, int, int]:
        """The storage chunk in (slices, rows, columns) order (the whole array when not chunked)."""
        stored = getattr(self.array, "chunks", None) or self.array.shape
        s = tuple(int(n) for n in stored[self.lead:])
        rest = [s[i] for i in range(3) if i != self.axis]
        return s[self.axis], rest[0], rest[1]

    @property
    def fill_value(self):
        value = getattr(self.array, "fill_value", None)
        return 0 if value is None else value

    def name(self) -> str:
        return f"{self.path}" + (f"[{self.key}]" if self.key else "")

    def where(self, index: int) -> str:
        return f"{self.name()} slice {index} (axis {self.axis})"

    def _index(self, index: int, rows: slice, columns: slice) -> tuple:
        where: list = [rows, columns]
        where.insert(self.axis, index)
        return (0,) * self.lead + tuple(where)

    def region(self, index: int, rows: slice = slice(None), columns: slice = slice(None)) -> np.ndarray:
        """Rows x columns of slice `index` (plain slices, no step), read from disk now."""
        try:
            array = np.asarray(self.array[self._index(index, rows, columns)])
        except Exception as exc:  # noqa: BLE001 - any storage or codec failure is a bad file, in one line
            raise DataError(f"{self.where(index)}: cannot read ({exc.__class__.__name__}: {exc})") from None
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def slice(self, index: int) -> np.ndarray:
        """Slice `index` whole."""
        return self.region(index)

    def record(self) -> dict:
        return {"format": self.format, "dataset": self.key, "axis": self.axis}

    def close(self) -> None:
        handle = getattr(self.array, "file", None)
        if self.format == "hdf5" and handle is not None:
            handle.close()


def _hdf5_datasets(group, prefix: str = "") -> list[str]:
    import h5py  # noqa: PLC0415 - only HDF5 input needs it

    found = []
    for name, item in group.items():
        if isinstance(item, h5py.Dataset):
            found.append(prefix + name)
        elif isinstance(item, h5py.Group):
            found += _hdf5_datasets(item, prefix + name + "/")
    return found


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"


def _hdf5_dataset(handle, path: Path, dataset: Optional[str], option: str):
    import h5py  # noqa: PLC0415 - only HDF5 input needs it

    names = _hdf5_datasets(handle)
    if dataset is None:
        if len(names) != 1:
            raise DataError(f"{path}: holds {len(names)} datasets ({_listing(names)}); name one with {option} KEY")
        dataset = names[0]
    if dataset not in handle or not isinstance(handle[dataset], h5py.Dataset):
        raise DataError(f"{option} {dataset}: {path} has no dataset '{dataset}'; it holds {_listing(names)}")
    array = handle[dataset]
    return array, dataset, tuple(int(n) for n in array.shape), np.dtype(array.dtype)


def open_array(path: str | Path, dataset: Optional[str] = None, axis: Optional[int] = None,
               option: str = "--dataset") -> ArrayVolume:
    """The HDF5 file or Zarr store `path` (array `dataset` inside it) sliced along `axis` (default 0).
    DataError naming the file and key for a missing key (listing what the file holds), a group where an
    array is needed, or an array that is not 3-D single-channel."""
    path = Path(path)
    if is_hdf5(path):
        import h5py  # noqa: PLC0415 - only HDF5 input needs it

        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
        try:
            array, dataset, _, _ = _hdf5_dataset(handle, path, dataset, option)  # shape, dtype: read once here
        except DataError:
            handle.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py's errors of a damaged file
            handle.close()
            raise DataError(f"{path}: a damaged HDF5 file ({exc.__class__.__name__}: {str(exc)[:160]})") from None
        fmt = "hdf5"
    elif is_zarr(path):
        array, dataset = _open_zarr(path, dataset, option)
        fmt = "zarr"
    else:
        raise DataError(f"{path}: neither an HDF5 file ({', '.join(HDF5_SUFFIXES)}) nor a Zarr store")
    shape = tuple(int(n) for n in array.shape)
    lead = max(0, len(shape) - 3)
    if len(shape) < 3 or any(n != 1 for n in shape[:lead]):
        if fmt == "hdf5":
            array.file.close()
        raise DataError(f"{path}{f'[{dataset}]' if dataset else ''}: array of shape {shape}; fcnseg reads 3-D "
                        "volumes (z, y, x), with any further leading axes (t, c) of length 1")
    if np.dtype(array.dtype).kind not in "biuf":
        raise DataError(f"{path}{f'[{dataset}]' if dataset else ''}: holds {array.dtype}, not numbers")
    axis = 0 if axis is None else axis
    if axis not in (0, 1, 2):
        raise DataError(f"--axis {axis}: a volume has axes 0, 1, 2 (0 slices a z, y, x array along z)")
    return ArrayVolume(path, fmt, dataset, array, axis, lead)


def _open_zarr(path: Path, dataset: Optional[str], option: str):
    zarr = _zarr()
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any metadata/codec failure is a bad store, in one line
        raise DataError(f"{path}: not a readable Zarr store ({exc.__class__.__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        if dataset:
            raise DataError(f"{option} {dataset}: {path} is itself an array; drop {option}")
        return node, None
    arrays = sorted(name for name, _ in node.arrays())
    if dataset is None:
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if multiscales:
            dataset = str(multiscales[0]["datasets"][0]["path"])
        elif len(arrays) == 1:
            dataset = arrays[0]
        else:
            raise DataError(f"{path}: a Zarr group of {len(arrays)} arrays ({_listing(arrays)}); name one with "
                            f"{option} PATH")
    try:
        array = node[dataset]
    except KeyError:
        raise DataError(f"{option} {dataset}: {path} has no array '{dataset}'; it holds {_listing(arrays)}") from None
    if not isinstance(array, zarr.Array):
        raise DataError(f"{option} {dataset}: in {path} is a group, not an array")
    return array, dataset
