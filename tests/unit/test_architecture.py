"""The three rooms and their doors: workers → pipelines, workers → dicom_node.jobspec
and settings; dicom_node never imports workers or pipelines; pipelines imports neither."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {
    "dicom_node": {"dicom_node"},
    "pipelines": {"pipelines"},
    "workers": {"workers", "pipelines", "dicom_node"},
}
HEAVY_AT_IMPORT = {"tensorflow"}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], id(node) in top_level))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_through_its_doors(package):
    own = set(ALLOWED)
    for path in sorted((REPO / package).rglob("*.py")):
        for module, _ in imports(path):
            if module in own:
                assert module in ALLOWED[package], f"{path.relative_to(REPO)} imports {module}"


def test_workers_use_only_job_descriptions_and_settings_from_dicom_node():
    for path in sorted((REPO / "workers").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dicom_node"):
                assert node.module in {"dicom_node.jobspec", "dicom_node.settings",
                                       "dicom_node.spool", "dicom_node.lanes", "dicom_node"}, (
                    f"{path.relative_to(REPO)} imports {node.module}")  # fmt: skip


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_tensorflow_is_never_imported_at_module_level(package):
    for path in sorted((REPO / package).rglob("*.py")):
        if path.name in {"graph.py", "export.py"}:
            continue  # the model's own graph definition, imported only to build/export it
        for module, top in imports(path):
            assert not (top and module in HEAVY_AT_IMPORT), f"{path.relative_to(REPO)}: {module}"
