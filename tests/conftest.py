import functools
import inspect
import os
import re
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

# Where the nodes' tables live (tests.support.peers.TEST_DATABASE): "sqlite" (unset),
# "postgresql", or "both": every node_tables test runs once on each engine, in one
# session (scripts/test.sh), each module's two runs free to go to different processes.
TEST_DATABASE = "DICOM_NODE_TEST_DATABASE"
ENGINES = ("sqlite", "postgresql")

# Modules that take longest (docs/benchmarks.md, "Test suite"), handed out first so
# that no process is left running one of them while the others idle at the end. The
# end-to-end, multi-frame and brain multi-frame modules are one group per engine
# (the shared site, tests/integration/conftest.py).
SLOW_FIRST = (
    "integration/test_faults.py",
    "integration/test_end_to_end.py",
    "integration/test_multiframe_end_to_end.py",
    "integration/test_brain_multiframe.py",
    "integration/test_result_validators.py",
    "integration/test_models_end_to_end.py",
    "integration/test_receive_hostile.py",
    "integration/test_routing_node.py",
    "integration/test_two_nodes.py",
    "unit/pipelines/test_lung_model_other_phantom.py",
    "unit/workers/test_execute.py",
    "integration/test_lanes.py",
    "integration/test_reload.py",
)


def _both() -> bool:
    return os.environ.get(TEST_DATABASE) == "both"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "one_engine(why): in a both-engines session, run once, on SQLite (unless the"
        " test names its own database): what it checks does not depend on the engine"
        " of the node's tables (say why)",
    )


def pytest_generate_tests(metafunc):
    if _both() and _uses_test_database(str(metafunc.definition.path)):
        one = metafunc.definition.get_closest_marker("one_engine")
        if one is None:
            metafunc.parametrize("node_database", ENGINES, scope="module", indirect=True)
        elif not one.args:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: one_engine needs a reason")


@pytest.fixture(scope="module", autouse=True)
def node_database(request):
    """The engine of this module's nodes' tables. A module-scoped fixture that starts
    nodes takes this fixture, so that it starts them again for the other engine."""
    engine = getattr(request, "param", None)
    if engine is None:
        yield "postgresql" if os.environ.get(TEST_DATABASE) == "postgresql" else "sqlite"
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_DATABASE, engine)
        yield engine


@pytest.hookimpl(tryfirst=True)  # marks before -m selects by them
def pytest_collection_modifyitems(config, items):
    _mark(items)
    # one_engine on a parameter (pytest.param(..., marks=...)): its PostgreSQL copy goes.
    extra = [i for i in items if i.get_closest_marker("one_engine") and _engine(i) == ENGINES[1]]
    if extra:
        config.hook.pytest_deselected(items=extra)
        items[:] = [i for i in items if i not in extra]


@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)
def pytest_collection_modifyitems_slow_first(items):  # after pytest's reordering by fixture
    items.sort(key=_slow_first)


def _mark(items) -> None:
    for item in items:
        path = str(item.path)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if _follows_the_test_database(item):
            item.add_marker(pytest.mark.node_tables)
            if _both() and item.get_closest_marker("one_engine") is None:
                _check_module_fixtures(item)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own schedulers
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup (scripts/test.sh): a module's tests stay in one process, as with
    loadfile, but its SQLite and PostgreSQL runs are two groups, free to go to the two
    processes at once. xdist's own loadgroup cannot do this with pytest >= 9.2: the
    group it appends to each test's id no longer reaches the id, and every test is
    then handed out alone (each process starting its own module-scoped peers)."""
    if config.getvalue("dist") == "loadgroup":
        return ModuleEngineScheduling(config, log)
    return None


class ModuleEngineScheduling(LoadScopeScheduling):
    """Groups by module and engine: ``tests/x.py::test_y[a-postgresql]`` goes with the
    other PostgreSQL tests of ``tests/x.py``."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        params = re.search(r"\[([^\[]*)\]$", nodeid)
        engines = [p for p in params.group(1).split("-") if p in ENGINES] if params else []
        if _uses_lung_site(module):
            # One group per engine for every module on the shared site, so that one
            # process starts it (tests/integration/conftest.py). one_engine: SQLite.
            engine = engines[0] if engines else ENGINES[0] if _both() else ""
            return f"lung_site-{engine}" if engine else "lung_site"
        return f"{module}-{engines[0]}" if engines else module


def _engine(item) -> str | None:
    return item.callspec.params.get("node_database") if hasattr(item, "callspec") else None


def _slow_first(item) -> int:
    path = item.path.as_posix()
    for rank, suffix in enumerate(SLOW_FIRST):
        if path.endswith(suffix):
            return rank
    return len(SLOW_FIRST)


def _follows_the_test_database(item) -> bool:
    """Tests whose node tables live where DICOM_NODE_TEST_DATABASE says: every test of
    a module that starts nodes (NodeProcess), uses a shared site's (``lung_site``,
    tests/integration/conftest.py) or opens the suite's database. The
    PostgreSQL run of scripts/test.sh runs these (``node_tables``); the others
    never open the node's tables (pipelines, validators, CLI checks of files), or
    already run on both engines in every run (the ``open_db`` fixture)."""
    return _uses_test_database(str(item.path))


@functools.cache
def _uses_lung_site(module: str) -> bool:
    path = Path(__file__).parent.parent / module
    return path.exists() and "lung_site" in path.read_text()


@functools.cache
def _uses_test_database(path: str) -> bool:
    text = Path(path).read_text()
    if "PrivateServer(" in text:  # its nodes use a PostgreSQL server of their own
        return False
    return any(mark in text for mark in ("NodeProcess", "suite_database(", "lung_site"))


def _check_module_fixtures(item) -> None:
    """A module-scoped fixture that starts nodes without taking ``node_database``
    would be kept for the module's second engine: its nodes on the first one."""
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        fixture = defs[-1]
        if fixture.scope == "function" or name == "node_database":
            continue
        if "NodeProcess(" in inspect.getsource(fixture.func) and not _takes_engine(
            fixture, item._fixtureinfo.name2fixturedefs
        ):
            raise pytest.UsageError(
                f"{item.path}: fixture {name} ({fixture.scope} scope) starts nodes:"
                " it must take the node_database fixture"
            )


def _takes_engine(fixture, defs) -> bool:
    names = list(fixture.argnames)
    while names:
        name = names.pop()
        if name == "node_database":
            return True
        names.extend(defs[name][-1].argnames if name in defs else ())
    return False


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
