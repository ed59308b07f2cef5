"""Routing rules: which pipelines run on a series. Pure functions of data.

Rules are data from ``config.yaml`` (``settings.Rule``), never evaluated code.
A rule matches a series when any of its ``match`` entries holds; an entry
holds when every condition it gives holds (regular expressions must match the
whole attribute value; a missing attribute is the empty string). Every
matching rule makes one job; a series no rule matches is stored and nothing
runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dicom_node.index import SeriesSummary
from dicom_node.settings import Match, Rule

ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SOPClassUID",
    "ProtocolName",
    "Manufacturer",
)


def matches(summary: SeriesSummary, match: Match) -> bool:
    for keyword in ATTRIBUTES:
        pattern = getattr(match, keyword)
        if pattern is not None and not re.fullmatch(pattern, summary.attribute(keyword)):
            return False
    if summary.instances < match.min_instances:
        return False
    return match.max_instances is None or summary.instances <= match.max_instances


def select(summary: SeriesSummary, rules: Sequence[Rule]) -> list[Rule]:
    """The rules that apply to ``summary``, in config order."""
    return [rule for rule in rules if any(matches(summary, m) for m in rule.match)]
