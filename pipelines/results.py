"""Results of a manifest pipeline as DICOM, the IHE AI Results way.

- SEG (BINARY) with one segment per manifest segment found, each with its
  coded category and type, optional laterality and colour, and the SEG's
  Algorithm Identification (algorithm name, version, family "Artificial
  Intelligence", the model's SHA-256 as a parameter).
- Comprehensive 3D SR, TID 1500: a volumetric group per segment referencing
  its SEG segment, with the manifest's measurements (volume in ml, mean
  intensity, maximum diameter in mm); or, for findings models, one group per
  finding with its value and, given a threshold, "present"/"absent". Every
  measurement names the algorithm (TID 4019).
- Both join the source study in new series (deterministic UIDs) and name the
  algorithm in the Contributing Equipment Sequence with Purpose of Reference
  (Newcode1, 99IHE, "Processing Algorithm"), its manufacturer, model name,
  software version and a Device UID derived from the model's SHA-256, so a new
  model is a new device (``contribute``). Every pipeline's outputs get it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.base import ResultUids, Volume
from pipelines.manifest import CodeItem, Manifest, Segment
from pipelines.postprocess import SegmentMeasures
from pipelines.references import segment_sources
from pipelines.seg import SegSeries, seg_from_labels

PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
SEG_SERIES_NUMBER = 9601
SR_SERIES_NUMBER = 9602
MILLILITER = Code("ml", "UCUM", "milliliter")
MILLIMETER = Code("mm", "UCUM", "millimeter")
MEAN = codes.SCT.Mean
LONG_AXIS = Code("103339001", "SCT", "Long axis")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
LATERALITY = {
    "right": Code("24028007", "SCT", "Right"),
    "left": Code("7771000", "SCT", "Left"),
    "bilateral": Code("51440002", "SCT", "Right and left"),
}
FRAME_LATERALITY = {"right": "R", "left": "L", "bilateral": "B"}


def code(item: CodeItem) -> Code:
    return Code(item.code, item.scheme, item.meaning)


def device_uid(manifest: Manifest) -> str:
    """The algorithm as a device: the same model bytes give the same UID (a
    name-based UUID of the pipeline and the model's SHA-256, as a 2.25 UID)."""
    name = f"dicom-node:{manifest.name}:{manifest.model.sha256}"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def equipment(manifest: Manifest) -> dict[str, Any]:
    """General Equipment of every result object (highdicom constructor arguments)."""
    algorithm = manifest.algorithm
    return {
        "instance_number": 1,
        "manufacturer": algorithm.manufacturer,
        "manufacturer_model_name": algorithm.name[:64],
        "software_versions": f"{manifest.name} {manifest.version}"[:64],
        "device_serial_number": manifest.model.sha256[:16],
    }


def contribute(ds: Dataset, manifest: Manifest) -> None:
    """Name the algorithm in ``ds``'s Contributing Equipment Sequence (IHE AIR)."""
    item = Dataset()
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = manifest.algorithm.manufacturer
    item.ManufacturerModelName = manifest.algorithm.name[:64]
    item.SoftwareVersions = manifest.algorithm.version
    item.DeviceUID = device_uid(manifest)
    item.ContributionDescription = (manifest.description or manifest.algorithm.name)[:1024]
    ds.ContributingEquipmentSequence = [item]


def _seg_algorithm(manifest: Manifest) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=manifest.algorithm.name,
        family=codes.DCM.ArtificialIntelligence,
        version=manifest.algorithm.version,
        source=manifest.algorithm.manufacturer,
        parameters={"model_sha256": manifest.model.sha256},
    )


def _sr_algorithm(manifest: Manifest) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=manifest.algorithm.name,
        version=manifest.algorithm.version,
        parameters=[f"model_sha256={manifest.model.sha256}"],
    )


def build_seg(
    volume: Volume,
    labels: np.ndarray,
    found: Sequence[SegmentMeasures],
    manifest: Manifest,
    uids: ResultUids,
) -> hd.seg.Segmentation:
    """A BINARY SEG of the segments in ``found``, numbered 1.. in that order.
    ``labels``: (slices, rows, columns) in ``volume``'s grid; empty frames omitted."""
    algorithm = _seg_algorithm(manifest)
    by_label = {s.label: s for s in manifest.outputs.segments}
    present = [by_label[m.label] for m in found]
    segments = [(s.label, _description(n, s, algorithm)) for n, s in enumerate(present, start=1)]
    return seg_from_labels(volume, labels, segments, _seg_series(manifest, present), uids)


def _seg_series(manifest: Manifest, segments: Sequence[Segment]) -> SegSeries:
    """The series of a manifest's SEG. Frame Anatomy: the region
    (``outputs.finding_site``, else the first segment's type) and the segments'
    laterality (R, L, B, or U for unpaired)."""
    sides = {s.laterality for s in segments if s.laterality is not None}
    if not sides:
        laterality = "U"
    else:
        laterality = FRAME_LATERALITY[sides.pop()] if len(sides) == 1 else "B"
    return SegSeries(
        number=SEG_SERIES_NUMBER,
        description=manifest.outputs.seg_series_description or f"{manifest.name} (AI)",
        content_label=manifest.name.upper().replace("-", "_").replace(".", "_"),
        content_description=manifest.algorithm.name,
        equipment=equipment(manifest),
        anatomy=code(manifest.outputs.finding_site or segments[0].type),
        laterality=laterality,
    )


def _description(
    number: int, segment: Segment, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name,
        segmented_property_category=code(segment.category),
        segmented_property_type=code(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=_cielab(segment.colour) if segment.colour else None,
    )
    if segment.laterality:
        description.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(LATERALITY[segment.laterality])
        ]
    return description


def _cielab(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    """sRGB (0-255) -> CIE L*a*b* under D65, as DICOM's Recommended Display CIELab."""
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    matrix = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = matrix @ np.asarray(linear) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return hd.color.CIELabColor(116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))


def build_sr(
    volume: Volume,
    manifest: Manifest,
    uids: ResultUids,
    groups: Sequence[Any],
    evidence: Sequence[Dataset],
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR (TID 1500) holding ``groups``."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(manifest),
        name=manifest.algorithm.name[:64],
        manufacturer_name=manifest.algorithm.manufacturer,
        model_name=manifest.algorithm.name[:64],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=code(manifest.outputs.procedure),
        imaging_measurements=list(groups),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=uids.uid("sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.uid("sr", "instance"),
        **equipment(manifest),
        series_description=(manifest.outputs.sr_series_description or f"{manifest.name} (AI)")[:64],
        is_complete=True,
    )


def segment_groups(
    volume: Volume,
    seg: hd.seg.Segmentation,
    found: Sequence[SegmentMeasures],
    manifest: Manifest,
    uids: ResultUids,
    labels: np.ndarray | None = None,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per segment found; ``labels`` ((z, y, x) in the volume's
    grid) tells a multi-frame source's frames each segment lies on."""
    algorithm = _sr_algorithm(manifest)
    by_label = {s.label: s for s in manifest.outputs.segments}
    groups = []
    for number, measures in enumerate(found, start=1):
        segment = by_label[measures.label]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.uid("sr", f"tracking-{segment.label}"), identifier=segment.name
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=number,
                    **segment_sources(volume, labels, measures.label),
                ),
                finding_type=code(segment.type),
                finding_sites=_sites(segment),
                measurements=_measurements(segment, measures, manifest, algorithm),
            )
        )
    return groups


def _sites(segment: Segment) -> list[hd.sr.FindingSite]:
    if segment.category.code != "91723000":  # an anatomical structure is its own site
        return []
    laterality = LATERALITY[segment.laterality] if segment.laterality else None
    return [hd.sr.FindingSite(code(segment.type), laterality=laterality)]


def _measurements(
    segment: Segment,
    measures: SegmentMeasures,
    manifest: Manifest,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.Measurement]:
    units = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
    if "CT" not in manifest.accepts.modalities:
        units = Code("1", "UCUM", "no units")
    values = {
        "volume": (codes.SCT.Volume, measures.volume_ml, MILLILITER),
        "mean_intensity": (MEAN, measures.mean_intensity, units),
        "max_diameter": (LONG_AXIS, measures.max_diameter_mm, MILLIMETER),
    }
    return [
        hd.sr.Measurement(
            name=values[kind][0],
            value=round(float(values[kind][1]), 3),
            unit=values[kind][2],
            algorithm_id=algorithm,
        )
        for kind in segment.measurements
    ]


def finding_groups(
    values: Sequence[float], manifest: Manifest, uids: ResultUids
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group per manifest finding: its value, and present/absent when the
    manifest gives a threshold."""
    algorithm = _sr_algorithm(manifest)
    site = manifest.outputs.finding_site
    groups = []
    for index, (finding, value) in enumerate(zip(manifest.outputs.findings, values, strict=True)):
        evaluations = []
        if finding.positive_threshold is not None:
            verdict = PRESENT if value >= finding.positive_threshold else ABSENT
            evaluations.append(hd.sr.QualitativeEvaluation(code(finding.concept), verdict))
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.uid("sr", f"finding-{index}"), identifier=finding.concept.meaning
                ),
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(code(site))] if site else None,
                measurements=[
                    hd.sr.Measurement(
                        name=code(finding.concept),
                        value=round(float(value), 6),
                        unit=code(finding.units),
                        algorithm_id=algorithm,
                    )
                ],
                qualitative_evaluations=evaluations or None,
            )
        )
    return groups
