from collections.abc import Iterator

import pytest

from tests.support.lung_site import LungSite, LungSites


@pytest.fixture(scope="session")
def lung_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LungSites]:
    """This test process's shared end-to-end sites (tests.support.lung_site), one per
    engine; each node must exit cleanly at the end."""
    sites = LungSites(tmp_path_factory.mktemp("lung-sites"))
    yield sites
    for engine, (code, log) in sites.stop().items():
        assert code == 0, f"the shared {engine} node exited {code}:\n{log}"


@pytest.fixture
def lung_site(lung_sites: LungSites, node_database: str) -> LungSite:
    """The shared site of this module's engine (node_database)."""
    return lung_sites.get(node_database)
