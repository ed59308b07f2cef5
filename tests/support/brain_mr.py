"""A real T1 head MR as a DICOM MR series, with its brain mask, for tests.

Source: Debian ``insighttoolkit5-examples`` (scripts/install.sh installs it):
``KmeansTest_T1UCharRaw.nii.gz`` (T1 head, 128 x 128 x 62 voxels of 2 x 2 x 3 mm)
and ``KmeansTest_T1RawSkullStrip.nii.gz`` (its brain mask). Written here with
pydicom alone, independently of the node's code, as coronal slices stored the
usual way (rows toward the feet, columns toward the patient's left), which the
pipeline must reorient for its model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
T1 = DATA / "KmeansTest_T1UCharRaw.nii.gz"
MASK = DATA / "KmeansTest_T1RawSkullStrip.nii.gz"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class BrainSeries:
    """``masks``: the brain mask of each written instance (rows, columns), by SOP
    Instance UID; ``volume_ml``: the mask's volume."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    volume_ml: float = 0.0


def available() -> bool:
    return T1.exists() and MASK.exists()


def brain_series_or_skip(folder: Path) -> BrainSeries:
    """The real T1 head MR written as a DICOM series in ``folder``; skips the test when
    the Debian package is missing on a developer's machine, fails it when ``CI=true``."""
    if not available():
        message = f"{T1} missing: scripts/install.sh test installs it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return write_brain_series(folder)


def write_brain_series(
    folder: Path,
    *,
    series_description: str = "T1 SE COR",
    body_part: str = "HEAD",
    patient_id: str = "BRAIN-T1-01",
    study_uid: str | None = None,
) -> BrainSeries:
    import nibabel as nib

    image, mask_image = nib.load(str(T1)), nib.load(str(MASK))
    t1 = np.asarray(image.dataobj).astype(np.int32)
    brain = np.asarray(mask_image.dataobj) > 0
    affine = RAS_TO_LPS @ image.affine[:3]  # voxel (i, j, k, 1) -> LPS mm
    ni, nj, nk = t1.shape
    di, dj, dk = (float(np.linalg.norm(affine[:, a])) for a in range(3))
    row_cosine = affine[:, 0] / di  # along columns: voxel axis i
    col_cosine = -affine[:, 1] / dj  # down the rows: voxel axis j, reversed
    study_uid = study_uid or generate_uid()
    series = BrainSeries([], study_uid, generate_uid())
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(nk):
        pixels = t1[:, ::-1, k].T  # (rows = j reversed, columns = i)
        origin = affine @ np.array([0, nj - 1, k, 1.0])
        ds = _mr_slice(series, k, pixels, origin, row_cosine, col_cosine, (dj, di), dk)
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = body_part
        ds.PatientID = patient_id
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.paths.append(path)
        series.masks[ds.SOPInstanceUID] = brain[:, ::-1, k].T
    series.volume_ml = float(brain.sum()) * di * dj * dk / 1000.0
    return series


def _mr_slice(
    series: BrainSeries,
    k: int,
    pixels: np.ndarray,
    origin: np.ndarray,
    row_cosine: np.ndarray,
    col_cosine: np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series.series_uid, "frame"])
    ds.Modality = "MR"
    ds.PatientName = "Brain^T1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "ITK examples"
    ds.SeriesNumber = 3
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = 15
    ds.RepetitionTime = 500
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.SliceThickness = thickness
    ds.SpacingBetweenSlices = thickness
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [round(float(v), 4) for v in origin]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_cosine, *col_cosine)]
    ds.PixelSpacing = [pixel_spacing[0], pixel_spacing[1]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def seg_masks(seg: Dataset) -> dict[str, np.ndarray]:
    """The SEG's frames (segment 1) by the SOP Instance UID they belong to."""
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    masks: dict[str, np.ndarray] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(source.ReferencedSOPInstanceUID)
        masks[uid] = masks.get(uid, np.zeros(frame.shape, bool)) | (frame > 0)
    return masks


def dice_against(series: BrainSeries, seg: Dataset) -> float:
    found = seg_masks(seg)
    truth = np.stack([series.masks[uid] for uid in series.masks])
    empty = np.zeros_like(next(iter(series.masks.values())))
    got = np.stack([found.get(uid, empty) for uid in series.masks])
    return dice(got, truth)
