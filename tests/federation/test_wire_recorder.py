"""Plaintext wire recording, with real node processes on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

TOPIC = "bitswarm-test"
MB = 1_000_000


# ---- plaintext wire recording --------------------------------------------------------------


def test_wire_record_holds_plaintext_and_wire_does_not(tmp_path: Path, node_process) -> None:
    plain, cipher = tmp_path / "wire.plain", tmp_path / "wire.cipher"
    gossip_marker = "gossip-marker-" + os.urandom(8).hex()
    payload_marker = "payload-marker-" + os.urandom(8).hex()
    env = {"BITSWARM_RECORD_WIRE": str(plain), "BITSWARM_RECORD_WIRE_CIPHERTEXT": str(cipher)}
    with node_process(tmp_path / "a", TOPIC, env=env) as a, node_process(tmp_path / "b", TOPIC, [a.addr]) as b:
        b.send(cmd="wait_topic_peers", n=1)
        b.expect(lambda e: e["event"] == "peers", timeout_s=15)
        a.send(cmd="publish", data=gossip_marker)
        b.gossip_from(a.peer_id, gossip_marker)
        a.send(cmd="serve", key="k", size=200_000, marker=payload_marker)
        a.expect(lambda e: e["event"] == "served", timeout_s=10)
        b.send(cmd="fetch", peer=a.peer_id, key="k", max_bytes=MB, timeout_s=10)
        assert b.expect(lambda e: e["event"] in ("fetched", "fetch_error"), 15)["event"] == "fetched"
    recorded, wire = plain.read_bytes(), cipher.read_bytes()
    assert gossip_marker.encode() in recorded
    assert payload_marker.encode() in recorded
    assert len(recorded) > 200_000  # the whole payload went through the recorder
    assert gossip_marker.encode() not in wire and payload_marker.encode() not in wire
    # Same messages, each + 16-byte Poly1305 tag: the two files describe the same traffic.
    assert len(wire) - len(recorded) > 0 and (len(wire) - len(recorded)) % 16 == 0
