"""Multi-frame test data from a classic series, three ways.

- ``enhanced``: this module's own Enhanced CT / Enhanced MR writer (one or
  several instances, frames in any order, rescale or orientation per frame),
  for the loader's unit tests and its refusals;
- ``pixelmed_legacy``: PixelMed's ``MultiFrameImageFactory`` (Debian
  ``libpixelmed-java``), a producer outside the repository, which makes Legacy
  Converted Enhanced CT / MR;
- ``highdicom_legacy``: highdicom's ``highdicom.legacy`` converters, a second
  outside producer of Legacy Converted Enhanced images.

Patient and study attributes come from the classic datasets, so sentinel
patient values travel with them.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from tests.support.peers import require
from tests.support.validators import JAVA_QUICK

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
PIXELMED = "/usr/share/java/pixelmed.jar"

# Attributes of each classic slice that become functional groups, not top-level.
_PER_SLICE = {
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
    "SliceLocation", "InstanceNumber", "SOPInstanceUID", "SOPClassUID", "PixelData",
    "ImageType", "ContentDate", "ContentTime",
}  # fmt: skip


@dataclass(frozen=True)
class FrameOptions:
    """``instances``: how many multi-frame instances to split the slices into;
    ``shuffle``: store frames in a seeded random order; ``orientation_per_frame``
    / ``measures_per_frame`` / ``rescale_per_frame``: put those groups in each
    frame's functional groups instead of the shared ones."""

    instances: int = 1
    shuffle: bool = False
    seed: int = 0
    orientation_per_frame: bool = False
    measures_per_frame: bool = False
    rescale_per_frame: bool = False


def enhanced(
    slices: Sequence[Dataset], options: FrameOptions | None = None, *, series_uid: str = ""
) -> list[Dataset]:
    """Enhanced CT (or MR, for MR slices) instances holding the pixels of ``slices``
    (single-frame, uncompressed, one series) frame for frame."""
    opts = options or FrameOptions()
    ordered = list(slices)
    if opts.shuffle:
        random.Random(opts.seed).shuffle(ordered)
    size = -(-len(ordered) // opts.instances)
    parts = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    series_uid = series_uid or str(slices[0].SeriesInstanceUID)
    return [_instance(part, number, opts, series_uid) for number, part in enumerate(parts, 1)]


def write(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets, start=1):
        path = folder / f"multiframe_{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _instance(part: Sequence[Dataset], number: int, opts: FrameOptions, series: str) -> Dataset:
    first = part[0]
    mr = first.Modality == "MR"
    ds = Dataset()
    for elem in first:
        if elem.keyword not in _PER_SLICE and elem.tag.group != 0x7FE0:
            ds.add(elem)
    sop_uid = generate_uid(entropy_srcs=[series, "enhanced", str(number)])
    ds.SOPClassUID = UID(ENHANCED_MR if mr else ENHANCED_CT)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ContentDate, ds.ContentTime = first.get("ContentDate", ""), first.get("ContentTime", "")
    ds.AcquisitionDateTime = f"{ds.ContentDate}{ds.ContentTime}"
    ds.AcquisitionNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = len(part)
    _dimensions(ds)
    ds.SharedFunctionalGroupsSequence = [_shared(first, opts, mr)]
    ds.PerFrameFunctionalGroupsSequence = [
        _per_frame(sl, opts, mr, index) for index, sl in enumerate(part, start=1)
    ]
    ds.PixelData = b"".join(sl.PixelData for sl in part)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _dimensions(ds: Dataset) -> None:
    organization = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "dimensions"])
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    index = Dataset()
    index.DimensionOrganizationUID = organization
    index.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
    index.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
    ds.DimensionIndexSequence = [index]


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _shared(sl: Dataset, opts: FrameOptions, mr: bool) -> Dataset:
    groups = Dataset()
    if not opts.orientation_per_frame:
        groups.PlaneOrientationSequence = [
            _item(ImageOrientationPatient=list(sl.ImageOrientationPatient))
        ]
    if not opts.measures_per_frame:
        groups.PixelMeasuresSequence = [_measures(sl)]
    if not opts.rescale_per_frame and "RescaleSlope" in sl:
        groups.PixelValueTransformationSequence = [_rescale(sl, mr)]
    if "WindowCenter" in sl:
        groups.FrameVOILUTSequence = [_item(WindowCenter=sl.WindowCenter,
                                            WindowWidth=sl.WindowWidth)]  # fmt: skip
    frame_type = {"FrameType": ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                  "PixelPresentation": "MONOCHROME", "VolumetricProperties": "VOLUME",
                  "VolumeBasedCalculationTechnique": "NONE"}  # fmt: skip
    if mr:
        groups.MRImageFrameTypeSequence = [
            _item(**frame_type, ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1")
        ]
    else:
        groups.CTImageFrameTypeSequence = [_item(**frame_type)]
    return groups


def _measures(sl: Dataset) -> Dataset:
    return _item(PixelSpacing=list(sl.PixelSpacing), SliceThickness=sl.get("SliceThickness", 1))


def _rescale(sl: Dataset, mr: bool) -> Dataset:
    return _item(RescaleSlope=sl.RescaleSlope, RescaleIntercept=sl.RescaleIntercept,
                 RescaleType="US" if mr else sl.get("RescaleType", "HU"))  # fmt: skip


def _per_frame(sl: Dataset, opts: FrameOptions, mr: bool, index: int) -> Dataset:
    groups = Dataset()
    when = f"{sl.ContentDate}{sl.ContentTime}"
    groups.FrameContentSequence = [
        _item(FrameAcquisitionDateTime=when, FrameReferenceDateTime=when,
              FrameAcquisitionDuration=100.0, DimensionIndexValues=[index])
    ]  # fmt: skip
    groups.PlanePositionSequence = [_item(ImagePositionPatient=list(sl.ImagePositionPatient))]
    if opts.orientation_per_frame:
        groups.PlaneOrientationSequence = [
            _item(ImageOrientationPatient=list(sl.ImageOrientationPatient))
        ]
    if opts.measures_per_frame:
        groups.PixelMeasuresSequence = [_measures(sl)]
    if opts.rescale_per_frame and "RescaleSlope" in sl:
        groups.PixelValueTransformationSequence = [_rescale(sl, mr)]
    return groups


def pixelmed_legacy(folder: Path, output: Path) -> list[Path]:
    """Legacy Converted Enhanced instances made by PixelMed's MultiFrameImageFactory
    from the classic files in ``folder``."""
    java = require("java")
    if not Path(PIXELMED).exists():
        require("pixelmed.jar (Debian libpixelmed-java)")
    output.mkdir(parents=True, exist_ok=True)
    factory = "com.pixelmed.dicom.MultiFrameImageFactory"
    subprocess.run([java, *JAVA_QUICK, "-cp", PIXELMED, factory, str(folder), str(output)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return sorted(p for p in output.iterdir() if p.is_file())


def highdicom_legacy(paths: Sequence[Path], output: Path) -> Path:
    """One Legacy Converted Enhanced CT / MR instance made by ``highdicom.legacy``."""
    slices = [pydicom.dcmread(path) for path in paths]
    first = slices[0]
    kind = (hd.legacy.LegacyConvertedEnhancedMRImage if first.Modality == "MR"
            else hd.legacy.LegacyConvertedEnhancedCTImage)  # fmt: skip
    image = kind(
        legacy_datasets=slices,
        series_instance_uid=str(first.SeriesInstanceUID),
        series_number=int(first.get("SeriesNumber") or 1),
        sop_instance_uid=generate_uid(entropy_srcs=[str(first.SeriesInstanceUID), "legacy"]),
        instance_number=1,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(output, enforce_file_format=True)
    return output
