"""The built-in pipelines, listed explicitly (no import side effects, no plugins)."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.base import Pipeline
from pipelines.lung import LungCT

BUILTIN: dict[str, Callable[[], Pipeline]] = {
    "lung-ct": LungCT,
}


def get(name: str) -> Pipeline:
    """A new instance of the built-in pipeline called ``name``."""
    try:
        factory = BUILTIN[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(sorted(BUILTIN))}") from None
    return factory()
