"""Rule conditions: validated data (never code), evaluated against header facts.

A condition is one of::

    {attribute: <keyword | tag | path>, <operator>: …, level: series, ignore_case: false}
    {all: [condition, …]}     every one holds (an empty list holds)
    {any: [condition, …]}     at least one holds
    {not: condition}          it does not hold
    {time_of_day: {from: "18:00", to: "07:00"}}   routing time, local clock, may wrap
    {day_of_week: [sat, sun]}

Operators: ``equals``, ``one_of``, ``regex`` (whole value), ``contains`` (one
of a multi-valued attribute's values), ``range`` ({min, max}, numbers),
``date_range`` ({from, to}, DA/DT), ``time_range`` ({from, to}, TM),
``in_network`` (peer address in CIDR networks), ``exists``, ``absent``.

Levels: ``series`` (default) holds when any instance of the series
satisfies it; ``instance`` when every instance does; ``study`` when any
instance of any series of the study does. ``exists``/``absent`` ask whether
any instance carries a non-empty value (``instance``: every instance).

``compile`` turns a condition into a check function (plain closures, fast:
rules are evaluated per series in the routing loop) that returns None when the
condition holds, else the reason: the attribute by tag and keyword and what
was expected. Found values are never quoted (they may be patient data).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from dicom_node.facts import CONTEXT_KEYS, OTHER, PARTIAL, SeriesFacts, tag_key

Level = Literal["study", "series", "instance"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
COUNT = "instances"  # the series' number of instances, a pseudo-attribute
OPERATORS = (
    "equals",
    "one_of",
    "regex",
    "contains",
    "range",
    "date_range",
    "time_range",
    "in_network",
    "exists",
    "absent",
)


Check = Callable[["Subject"], "str | None"]  # None: holds; else why not


@dataclass
class Subject:
    """What a condition is evaluated against: one series, its study, the time."""

    facts: SeriesFacts
    instances: int
    now: datetime
    study_facts: Callable[[], SeriesFacts] = field(default=lambda: {})
    _study: SeriesFacts | None = None

    def study(self) -> SeriesFacts:
        if self._study is None:
            self._study = self.study_facts()
        return self._study


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


def resolve(path: str) -> tuple[str, str]:
    """(fact key, display name) of a keyword, tag or ``.``-separated path."""
    if path in CONTEXT_KEYS or path == COUNT:
        return path, path
    keys, names = [], []
    for part in path.strip().split("."):
        m = _TAG.match(part.strip())
        if m:
            tag = int(m.group(1) + m.group(2), 16)
        else:
            found = tag_for_keyword(part.strip())
            if found is None:
                raise ValueError(
                    f"{part.strip()!r} is neither a DICOM keyword nor a tag (gggg,eeee)"
                )
            tag = found
        keys.append(tag_key(tag))
        keyword = keyword_for_tag(tag) or "private"
        names.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}")
    return ".".join(keys), " > ".join(names)


def _digits(value: str, size: int) -> str:
    return "".join(c for c in value if c.isdigit())[:size]


def _clock(value: str) -> str:
    """'7:30' / '07:30:15' / '073015.5' → 'HHMMSS' (zero-padded)."""
    if ":" in value:
        parts = [p.zfill(2) for p in value.split(":")]
        value = "".join(parts)
    digits = _digits(value, 6)
    if len(digits) not in (2, 4, 6):
        raise ValueError(f"{value!r} is not a time of day (HH:MM or HH:MM:SS)")
    return digits.ljust(6, "0")


def _date(value: object) -> str:
    digits = _digits(str(value), 8)
    if len(digits) != 8:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    return digits


class NumberRange(_Model):
    min: float | None = None
    max: float | None = None


class DateRange(_Model):
    from_: str | None = Field(None, alias="from")
    to: str | None = None

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _norm(cls, value: object) -> str | None:
        return None if value is None else _date(value)


class ClockRange(_Model):
    from_: str = Field(alias="from")
    to: str

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _norm(cls, value: object) -> str:
        if isinstance(value, int):  # YAML reads 07:30 as 450 (sexagesimal minutes)
            value = f"{value // 60:02d}:{value % 60:02d}"
        return _clock(str(value))

    def contains(self, hhmmss: str) -> bool:
        if self.from_ <= self.to:
            return self.from_ <= hhmmss <= self.to
        return hhmmss >= self.from_ or hhmmss <= self.to  # wraps midnight


Text = Annotated[str, Field(min_length=1)]


class AttributeCondition(_Model):
    attribute: str
    level: Level = "series"
    ignore_case: bool = False
    equals: str | None = None
    one_of: list[str] | None = None
    regex: str | None = None
    contains: str | list[str] | None = None
    range: NumberRange | None = None
    date_range: DateRange | None = None
    time_range: ClockRange | None = None
    in_network: list[str] | None = None
    exists: Literal[True] | None = None
    absent: Literal[True] | None = None
    _key: str = PrivateAttr("")
    _name: str = PrivateAttr("")
    _test: tuple[Callable[[str], bool]] = PrivateAttr((bool,))
    _what: str = PrivateAttr("")

    @field_validator("equals", mode="before")
    @classmethod
    def _scalar(cls, value: object) -> object:
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    @field_validator("one_of", "contains", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int | float) else v for v in value]
        return value

    @field_validator("in_network", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            for item in items:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an address or network (10.0.0.0/8)"
                    ) from None
        return items

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @field_validator("attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        resolve(value)  # raises ValueError naming the unknown keyword
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> AttributeCondition:
        given = [op for op in OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one operator ({', '.join(OPERATORS)}); found "
                + (", ".join(given) or "none")
            )
        self._key, self._name = resolve(self.attribute)
        test, self._what = self._compile(given[0])
        self._test = (test,)
        return self

    def _compile(self, op: str) -> tuple[Callable[[str], bool], str]:
        fold: Callable[[str], str] = str.casefold if self.ignore_case else str
        case = " (ignoring case)" if self.ignore_case else ""
        if op == "equals":
            want = fold(self.equals or "")
            return (lambda v: fold(v) == want), f"equals {self.equals}{case}"
        if op == "one_of":
            wanted = {fold(x) for x in self.one_of or []}
            return (lambda v: fold(v) in wanted), f"is one of {', '.join(self.one_of or [])}{case}"
        if op == "regex":
            rx = re.compile(self.regex or "", re.IGNORECASE if self.ignore_case else 0)
            return (lambda v: rx.fullmatch(v) is not None), f"matches /{self.regex}/{case}"
        if op == "contains":
            given = [self.contains] if isinstance(self.contains, str) else self.contains or []
            parts = {fold(x) for x in given}
            return (
                lambda v: any(fold(x).strip() in parts for x in v.split("\\"))
            ), f"contains {' or '.join(given)}{case}"
        if op == "range":
            r = self.range or NumberRange()
            lo = float("-inf") if r.min is None else r.min
            hi = float("inf") if r.max is None else r.max
            return (lambda v: _number_in(v, lo, hi)), f"is a number {_bounds(r.min, r.max)}"
        if op == "date_range":
            d = self.date_range or DateRange.model_validate({})
            first, last = d.from_ or "00000000", d.to or "99999999"
            return (lambda v: first <= _digits(v, 8) <= last and len(_digits(v, 8)) == 8), (
                f"is a date from {d.from_ or 'any'} to {d.to or 'any'}"
            )
        if op == "time_range":
            t = self.time_range
            assert t is not None
            return (lambda v: _time_in(v, t)), f"is a time from {t.from_} to {t.to}"
        if op == "in_network":
            nets = [ipaddress.ip_network(n, strict=False) for n in self.in_network or []]
            return (lambda v: _address_in(v, nets)), f"is in {', '.join(self.in_network or [])}"
        return (lambda v: True), ("exists" if op == "exists" else "is absent")

    def describe(self) -> str:
        where = {"study": " in the study", "series": "", "instance": " in every instance"}
        return f"{self._name} {self._what}{where[self.level]}"

    def compile(self) -> Check:
        key, name, what, test = self._key, self._name, self._what, _memo(self._test[0])
        study = self.level == "study"
        where = " in the study" if study else ""
        if key == COUNT:
            fail_count = f"expected a count that {what}"

            def count(s: Subject) -> str | None:
                ok = test(str(s.instances))
                return None if ok else f"series has {s.instances} instance(s), {fail_count}"

            return count
        if self.absent:
            present = f"{name} is present{where} (expected absent)"

            def absent(s: Subject) -> str | None:
                return present if (s.study() if study else s.facts).get(key) else None

            return absent
        missing, no_value = f"{name} is absent{where}", f"{name}: no value {what}{where}"
        if self.level == "instance":
            some = f"{name}: not every instance {'has it' if self.exists else what}"

            def every(s: Subject) -> str | None:
                values = s.facts.get(key)
                if not values:
                    return missing
                if OTHER in values or key in s.facts.get(PARTIAL, ()):
                    return some
                return None if all(map(test, values)) else some

            return every

        if study:

            def any_in_study(s: Subject) -> str | None:
                values = s.study().get(key)
                if not values:
                    return missing
                return None if any(map(test, values)) else no_value

            return any_in_study
        raw, seen = self._test[0], {OTHER: False}

        def any_value(s: Subject) -> str | None:  # the hot path: inlined memo
            values = s.facts.get(key)
            if not values:
                return missing
            for v in values:
                found = seen.get(v)
                if found is None:
                    found = raw(v)
                    if len(seen) < 4096:
                        seen[v] = found
                if found:
                    return None
            return no_value

        return any_value


def _memo(test: Callable[[str], bool]) -> Callable[[str], bool]:
    """Remember a test's answer per value: values repeat across series and rules."""
    seen: dict[str, bool] = {OTHER: False}  # a value not kept satisfies nothing

    def cached(value: str) -> bool:
        found = seen.get(value)
        if found is None:
            found = test(value)
            if len(seen) < 4096:
                seen[value] = found
        return found

    return cached


def _bounds(lo: float | None, hi: float | None) -> str:
    def num(x: float) -> str:
        return f"{x:g}"

    if lo is not None and hi is not None:
        return f"from {num(lo)} to {num(hi)}"
    return f"of at least {num(lo)}" if lo is not None else f"of at most {num(hi or 0)}"


def _number_in(value: str, lo: float, hi: float) -> bool:
    try:
        return lo <= float(value) <= hi
    except ValueError:
        return False


def _time_in(value: str, window: ClockRange) -> bool:
    digits = _digits(value, 6)
    return len(digits) >= 2 and window.contains(digits.ljust(6, "0"))


def _address_in(value: str, nets: list[Any]) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in net for net in nets)


class AllCondition(_Model):
    all: list[Condition]

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.all) + ")"

    def compile(self) -> Check:
        checks = [c.compile() for c in self.all]

        def all_of(s: Subject) -> str | None:
            for check in checks:
                reason = check(s)
                if reason is not None:
                    return reason
            return None

        return all_of


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.any) + ")"

    def compile(self) -> Check:
        checks = [c.compile() for c in self.any]

        def any_of(s: Subject) -> str | None:
            reasons = []
            for check in checks:
                reason = check(s)
                if reason is None:
                    return None
                reasons.append(reason)
            return "none of: " + "; ".join(reasons)

        return any_of


class NotCondition(_Model):
    not_: Condition = Field(alias="not")

    def describe(self) -> str:
        return f"not ({self.not_.describe()})"

    def compile(self) -> Check:
        check, excluded = self.not_.compile(), f"excluded: {self.not_.describe()}"

        def not_(s: Subject) -> str | None:
            return excluded if check(s) is None else None

        return not_


class TimeOfDay(_Model):
    time_of_day: ClockRange

    def describe(self) -> str:
        w = self.time_of_day
        return f"time of day from {w.from_[:2]}:{w.from_[2:4]} to {w.to[:2]}:{w.to[2:4]}"

    def compile(self) -> Check:
        window, described = self.time_of_day, self.describe()

        def time_of_day(s: Subject) -> str | None:
            if window.contains(s.now.strftime("%H%M%S")):
                return None
            return f"routing time {s.now:%H:%M} is outside the {described}"

        return time_of_day


class DayOfWeek(_Model):
    day_of_week: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        min_length=1
    )

    @field_validator("day_of_week", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        items = [value] if isinstance(value, str) else value
        return [str(v).lower()[:3] for v in items] if isinstance(items, list) else value

    def describe(self) -> str:
        return f"day of week in {', '.join(self.day_of_week)}"

    def compile(self) -> Check:
        days, listed = set(self.day_of_week), ", ".join(self.day_of_week)

        def day_of_week(s: Subject) -> str | None:
            day = DAYS[s.now.weekday()]
            return None if day in days else f"routing day {day} is not in {listed}"

        return day_of_week


def _kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if not isinstance(value, dict):
        return None
    for key, kind in (
        ("attribute", "AttributeCondition"),
        ("all", "AllCondition"),
        ("any", "AnyCondition"),
        ("not", "NotCondition"),
        ("time_of_day", "TimeOfDay"),
        ("day_of_week", "DayOfWeek"),
    ):
        if key in value:
            return kind
    return None


Condition = Annotated[
    Annotated[AttributeCondition, Tag("AttributeCondition")]
    | Annotated[AllCondition, Tag("AllCondition")]
    | Annotated[AnyCondition, Tag("AnyCondition")]
    | Annotated[NotCondition, Tag("NotCondition")]
    | Annotated[TimeOfDay, Tag("TimeOfDay")]
    | Annotated[DayOfWeek, Tag("DayOfWeek")],
    Discriminator(
        _kind,
        custom_error_type="condition",
        custom_error_message=(
            "a condition is a mapping with one of: attribute, all, any, not,"
            " time_of_day, day_of_week"
        ),
    ),
]

for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()
