"""Tests of the node's tables run on both engines: SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.state import Database, open_database
from tests.support import postgres

OpenDb = Callable[[], Database]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDb]:
    """Opens (again) this test's database: a SQLite file or a fresh PostgreSQL database."""
    target: str | Path = (
        tmp_path / "node.sqlite" if request.param == "sqlite" else postgres.fresh_database()
    )
    opened: list[Database] = []

    def open_() -> Database:
        opened.append(open_database(target))
        return opened[-1]

    yield open_
    for db in opened:
        db.close()
