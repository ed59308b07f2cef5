import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


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
