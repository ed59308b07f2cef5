"""Every YAML example in docs/rules.md is a valid configuration (or a valid part of
one): the documented language and the implemented one cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_node.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "rules.md"
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "…" not in b]
DESTINATIONS = {
    name: {"ae_title": name.upper(), "host": "127.0.0.1", "port": 104}
    for name in ("archive", "research")
}


def as_config(block: str) -> dict[str, Any]:
    data = yaml.safe_load(block)
    if isinstance(data, list) and data and "name" in data[0]:
        return {"rules": data}
    if isinstance(data, list):  # a list of conditions
        return {"rules": [{"name": "r", "pipeline": "p", "when": {"all": data}}]}
    if "routing" in data or "rules" in data:
        return data
    return {"rules": [{"name": "r", "pipeline": "p", **data}]}  # when: / trigger:


def test_the_docs_have_examples():
    assert len(BLOCKS) >= 12


@pytest.mark.parametrize("block", BLOCKS, ids=[b.strip().splitlines()[0][:40] for b in BLOCKS])
def test_every_example_in_the_rules_doc_is_valid(block: str):
    settings = Settings.model_validate({"destinations": DESTINATIONS, **as_config(block)})
    for rule in settings.rules:
        rule.condition.compile()
