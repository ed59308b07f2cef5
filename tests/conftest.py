import functools
import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if _follows_the_test_database(item):
            item.add_marker(pytest.mark.node_tables)


def _follows_the_test_database(item) -> bool:
    """Tests whose node tables live where DICOM_NODE_TEST_DATABASE says: every test of
    a module that starts nodes (NodeProcess) or opens the suite's database. The
    PostgreSQL pass of scripts/test.sh runs these (``-m node_tables``); the others
    never open the node's tables (pipelines, validators, CLI checks of files), or
    already run on both engines in every pass (the ``open_db`` fixture)."""
    return _uses_test_database(str(item.fspath))


@functools.cache
def _uses_test_database(path: str) -> bool:
    text = Path(path).read_text()
    if "PrivateServer(" in text:  # its nodes use a PostgreSQL server of their own
        return False
    return "NodeProcess" in text or "suite_database(" in text


@pytest.fixture(scope="session", autouse=True)
def _no_network_for_test_data():
    # pydicom-data is installed; never let a missing file turn into a download.
    os.environ.setdefault("PYDICOM_DATA_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases():
    yield
    import sys

    module = sys.modules.get("tests.support.postgres")
    if module is not None:
        module.drop_all()
