"""Malformed demographics in source headers: left out of results, never fatal.

Hospital data holds values that break their VR: ``1970-01-01`` as a DA, ``m``
as a CS, ages without a unit, control characters in names. highdicom copies
the patient and study modules from the sources into every result and parses
them by VR, so one such value would fail the whole job, with the value quoted
in the exception text.

``clean_headers`` looks at the demographic attributes of each source dataset
(the patient group 0010, the study, visit and physician attributes below, and
the items of their sequences) and empties every value that its VR does not
allow. A valid value is copied into the results as it is; an invalid one is
left out (an empty value, since most are Type 2). The Type 2 patient and study
attributes a result must hold are added empty where a source lacks them. It
returns the attributes it emptied by tag and keyword, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pydicom import config
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DT, TM, validate_value

# Demographic attributes outside group 0010 that results copy.
STUDY_KEYWORDS = frozenset({
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
    "StudyDescription", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "OperatorsName",
    "PerformingPhysicianName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "AdmittingDiagnosesDescription", "ReasonForTheRequestedProcedure",
})  # fmt: skip
DEMOGRAPHIC_GROUPS = frozenset({0x0010, 0x0032, 0x0038})
# Type 2 attributes of the Patient and General Study modules: a result must hold
# them, empty if unknown, so a source that lacks one gets it empty (not a failure).
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
_TEMPORAL = {"DA": DA, "TM": TM, "DT": DT}
# Control characters: the text VRs (LT, ST, UT, UC) allow TAB, LF, FF and CR; ESC is
# allowed only where SpecificCharacterSet declares ISO 2022 code extensions.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})


_STUDY_TAGS = frozenset(tag_for_keyword(keyword) for keyword in STUDY_KEYWORDS)


def _is_demographic(tag: BaseTag) -> bool:
    return tag.group in DEMOGRAPHIC_GROUPS or tag in _STUDY_TAGS


def _values(elem: DataElement) -> list[object]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _valid(elem: DataElement, iso2022: bool) -> bool:
    vr = str(elem.VR)
    for value in _values(elem):
        text = str(value).replace("\x1b", "") if iso2022 else str(value)
        if vr in _TEXT_VRS:
            if _TEXT_CONTROL.search(text):
                return False
            continue
        if vr not in _STRING_VRS:
            continue
        if _CONTROL.search(text):
            return False
        try:
            validate_value(vr, text, config.RAISE)
            if vr in _TEMPORAL:
                _TEMPORAL[vr](text)
        except (ValueError, TypeError, OverflowError):
            return False
    return True


# Raw values already looked at in this call, with their verdict: the slices of one
# series repeat the same demographic bytes, so each distinct value is decoded and
# checked once, and the other slices' copies stay undecoded.
_Verdicts = dict[tuple[int, str, bytes, str, bool], bool]


def _clean(
    ds: Dataset, found: set[str], depth: int, inside: bool, iso2022: bool, seen: _Verdicts
) -> None:
    """``inside``: ``ds`` is an item of a demographic sequence, where every
    attribute counts as demographic."""
    # Look at the tags first: only the elements checked are decoded from the file's
    # bytes (a CT slice holds ~100 elements, a handful of them demographic).
    charset = str(ds.get_item(0x00080005).value) if 0x00080005 in ds else ""
    for tag in list(ds.keys()):
        if not (inside or _is_demographic(tag)):
            continue
        raw = ds.get_item(tag)
        key = None
        if isinstance(raw, RawDataElement) and raw.VR != "SQ" and isinstance(raw.value, bytes):
            key = (int(tag), str(raw.VR), raw.value, charset, iso2022)
            if seen.get(key):
                continue  # the same bytes were valid before
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value if depth < 4 else ():
                _clean(item, found, depth + 1, True, iso2022, seen)
            continue
        valid = _valid(elem, iso2022)
        if key is not None:
            seen[key] = valid
        if not valid:
            elem.value = None
            found.add(f"({elem.tag.group:04X},{elem.tag.element:04X}) {keyword_for_tag(elem.tag)}")


def clean_headers(datasets: Iterable[Dataset]) -> list[str]:
    """Empty malformed demographic values in place; returns "(gggg,eeee) Keyword" of
    each attribute emptied in any dataset, sorted."""
    found: set[str] = set()
    seen: _Verdicts = {}
    for ds in datasets:
        iso2022 = "ISO 2022" in str(ds.get("SpecificCharacterSet", ""))
        _clean(ds, found, 0, False, iso2022, seen)
        for keyword in TYPE2_KEYWORDS:
            if keyword not in ds:
                setattr(ds, keyword, None)
    return sorted(found)


def describe(emptied: Sequence[str]) -> str:
    """A log line's worth: which attributes were left out (no values)."""
    return "malformed values left out of the results: " + ", ".join(emptied)
