"""Lung results as DICOM: a BINARY SEG (right / left lung) and a TID 1500 SR.

Both objects are built by highdicom constructors and join the source study
(patient and study modules come from the source images), each in a new series
with deterministic UIDs from ``ResultUids``.

Codes and why:

- Segments: category SCT 91723000 "Anatomical Structure"; property types SCT
  3341006 "Right lung" and SCT 44029006 "Left lung" (pre-coordinated with
  laterality, so a viewer needs no modifier to tell them apart). Each segment's
  anatomic region is SCT 39607008 "Lung" with its laterality as a modifier, and
  the SEG carries a shared Frame Anatomy (lung; laterality R, L or B) as
  PixelMed requires for paired organs.
- SR procedure reported: LN 25045-6 "CT unspecified body region", the CT entry
  of CID 100 (the CID lists no chest-specific CT procedure).
- Lung volume: SCT 118565006 "Volume" (CID 7469 / 7472) in UCUM "ml".
- Emphysema index: PS3.16 has no concept for "% of lung volume below -950 HU"
  (%LAA-950) and none was found in SNOMED CT or LOINC. It is coded in the local
  scheme ``99DCMNODE`` (PS3.16 8.2: "99" marks a local scheme), declared in the
  SR's Coding Scheme Identification Sequence, with UCUM "%" (dciodvfy warns that
  it does not know the scheme; a warning, not an error). Should a standard code
  appear (e.g. a RadElement CDE), only ``EMPHYSEMA_INDEX`` changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pipelines.base import PipelineSpec, ResultUids, Volume
from pipelines.references import segment_sources
from pipelines.seg import SegSeries, seg_from_labels

if TYPE_CHECKING:
    from pipelines.lung import LungMeasures, LungPrediction

MANUFACTURER = "dicom-node"
MODEL_NAME = "dicom-node lung-ct"
DEVICE_SERIAL_NUMBER = "1"
SEG_SERIES_NUMBER = 9501
SR_SERIES_NUMBER = 9502

LOCAL_SCHEME = "99DCMNODE"
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
LUNG = codes.SCT.Lung
LUNG_CODES = {
    "right": Code("3341006", "SCT", "Right lung"),
    "left": Code("44029006", "SCT", "Left lung"),
}
LATERALITY = {
    "right": Code("24028007", "SCT", "Right"),
    "left": Code("7771000", "SCT", "Left"),
}
SEGMENT_LABELS = {"right": "Right lung", "left": "Left lung"}
FRAME_LATERALITY = {frozenset({"right"}): "R", frozenset({"left"}): "L"}
VOLUME = codes.SCT.Volume
MILLILITER = Code("ml", "UCUM", "milliliter")
PERCENT = codes.UCUM.Percent
EMPHYSEMA_INDEX = Code(
    "LAA950", LOCAL_SCHEME, "Percentage of lung volume below -950 HU (emphysema index)"
)
PROCEDURE_REPORTED = codes.LN.CTUnspecifiedBodyRegion


def _equipment(spec: PipelineSpec) -> dict[str, Any]:
    """What SEG and SR both say about the device that made them."""
    return {
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MODEL_NAME,
        "software_versions": f"{spec.name} {spec.version}",
        "device_serial_number": DEVICE_SERIAL_NUMBER,
    }


def encode_results(
    volume: Volume, prediction: LungPrediction, uids: ResultUids, spec: PipelineSpec
) -> list[Dataset]:
    """[SEG, SR] for ``prediction`` on ``volume``; see the module docstring."""
    seg = build_seg(volume, prediction, uids, spec)
    sr = build_sr(volume, prediction, seg, uids, spec)
    return [seg, sr]


def build_seg(
    volume: Volume, prediction: LungPrediction, uids: ResultUids, spec: PipelineSpec
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per lung found, numbered right first.

    Frames follow ``volume.sources`` (stored pixel order, see ``pipelines.references``);
    empty frames are omitted.
    """
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name,
        family=codes.DCM.ArtificialIntelligence,
        version=spec.version,
        parameters={"model": prediction.model} if prediction.model else None,
    )
    segments = [
        (lung.label, _segment_description(number, lung.side, algorithm))
        for number, lung in enumerate(prediction.lungs, start=1)
    ]
    sides = frozenset(lung.side for lung in prediction.lungs)
    series = SegSeries(
        number=SEG_SERIES_NUMBER,
        description="Lung segmentation (AI)",
        content_label="LUNGS",
        content_description="Right and left lung",
        equipment=_equipment(spec),
        anatomy=LUNG,  # shared Frame Anatomy: lung, laterality R, L, or B when both
        laterality=FRAME_LATERALITY.get(sides, "B"),
    )
    return seg_from_labels(volume, prediction.labels, segments, series, uids)


def _segment_description(
    number: int, side: str, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=SEGMENT_LABELS[side],
        segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=LUNG_CODES[side],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[LUNG],
    )
    region = description.AnatomicRegionSequence[0]
    region.AnatomicRegionModifierSequence = [hd.sr.CodedConcept.from_code(LATERALITY[side])]
    return description


def build_sr(
    volume: Volume,
    prediction: LungPrediction,
    seg: hd.seg.Segmentation,
    uids: ResultUids,
    spec: PipelineSpec,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 report: per lung, volume and
    emphysema index, each group referencing its SEG segment."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=spec.name,
        version=spec.version,
        parameters=[f"model={prediction.model}"] if prediction.model else None,
    )
    groups = [
        _lung_group(
            number,
            lung,
            seg,
            segment_sources(volume, prediction.labels, lung.label),
            uids,
            algorithm,
        )
        for number, lung in enumerate(prediction.lungs, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*volume.sources, seg],
        content=report,
        series_instance_uid=uids.uid("sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.uid("sr", "instance"),
        **_equipment(spec),
        series_description="Lung volumes and emphysema index (AI)",
        is_complete=True,
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME,
                name="dicom-node local codes",
                responsible_organization="dicom-node project",
            )
        ],
    )


def _lung_group(
    number: int,
    lung: LungMeasures,
    seg: hd.seg.Segmentation,
    sources: dict[str, Any],
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measurements = [
        hd.sr.Measurement(
            name=VOLUME, value=round(lung.volume_ml, 3), unit=MILLILITER, algorithm_id=algorithm
        ),
        hd.sr.Measurement(
            name=EMPHYSEMA_INDEX,
            value=round(lung.emphysema_percent, 4),
            unit=PERCENT,
            algorithm_id=algorithm,
        ),
    ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("sr", f"tracking-{lung.side}"), identifier=SEGMENT_LABELS[lung.side]
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            **sources,
        ),
        finding_type=LUNG_CODES[lung.side],
        finding_sites=[hd.sr.FindingSite(LUNG, laterality=LATERALITY[lung.side])],
        measurements=measurements,
    )


def _observation_context(spec: PipelineSpec) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, spec.name]),
        name=spec.name,
        manufacturer_name=MANUFACTURER,
        model_name=MODEL_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
