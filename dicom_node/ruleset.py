"""The rule language's typed form: rules, their actions and their triggers.

``docs/rules.md`` documents it with examples. Everything here is data checked
at load time (pydantic, ``extra="forbid"``): an unknown keyword, a bad regular
expression or a missing operator names the key and line and the old
configuration stays in force.

A rule has a condition (``when``, and/or the compact ``match`` list of
regular expressions kept from the first release), actions (``pipeline`` /
``run`` with parameters, queue, lane and priority; ``forward`` the received
images; ``discard``), and a ``trigger`` saying when a series or study is
complete enough to act on.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from dicom_node.conditions import (
    AllCondition,
    AnyCondition,
    AttributeCondition,
    Condition,
)
from dicom_node.lanes import check_device

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
QueueName = Annotated[str, AfterValidator(check_device)]  # a device class: gpu, cpu, …
Lane = Literal["urgent", "normal", "offpeak"]
LANES: tuple[Lane, ...] = ("urgent", "normal", "offpeak")
Scalar = str | int | float | bool
LEGACY_KEYS = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SOPClassUID",
    "ProtocolName",
    "Manufacturer",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


class Match(_Model):
    """Compact conditions (first release): all given ones must hold.

    Attribute conditions are regular expressions that must match the whole
    value; a missing attribute is the empty string.
    """

    Modality: str | None = None
    BodyPartExamined: str | None = None
    SeriesDescription: str | None = None
    SOPClassUID: str | None = None
    ProtocolName: str | None = None
    Manufacturer: str | None = None
    min_instances: Annotated[int, Field(ge=0)] = 0
    max_instances: Annotated[int, Field(ge=0)] | None = None

    @field_validator(*LEGACY_KEYS)
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    def as_condition(self) -> AllCondition:
        parts: list[Any] = []
        for keyword in LEGACY_KEYS:
            pattern = getattr(self, keyword)
            if pattern is None:
                continue
            cond = AttributeCondition(attribute=keyword, regex=pattern)
            if re.fullmatch(pattern, ""):  # the empty string stood for "missing"
                parts.append(
                    AnyCondition(any=[AttributeCondition(attribute=keyword, absent=True), cond])
                )
            else:
                parts.append(cond)
        if self.min_instances or self.max_instances is not None:
            parts.append(
                AttributeCondition.model_validate(
                    {"attribute": "instances",
                     "range": {"min": self.min_instances, "max": self.max_instances}}
                )
            )  # fmt: skip
        return AllCondition(all=parts)


class Run(_Model):
    """One pipeline a rule runs, with what the job carries to the worker."""

    pipeline: Name
    parameters: dict[Name, Scalar] = Field(default_factory=dict)
    queue: QueueName = "default"  # device class of the workers, e.g. gpu, cpu
    lane: Lane = "normal"
    priority: Annotated[int, Field(ge=0, le=9)] = 5  # 9 first


class Expect(_Model):
    """Expected content: the unit is complete when all of it is there."""

    series: list[Condition] = Field(default_factory=list)
    instance_counts: bool = False


class Trigger(_Model):
    per: Literal["series", "study"] = "study"
    wait_for: Literal["quiet", "release", "expected"] = "quiet"
    quiet_seconds: Annotated[float, Field(ge=0)] | None = None  # None: node.stable_after_seconds
    expect: Expect | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 3600.0
    late_instances: Literal["rerun", "ignore", "new_series"] = "rerun"

    @model_validator(mode="after")
    def _expect_given(self) -> Trigger:
        if self.wait_for == "expected" and self.expect is None:
            raise ValueError("wait_for: expected needs an expect: section (series and/or"
                             " instance_counts)")  # fmt: skip
        if self.expect is not None and self.expect.series and self.per == "series":
            raise ValueError("expect.series lists series of a study: use it with per: study")
        return self


class Rule(_Model):
    name: Name
    description: str = ""
    enabled: bool = True
    when: Condition | None = None
    match: list[Match] | None = None
    pipeline: Name | None = None
    run: list[Run] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    forward: list[str] = Field(default_factory=list)
    discard: bool = False
    trigger: Trigger = Trigger()
    _condition: AllCondition = PrivateAttr(default_factory=lambda: AllCondition(all=[]))
    _runs: list[Run] = PrivateAttr(default_factory=list)

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _actions(self) -> Rule:
        first = [Run(pipeline=self.pipeline)] if self.pipeline is not None else []
        self._runs = first + list(self.run)
        if self.pipeline is not None and any(r.pipeline == self.pipeline for r in self.run):
            raise ValueError(f"pipeline {self.pipeline!r} is given twice (pipeline and run)")
        if self.discard and (self.runs or self.forward):
            raise ValueError("discard excludes pipeline, run and forward")
        if not (self.discard or self.runs or self.forward):
            raise ValueError("a rule needs an action: pipeline, run, forward or discard")
        parts: list[Any] = []
        if self.match is not None:
            parts.append(AnyCondition(any=[m.as_condition() for m in self.match]))
        if self.when is not None:
            parts.append(self.when)
        self._condition = AllCondition(all=parts)
        return self

    @property
    def runs(self) -> list[Run]:
        """``pipeline`` (with the defaults) first, then ``run``."""
        return self._runs

    @property
    def condition(self) -> AllCondition:
        return self._condition


class RoutingSettings(_Model):
    apply: Literal["all", "first"] = "all"  # every matching rule acts, or only the first
    watch_config: bool = True  # reload when the config file changes (besides SIGHUP)
    audit_log: str = "config-audit.log"  # below storage.dir unless absolute
