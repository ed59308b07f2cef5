"""Who may associate (pure), association slots across processes, receive settings."""

from __future__ import annotations

import pytest

from dicom_node.peers import Slots, admit
from dicom_node.settings import ConfigError, NodeSettings, Peer, ReceiveSettings, load_settings

NODE = NodeSettings(ae_title="NODE")
PEERS = ReceiveSettings(peers=[Peer(ae_title="PACS", network="10.1.0.0/16"), Peer(ae_title="CT1")])


@pytest.mark.parametrize(
    ("calling", "called", "address", "reason"),
    [
        ("PACS", "NODE", "10.1.2.3", None),
        ("CT1", "NODE", "192.168.0.9", None),
        ("PACS", "NODE", "10.2.0.1", 0x03),  # the right AE from the wrong network
        ("INTRUDER", "NODE", "10.1.2.3", 0x03),
        ("PACS", "OTHER", "10.1.2.3", 0x07),
    ],
)
def test_peers_are_admitted_by_ae_title_and_network(calling, called, address, reason):
    rejection = admit(NODE, PEERS, calling, called, address)
    assert (rejection.reason if rejection else None) == reason
    if rejection:
        assert rejection.result == 0x01 and rejection.source == 0x01


def test_without_an_allow_list_any_calling_ae_is_admitted():
    assert admit(NODE, ReceiveSettings(), "ANYONE", "NODE", "1.2.3.4") is None


def test_slots_limit_each_peer_and_the_node(tmp_path):
    slots = Slots(tmp_path, per_peer=2, total=3)
    a1, a2 = slots.acquire("A", "1.1.1.1"), slots.acquire("A", "1.1.1.1")
    assert a1 and a2 and slots.acquire("A", "1.1.1.1") is None
    b1 = slots.acquire("B", "2.2.2.2")
    assert b1 and slots.acquire("C", "3.3.3.3") is None, "the node's limit"
    a1.release()
    a1.release()  # idempotent
    assert slots.acquire("C", "3.3.3.3") is not None


def test_a_bad_network_or_incomplete_tls_names_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("receive:\n  peers:\n    - {ae_title: PACS, network: 10.1.0.0/33}\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3: receive.peers.0.network"):
        load_settings(path)
    path.write_text("node:\n  tls:\n    port: 2762\n    certificate: a.crt\n")
    with pytest.raises(ConfigError, match=r"node.tls: .*needs port, certificate and key"):
        load_settings(path)
