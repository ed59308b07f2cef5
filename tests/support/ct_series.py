"""Write a (z, y, x) Hounsfield volume as a DICOM CT series, for tests.

The volume is given in canonical LPS orientation (see ``pipelines.base.Volume``):
axis 2 increases toward the patient's left, axis 1 toward posterior, axis 0 toward
the head. Each z index becomes one CT Image Storage instance (explicit VR little
endian, proper file meta). Flips store rows/columns reversed, with orientation
cosines that say so, as some scanners do.

Patient values are the caller's (tests pass sentinels and check they never leak).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

SENTINEL_PATIENT = {
    "PatientName": "SENTINEL^PATIENTNAME",
    "PatientID": "SENTINEL-PID-0001",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "SENTINELACC1",
}


@dataclass
class SeriesOptions:
    """How to store a volume.

    ``spacing``: (z, y, x) in mm. ``origin``: patient position (x, y, z) in mm of the
    canonical voxel (0, 0, 0). ``signed``: store signed pixels with intercept 0
    instead of unsigned with intercept -1024.
    """

    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8)
    origin: tuple[float, float, float] = (-150.0, -150.0, -300.0)
    flip_x: bool = False
    flip_y: bool = False
    signed: bool = False
    patient: dict[str, str] = field(default_factory=lambda: dict(SENTINEL_PATIENT))
    series_description: str = "Synthetic chest CT"
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass
class CtSeries:
    """A written (or in-memory) series. ``sop_uids`` and ``datasets`` are in z order."""

    study_uid: str
    series_uid: str
    sop_uids: list[str]
    datasets: list[Dataset]
    paths: list[Path] = field(default_factory=list)


def make_ct_datasets(hu: np.ndarray, options: SeriesOptions | None = None) -> CtSeries:
    """Build one CT dataset per z index of ``hu`` (int16, (z, y, x), HU)."""
    opts = options or SeriesOptions()
    study_uid = opts.study_uid or generate_uid()
    series_uid = opts.series_uid or generate_uid()
    datasets = [
        _slice_dataset(hu[k], k, len(hu), opts, study_uid, series_uid) for k in range(len(hu))
    ]
    return CtSeries(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        datasets=datasets,
    )


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    options: SeriesOptions | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> CtSeries:
    """Write ``hu`` as files in ``folder``; ``paths`` come back in z order unless
    ``shuffle`` (then in a seeded random order, as a directory listing might be)."""
    series = make_ct_datasets(hu, options)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(series.datasets):
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if shuffle:
        random.Random(seed).shuffle(paths)
    series.paths = paths
    return series


def lung_phantom(shape: tuple[int, int, int] = (12, 40, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) HU volume and its labels: body 1, right lung 2, left lung 3.

    The right lung (low x, the patient's right) has every 4th column at -980 HU.
    """
    nz, ny, nx = shape
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    disc = ((yy - ny / 2) / (ny * 0.45)) ** 2 + ((xx - nx / 2) / (nx * 0.45)) ** 2 < 1
    body = np.broadcast_to(disc, shape)
    inner = (zz > 1) & (zz < nz - 2)
    right = (
        body
        & inner
        & (((yy - ny / 2) / (ny * 0.3)) ** 2 + ((xx - nx * 0.3) / (nx * 0.14)) ** 2 < 1)
    )
    left = (
        body
        & inner
        & (((yy - ny / 2) / (ny * 0.3)) ** 2 + ((xx - nx * 0.7) / (nx * 0.14)) ** 2 < 1)
    )
    hu = np.full(shape, -1000, np.int16)
    hu[body] = 40
    hu[left] = -870
    hu[right] = -860
    hu[right & np.broadcast_to(xx % 4 == 0, shape)] = -980
    labels = np.zeros(shape, np.uint8)
    labels[body] = 1
    labels[right] = 2
    labels[left] = 3
    return hu, labels


def _slice_dataset(
    plane: np.ndarray, k: int, nz: int, opts: SeriesOptions, study_uid: str, series_uid: str
) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(sop_uid)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = nz - k  # scanners often number head first
    ds.SeriesDescription = opts.series_description
    ds.BodyPartExamined = "CHEST"
    ds.PatientSex = "O"
    for keyword, value in opts.patient.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    ds.PositionReferenceIndicator = ""
    ds.KVP = 120
    ds.PatientPosition = "FFS"
    _set_geometry(ds, k, plane.shape, opts)
    _set_pixels(ds, plane, opts)
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _set_geometry(ds: Dataset, k: int, shape: Sequence[int], opts: SeriesOptions) -> None:
    dz, dy, dx = opts.spacing
    ny, nx = shape
    x0, y0, z0 = opts.origin
    row = [-1.0, 0.0, 0.0] if opts.flip_x else [1.0, 0.0, 0.0]
    col = [0.0, -1.0, 0.0] if opts.flip_y else [0.0, 1.0, 0.0]
    first_x = x0 + (nx - 1) * dx if opts.flip_x else x0
    first_y = y0 + (ny - 1) * dy if opts.flip_y else y0
    ds.ImageOrientationPatient = row + col
    ds.ImagePositionPatient = [first_x, first_y, z0 + k * dz]
    ds.SliceLocation = z0 + k * dz
    ds.PixelSpacing = [dy, dx]
    ds.SliceThickness = dz


def _set_pixels(ds: Dataset, plane: np.ndarray, opts: SeriesOptions) -> None:
    stored = np.asarray(plane, dtype=np.int32)
    if opts.flip_y:
        stored = stored[::-1]
    if opts.flip_x:
        stored = stored[:, ::-1]
    if opts.signed:
        ds.RescaleIntercept = 0
        ds.PixelRepresentation = 1
        array = np.clip(stored, -32768, 32767).astype("<i2")
    else:
        ds.RescaleIntercept = -1024
        ds.PixelRepresentation = 0
        array = np.clip(stored + 1024, 0, 4095).astype("<u2")
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if opts.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.PixelData = np.ascontiguousarray(array).tobytes()
