"""Header facts: what routing rules may test, taken from a data set at receive time.

The index keeps, for every series, each attribute's distinct values
(``SeriesFacts``), so rules are evaluated from the index alone and never read
a file.

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
values per series (``COUNTED`` attributes more) and then ``OTHER`` marks that
more were seen. ``PARTIAL`` lists the keys that some instances of the series
lack. Together they make "every instance satisfies" exact: every kept value
satisfies, no value was dropped and no instance lacks the attribute. A series'
facts change only when a new value, a new key or a first gap appears, so most
instances of a series change nothing in the index.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

SeriesFacts = dict[str, list[str]]  # key → distinct values (OTHER: more were seen)
InstanceFacts = dict[str, list[str]]

OTHER = "\x00other"
PARTIAL = "partial"  # the keys some instances of the series lack
MAX_VALUE = 256
MAX_DISTINCT = 16
MAX_DEPTH = 3
MAX_ITEMS = 8
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI",
     "UC", "UR"}
)  # fmt: skip
NUMBER_VRS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("I", 4), "SL": ("i", 4),
              "FL": ("f", 4), "FD": ("d", 8)}  # fmt: skip
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
# UIDs are kept only when they name a kind of thing (SOP class, transfer syntax,
# coding scheme, ...); instance UIDs (study, series, frame of reference, the
# instances a sequence refers to) are unique and would only make facts large.
KEPT_UIDS = frozenset(
    tag for tag, entry in DicomDictionary.items()
    if entry[0] == "UI" and not entry[4].endswith(("InstanceUID", "FrameOfReferenceUID"))
    and "Instance" not in entry[4]
)  # fmt: skip
_VR_CACHE: dict[int, str | None] = {}


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(_text(v) or "" for v in value)
        return text if text.strip("\\") else None
    if isinstance(value, bytes):
        return None
    text = str(value).strip(" \x00")
    return text or None


def _vr(tag: int, raw: RawDataElement) -> str | None:
    """The element's VR; for implicit VR, and for UN (which some archives write
    for attributes they do not know), the dictionary's, when the tag is known."""
    if raw.VR is not None and raw.VR != "UN":
        return str(raw.VR)
    if tag not in _VR_CACHE:
        try:
            _VR_CACHE[tag] = dictionary_VR(tag)
        except KeyError:
            _VR_CACHE[tag] = None  # implicit VR private tag: meaning unknown
    return _VR_CACHE[tag]


def raw_text(tag: int, raw: Any) -> tuple[bool, str | None]:
    """(handled, text) straight from a raw ASCII text element, without pydicom's
    conversion; not handled: binary, sequences, numbers and non-ASCII text."""
    if not isinstance(raw, RawDataElement):
        return False, None
    vr = _vr(tag, raw)
    if vr is None or vr in BINARY_VRS or (vr == "UI" and tag not in KEPT_UIDS):
        return True, None
    value = raw.value
    if not isinstance(value, bytes):
        return False, None
    if vr in NUMBER_VRS:
        code, size = NUMBER_VRS[vr]
        if not value or len(value) % size:
            return True, None
        order = "<" if raw.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{len(value) // size}{code}", value)
        return True, "\\".join(str(n) for n in numbers)
    if vr not in TEXT_VRS or not value.isascii():
        return False, None
    text = value.decode("ascii").strip(" \x00")
    if "\\" in text:
        text = "\\".join(part.strip(" \x00") for part in text.split("\\"))
        if not text.strip("\\"):
            return True, None
    return True, text or None


def _add(out: InstanceFacts, key: str, text: str | None) -> None:
    if text is None or len(text) > MAX_VALUE:
        return
    values = out.setdefault(key, [])
    if text not in values:
        values.append(text)


def _walk(ds: Dataset, prefix: str, depth: int, out: InstanceFacts) -> None:
    raws = ds._dict
    for tag in list(raws):
        itag = int(tag)
        if itag >= 0x7FE00000 or (depth == 0 and itag in SKIPPED):
            continue
        key = f"{prefix}{itag:08X}"
        handled, text = raw_text(itag, raws[tag])
        if handled:
            _add(out, key, text)
            continue
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - a value that cannot be decoded is not a fact
            continue
        if elem.VR == "SQ":
            if depth + 1 < MAX_DEPTH and isinstance(elem.value, DicomSequence):
                for item in list(elem.value)[:MAX_ITEMS]:
                    _walk(item, key + ".", depth + 1, out)
        elif elem.VR not in BINARY_VRS and (elem.VR != "UI" or itag in KEPT_UIDS):
            _add(out, key, _text(elem.value))


def instance_facts(ds: Dataset, context: Mapping[str, str] | None = None) -> InstanceFacts:
    """The facts of one instance: key → its distinct values (several only for
    attributes inside sequences with several items)."""
    out: InstanceFacts = {}
    _walk(ds, "", 0, out)
    for key, value in (context or {}).items():
        if value:
            out[key] = [value]
    return out


def merge(series: SeriesFacts, instance: InstanceFacts, first: bool | None = None) -> bool:
    """Add one instance's facts to its series' facts (``first``: the series' first
    instance; by default, when the series has no facts yet); True when the
    series' facts changed."""
    if first is None:
        first = not series
    changed = False
    partial = set(series.get(PARTIAL, ()))
    for key, values in instance.items():
        have = series.get(key)
        if have is None:
            have = series[key] = []
            if not first:
                partial.add(key)  # earlier instances lacked it
        limit = COUNTED.get(key, MAX_DISTINCT)
        for value in values:
            if value in have:
                continue
            if len(have) - (OTHER in have) < limit:
                have.append(value)
            elif OTHER not in have:
                have.append(OTHER)
            else:
                continue
            changed = True
    if not first:
        partial |= series.keys() - instance.keys() - {PARTIAL}
    if partial != set(series.get(PARTIAL, ())):
        series[PARTIAL] = sorted(partial)
        changed = True
    return changed


def union(many: Iterable[SeriesFacts]) -> SeriesFacts:
    """Study facts: the facts of all its series together."""
    out: SeriesFacts = {}
    for facts in many:
        for key, values in facts.items():
            if key == PARTIAL:
                continue
            target = out.setdefault(key, [])
            target.extend(v for v in values if v not in target)
    return out
