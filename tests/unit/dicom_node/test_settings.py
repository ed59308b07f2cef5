from pathlib import Path

import pytest

from dicom_node.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_routes_chest_ct_to_lung_pipeline_and_archive():
    settings = load_settings(REPO / "config.yaml")
    assert settings.node.ae_title == "DICOM-NODE"
    assert settings.broker.embedded
    rule = next(r for r in settings.rules if r.name == "chest-ct-lungs")
    assert rule.pipeline == "lung-ct"
    assert rule.destinations == ["archive"]
    assert set(settings.destinations) == {"archive"}


def test_storage_dir_resolves_against_the_config_folder(tmp_path):
    settings = load_settings(write(tmp_path, "storage:\n  dir: data\n"))
    assert settings.storage.dir == (tmp_path / "data").resolve()


def test_misspelt_key_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "node:\n  ae_title: NODE\n  stable_after_secs: 5\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3: node.stable_after_secs: Extra inputs"):
        load_settings(path)


def test_overlong_ae_title_is_refused_with_its_key(tmp_path):
    path = write(tmp_path, "node:\n  ae_title: THIS-IS-WAY-TOO-LONG\n")
    with pytest.raises(ConfigError, match=r":2: node.ae_title: .*1 to 16 characters"):
        load_settings(path)


def test_rule_sending_to_an_unknown_destination_is_refused(tmp_path):
    path = write(
        tmp_path,
        "rules:\n  - name: r\n    match: {Modality: CT}\n    pipeline: lung-ct\n"
        "    destinations: [pacs]\n",
    )
    with pytest.raises(ConfigError, match=r"destination 'pacs'.*not under destinations"):
        load_settings(path)


def test_bad_regular_expression_names_the_rule_key(tmp_path):
    path = write(
        tmp_path, "rules:\n  - name: r\n    match:\n      Modality: '(CT'\n    pipeline: x\n"
    )
    with pytest.raises(ConfigError, match=r":4: rules.0.match.0.Modality: .*regular expression"):
        load_settings(path)


def test_empty_rules_are_valid(tmp_path):
    assert load_settings(write(tmp_path, "rules: []\n")).rules == []


def test_unknown_broker_scheme_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"broker.url"):
        load_settings(write(tmp_path, "broker:\n  url: ftp://x\n"))


def test_unreadable_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "node: [unclosed\n"))


def test_receive_engine_is_native_by_default_and_a_bad_one_is_named(tmp_path):
    assert load_settings(write(tmp_path, "rules: []\n")).receive.engine == "native"
    path = write(tmp_path, "receive:\n  engine: dcmtk\n")
    with pytest.raises(ConfigError, match=r":2: receive.engine: .*'native' or 'pynetdicom'"):
        load_settings(path)
