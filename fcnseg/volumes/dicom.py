"""DICOM images as slices: one file, a folder holding one series, or a multi-frame file (pydicom 3).

`open_dicom(path)` returns a `DicomSeries`: its slices in patient order, each read on demand as a 2-D
array of modality values (the modality LUT applied: Rescale Slope/Intercept, so CT gives Hounsfield
units), MONOCHROME1 inverted so that a high value is bright as in MONOCHROME2. Compressed transfer
syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's pixel-data plugins (pylibjpeg,
pylibjpeg-openjpeg, installed with `fcnseg[formats]`).

- A folder's files are grouped by Series Instance UID; more than one series is refused (one line naming
  both). Slices are sorted by their position along the slice normal (Image Position Patient projected
  on the cross product of the Image Orientation Patient directions), never by file name; without
  positions, by Instance Number.
- A multi-frame file gives its frames, sorted by the per-frame positions when it has them (enhanced
  multi-frame, or RT dose's Grid Frame Offset Vector), else in stored order.
- `window_from_file()` is the dataset's own Window Center/Width (the first value, of the first slice)
  as the intensity window [C - W/2, C + W/2] on the modality values; `preset_window(name)` the usual CT
  presets (WINDOW_PRESETS, centre/width in HU).
- `affine()` is the RAS voxel-to-world matrix of the slices stacked as NIfTI (i = column, j = row,
  k = slice), what `fcnseg infer` writes its label volume with so that it overlays in a viewer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..images import check_decoded_size

# Centre / width in HU of the common CT display windows (radiology convention).
WINDOW_PRESETS = {
    "soft-tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "abdomen": (60.0, 400.0),
}
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_POSITION_TOLERANCE = 1e-3  # mm: two slices closer than this along the normal are at one position
_ORIENTATION_TOLERANCE = 1e-4


def _pydicom():
    try:
        import pydicom  # noqa: PLC0415 - optional dependency (fcnseg[formats])
    except ImportError:
        raise DataError("reading DICOM needs pydicom: pip install 'fcnseg[formats]'") from None
    return pydicom


def looks_like_dicom(path: Path) -> bool:
    """A file with a DICOM suffix, the 'DICM' marker after its 128-byte preamble, or no preamble but
    starting with a group 0002/0008 element."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    # Some older files have no preamble and start right at the group 0008 elements (little endian).
    return (len(head) == 132 and head[128:] == b"DICM") or head[:2] in (b"\x08\x00", b"\x02\x00")


def folder_has_dicom(folder: Path) -> bool:
    """Whether `folder` holds DICOM files (judged by its first few files)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return any(looks_like_dicom(p) for p in files[:8])


def preset_window(name: str) -> dict:
    """The CT preset `name` (WINDOW_PRESETS) as an intensity window on HU. DataError for an unknown name."""
    if name not in WINDOW_PRESETS:
        raise DataError(f"--dicom-window {name}: unknown; give 'file' (the dataset's own Window Center/Width) "
                        f"or a CT preset: {', '.join(WINDOW_PRESETS)}; or fixed bounds with --window-values LO,HI")
    center, width = WINDOW_PRESETS[name]
    return {"low": center - width / 2, "high": center + width / 2, "method": "dicom-preset", "preset": name,
            "center": center, "width": width}


@dataclass
class _Slice:
    path: Path
    frame: Optional[int]  # index into a multi-frame file, None for a single-frame file
    position: Optional[np.ndarray]
    instance: int


@dataclass
class DicomSeries:
    """The slices of one DICOM series (see the module docstring), read one at a time."""

    source: Path
    slices: list[_Slice]
    rows: int
    columns: int
    orientation: Optional[np.ndarray]  # 6 direction cosines (row, column), or None
    spacing: tuple[float, float]  # (between rows, between columns) in mm
    thickness: float
    header: object  # the first slice's dataset, without pixel data
    sorted_by: str
    _cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.slices), self.rows, self.columns

    def where(self, index: int) -> str:
        s = self.slices[index]
        return f"{s.path}" + (f" frame {s.frame}" if s.frame is not None else "") + f" (slice {index})"

    def _dataset(self, path: Path):
        if path not in self._cache:
            self._cache.clear()
            try:
                self._cache[path] = _pydicom().dcmread(path, force=True)
            except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, in one line
                raise DataError(f"{path}: not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
        return self._cache[path]

    def slice(self, index: int) -> np.ndarray:
        """Slice `index` as modality values (float32 when the rescale is not the identity, else the stored
        integers), MONOCHROME1 inverted. DataError naming the file when it cannot be decoded."""
        s = self.slices[index]
        ds = self._dataset(s.path)
        try:
            from pydicom.pixels import apply_modality_lut, pixel_array  # noqa: PLC0415 - optional dependency

            if s.frame is None:
                stored = ds.pixel_array
            else:
                stored = pixel_array(ds, index=s.frame)
            values = apply_modality_lut(stored, ds)
        except Exception as exc:  # noqa: BLE001 - a decoder failure (missing plugin, corrupt data) is a bad file
            raise DataError(f"{self.where(index)}: cannot decode the pixel data ({exc.__class__.__name__}: {exc}); "
                            "compressed DICOM needs pylibjpeg and pylibjpeg-openjpeg (fcnseg[formats])") from None
        if values.ndim != 2:
            raise DataError(f"{self.where(index)}: pixel data of shape {values.shape} is not one gray image")
        if values.dtype.kind == "f" or values.dtype != stored.dtype:
            values = values.astype(np.float32)
        values = values.astype(values.dtype.newbyteorder("="), copy=False)  # big-endian files
        if _photometric(ds) == "MONOCHROME1":
            low, high = _value_range(ds)
            values = (np.float32(low + high) - values.astype(np.float32)) if values.dtype.kind == "f" \
                else (np.int64(low + high) - values.astype(np.int64)).astype(np.int32)
        return values

    def window_from_file(self) -> dict:
        """The first slice's Window Center/Width (first values) as a window on the values `slice`
        returns (mirrored for MONOCHROME1). DataError when the file has none."""
        ds = self.header
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            raise DataError(f"{self.slices[0].path}: has no Window Center/Width; choose a preset with "
                            f"--dicom-window {'|'.join(WINDOW_PRESETS)} or give --window-values LO,HI")
        center = float(center[0] if _multi(center) else center)
        width = float(width[0] if _multi(width) else width)
        low, high = center - width / 2, center + width / 2
        if _photometric(ds) == "MONOCHROME1":
            lo, hi = _value_range(ds)
            low, high = lo + hi - high, lo + hi - low
        if not width > 0:
            raise DataError(f"{self.slices[0].path}: Window Width {width:g} is not positive; give --window-values")
        return {"low": low, "high": high, "method": "dicom-file", "center": center, "width": width}

    def affine(self) -> np.ndarray:
        """4 x 4 RAS affine of the NIfTI volume labels[column, row, slice] (identity directions when the
        files carry no orientation, with the pixel spacing and thickness)."""
        dr, dc = self.spacing
        lps = np.eye(4)
        if self.orientation is None or self.slices[0].position is None:
            lps[:3, :3] = np.diag([dc, dr, self.thickness])
        else:
            row_dir, col_dir = self.orientation[:3], self.orientation[3:]
            first = self.slices[0].position
            if len(self.slices) > 1 and self.slices[-1].position is not None:
                step = (self.slices[-1].position - first) / (len(self.slices) - 1)
            else:
                step = np.cross(row_dir, col_dir) * self.thickness
            lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step, first
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def record(self) -> dict:
        """What dataset.yaml / inference.yaml record about how the values were made."""
        ds = self.header
        rescaled = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
        return {"format": "dicom", "modality": str(ds.get("Modality", "")),
                "values": "modality LUT (rescale slope/intercept)" + (" -> HU" if ds.get("Modality") == "CT" else "")
                if rescaled else "stored values (no modality LUT in the file)",
                "monochrome1": "inverted" if _photometric(ds) == "MONOCHROME1" else None,
                "sorted_by": self.sorted_by}


def _multi(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()


def _value_range(ds) -> tuple[float, float]:
    """The stored value range (Bits Stored, Pixel Representation) through the rescale."""
    bits, signed = int(ds.get("BitsStored", ds.get("BitsAllocated", 16))), int(ds.get("PixelRepresentation", 0))
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _vector(value, n: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    try:
        array = np.array([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.size == n else None


def _check_image(ds, path: Path) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM without pixel data (SOP class {ds.get('SOPClassUID', '?')}, e.g. a "
                        "structured report, plan or DICOMDIR); give the image files of the series")
    photometric = _photometric(ds)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(f"{path}: {photometric} DICOM (colour); fcnseg segments single-channel images: export "
                        "the gray channel, or a MONOCHROME series")


def open_dicom(path: str | Path) -> DicomSeries:
    """The DICOM file or series folder `path` (see the module docstring). DataError naming the file for
    anything that is not one gray series: no pixel data, colour, two series, mixed orientations or
    sizes, two slices at one position; and for a damaged header (a value that is not what its element
    holds, a length past the file)."""
    try:
        return _open_dicom(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily: a damaged one fails in any way
        raise DataError(f"{path}: a damaged DICOM header ({exc.__class__.__name__}: {str(exc)[:160]})") from None


def _open_dicom(path: str | Path) -> DicomSeries:
    pydicom = _pydicom()
    path = Path(path)
    files = [path] if path.is_file() else \
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for f in files:
        ds = _header(pydicom, f)
        if ds is None:
            if path.is_file():
                raise DataError(f"{f}: not a DICOM file (no DICM marker and no DICOM elements)")
            continue  # a folder may hold other files
        if path.is_dir() and "Rows" not in ds and len(files) > 1:
            continue  # DICOMDIR, reports: not slices
        headers.append((f, ds))
    if not headers:
        raise DataError(f"{path}: no DICOM image files in the folder")
    # stop_before_pixels hides PixelData: judge it from a full read of the first file
    first_path, first = headers[0]
    _check_image(pydicom.dcmread(first_path, force=True), first_path)
    series = {}
    for f, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if len(series) > 1:
        (uid_a, a), (uid_b, b) = list(series.items())[:2]
        raise DataError(f"{path}: holds {len(series)} DICOM series ({a[0][0].name}... with {len(a)} file(s), series "
                        f"{uid_a or '?'}; {b[0][0].name}... with {len(b)}, series {uid_b or '?'}); put one series "
                        "per folder")
    _check_image_header(first, first_path, int(first.Rows), int(first.Columns))  # its size, before frames are listed
    if len(headers) == 1 and int(first.get("NumberOfFrames", 1) or 1) > 1:
        slices, orientation, sorted_by = _frames(first_path, first)
    else:
        slices, orientation, sorted_by = _files(headers, path)
    rows, columns = int(first.Rows), int(first.Columns)
    for f, ds in headers:
        _check_image_header(ds, f, rows, columns)
    spacing = _vector(first.get("PixelSpacing"), 2)
    thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
    return DicomSeries(path, slices, rows, columns, orientation,
                       (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1])),
                       float(thickness), first, sorted_by)


def _header(pydicom, path: Path):
    """The file's dataset without pixel data, or None when it is not DICOM. Files without the 128-byte
    preamble (written by some older tools) are accepted when they parse into image elements."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, reported in one line
        raise DataError(f"{path}: not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - forced parsing of a non-DICOM file fails in arbitrary ways
        return None
    return ds if "SOPClassUID" in ds or "Rows" in ds else None


def _check_image_header(ds, path: Path, rows: int, columns: int) -> None:
    photometric = _photometric(ds)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(f"{path}: {photometric} DICOM (colour); fcnseg segments single-channel images")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bytes_per_value = max(1, int(ds.get("BitsAllocated", 16) or 16) // 8)
    check_decoded_size(path, (frames, int(ds.Rows), int(ds.Columns)), bytes_per_value)
    if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
        raise DataError(f"{path}: {ds.Rows}x{ds.Columns} pixels, but the series' first slice is {rows}x{columns}; "
                        "a folder holds the slices of one series")


def _files(headers: list, folder: Path) -> tuple[list[_Slice], Optional[np.ndarray], str]:
    orientations = [_vector(ds.get("ImageOrientationPatient"), 6) for _, ds in headers]
    positions = [_vector(ds.get("ImagePositionPatient"), 3) for _, ds in headers]
    instances = [int(ds.get("InstanceNumber", 0) or 0) for _, ds in headers]
    orientation = orientations[0]
    if orientation is not None and all(o is not None for o in orientations) and all(p is not None for p in positions):
        for (f, _), o in zip(headers, orientations):
            if np.abs(o - orientation).max() > _ORIENTATION_TOLERANCE:
                raise DataError(f"{f}: its Image Orientation Patient differs from {headers[0][0].name}'s; a volume's "
                                "slices share one orientation (is this a localizer? remove it from the folder)")
        normal = np.cross(orientation[:3], orientation[3:])
        keys = [float(p @ normal) for p in positions]
        order = sorted(range(len(headers)), key=lambda i: keys[i])
        for a, b in zip(order, order[1:]):
            if abs(keys[a] - keys[b]) < _POSITION_TOLERANCE:
                raise DataError(f"{headers[a][0]} and {headers[b][0].name}: two slices at one position "
                                f"({keys[a]:.3f} mm along the normal); a folder holds one volume of one series")
        sorted_by = "position along the slice normal"
    else:
        order = sorted(range(len(headers)), key=lambda i: instances[i])
        orientation, sorted_by = None, "Instance Number (no Image Position/Orientation Patient)"
    return ([_Slice(headers[i][0], None, positions[i], instances[i]) for i in order], orientation, sorted_by)


def _frames(path: Path, ds) -> tuple[list[_Slice], Optional[np.ndarray], str]:
    n = int(ds.NumberOfFrames)
    shared = ds.get("SharedFunctionalGroupsSequence")
    orientation = _vector(ds.get("ImageOrientationPatient"), 6)
    if orientation is None and shared:
        planes = shared[0].get("PlaneOrientationSequence")
        orientation = _vector(planes[0].get("ImageOrientationPatient"), 6) if planes else None
    positions: list[Optional[np.ndarray]] = [None] * n
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n:
        for i, group in enumerate(per_frame):
            plane = group.get("PlanePositionSequence")
            positions[i] = _vector(plane[0].get("ImagePositionPatient"), 3) if plane else None
    offsets = _vector(ds.get("GridFrameOffsetVector"), n)
    origin = _vector(ds.get("ImagePositionPatient"), 3)
    if all(p is None for p in positions) and offsets is not None and origin is not None and orientation is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        positions = [origin + o * normal for o in offsets]
    if orientation is not None and all(p is not None for p in positions):
        normal = np.cross(orientation[:3], orientation[3:])
        order = sorted(range(n), key=lambda i: float(positions[i] @ normal))
        sorted_by = "per-frame position along the slice normal"
    else:
        order, sorted_by = list(range(n)), "frame order (no per-frame positions)"
    return [_Slice(path, i, positions[i], i) for i in order], orientation, sorted_by
