"""Header facts: what routing rules may test, taken from a data set at receive time.

The index keeps, for every series, each attribute's distinct values with the
number of instances that carried them (``SeriesFacts``), so rules are
evaluated from the index alone and never read a file.

A key is a tag as eight hex digits (``00080060``); an attribute inside a
sequence is the path of tags joined by ``.`` (``00081032.00080100``), its
values gathered from every item. A value is text: leading and trailing spaces
and NULs removed, a multi-valued attribute's values joined by ``\\`` (as DICOM
writes them). An empty value is not a fact: a missing attribute and an empty
one are the same to a rule ("absent").

Receive-time facts that are not attributes use plain names: ``calling_ae``,
``called_ae``, ``peer_address``.

Bounded by design: values longer than ``MAX_VALUE`` characters, binary VRs and
pixel data are not kept; an attribute keeps at most ``MAX_DISTINCT`` distinct
values per series (``COUNTED`` attributes more), the instances beyond that are
counted under ``OTHER``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

# value → number of instances that carried it; OTHER counts values not kept.
ValueCounts = dict[str, int]
SeriesFacts = dict[str, ValueCounts]
InstanceFacts = dict[str, list[str]]

OTHER = "\x00other"
MAX_VALUE = 256
MAX_DISTINCT = 16
MAX_DEPTH = 3
MAX_ITEMS = 8
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"})
# Unique per instance: kept by the index elsewhere, or useless to a rule.
SKIPPED = frozenset(
    {
        0x00080018,  # SOPInstanceUID
        0x00020003,  # MediaStorageSOPInstanceUID
        0x00200032,  # ImagePositionPatient
        0x00201041,  # SliceLocation
        0x00200013,  # InstanceNumber
    }
)
# Attributes whose distinct values the expected-content trigger counts.
COUNTED = {"00200100": 4096, "00200012": 256}  # TemporalPositionIdentifier, AcquisitionNumber
CONTEXT_KEYS = ("calling_ae", "called_ae", "peer_address")


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(v) or "" for v in value]
        text = "\\".join(parts)
        return text if text.strip("\\") else None
    if isinstance(value, bytes):
        return None
    text = str(value).strip(" \x00")
    return text or None


def _walk(ds: Dataset, prefix: str, depth: int, out: InstanceFacts) -> None:
    for raw_tag in list(ds.keys()):
        tag = int(raw_tag)
        if tag >= 0x7FE00000 or (depth == 0 and tag in SKIPPED):
            continue
        try:
            elem = ds[raw_tag]
        except Exception:  # noqa: BLE001 - a value that cannot be decoded is not a fact
            continue
        key = f"{prefix}{tag_key(tag)}"
        if elem.VR == "SQ":
            if depth + 1 < MAX_DEPTH and isinstance(elem.value, DicomSequence):
                for item in list(elem.value)[:MAX_ITEMS]:
                    _walk(item, key + ".", depth + 1, out)
            continue
        if elem.VR in BINARY_VRS:
            continue
        text = _text(elem.value)
        if text is None or len(text) > MAX_VALUE:
            continue
        values = out.setdefault(key, [])
        if text not in values:
            values.append(text)


def instance_facts(ds: Dataset, context: Mapping[str, str] | None = None) -> InstanceFacts:
    """The facts of one instance: key → its distinct values (several only for
    attributes inside sequences with several items)."""
    out: InstanceFacts = {}
    _walk(ds, "", 0, out)
    for key, value in (context or {}).items():
        if value:
            out[key] = [value]
    return out


def merge(series: SeriesFacts, instance: InstanceFacts) -> bool:
    """Add one instance's facts to its series' facts; True when anything changed."""
    changed = False
    for key, values in instance.items():
        counts = series.setdefault(key, {})
        limit = COUNTED.get(key, MAX_DISTINCT)
        for value in values:
            if value in counts:
                counts[value] += 1
            elif len(counts) - (OTHER in counts) < limit:
                counts[value] = 1
            else:
                counts[OTHER] = counts.get(OTHER, 0) + 1
            changed = True
    return changed


def union(many: Iterable[SeriesFacts]) -> SeriesFacts:
    """Study facts: the facts of all its series together."""
    out: SeriesFacts = {}
    for facts in many:
        for key, counts in facts.items():
            target = out.setdefault(key, {})
            for value, n in counts.items():
                target[value] = target.get(value, 0) + n
    return out
