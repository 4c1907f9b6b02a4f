"""A node survives a hostile peer that writes malformed gossipsub frames (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HOSTILE_SCRIPT = Path(__file__).with_name("helpers_fed_hostile.py")
TOPIC = "bitswarm-hostile"


def test_node_survives_malformed_pubsub_frames(tmp_path: Path, node_process) -> None:
    with node_process(tmp_path / "node", TOPIC) as node, node_process(tmp_path / "good", TOPIC, [node.addr]) as good:
        good.send(cmd="wait_topic_peers", n=1)
        good.expect(lambda e: e["event"] == "peers", timeout_s=15)

        hostile = subprocess.run(
            [sys.executable, str(HOSTILE_SCRIPT), node.addr, TOPIC], capture_output=True, timeout=30, check=False
        )
        events = [json.loads(line) for line in hostile.stdout.splitlines()]
        assert events and events[-1] == {"event": "done"}, hostile.stderr.decode()[-2000:]
        attacks = {e["name"]: e["outcome"] for e in events if e["event"] == "attack"}
        assert set(attacks) == {"bad_key_publish", "garbage_body", "garbage_varint", "oversized"}
        # The node closed every hostile stream instead of waiting for more input.
        assert all(outcome != "open" for outcome in attacks.values()), attacks

        assert node.proc.poll() is None, node.log()  # upstream 0.8.1 would have died here
        # Still a working gossip node, both directions.
        node.send(cmd="publish", data="after-attack-from-node")
        good.gossip_from(node.peer_id, "after-attack-from-node")
        good.send(cmd="publish", data="after-attack-from-good")
        node.gossip_from(good.peer_id, "after-attack-from-good")

        log = node.log()
        hostile_id = next(e["peer_id"] for e in events if e["event"] == "connected")
        assert f"rejected pubsub stream from peer {hostile_id}: DecodeError" in log
        assert "dropped pubsub message forwarded by" in log  # the bad-key publish
        assert "exceeded size limit" in log  # the oversized frame (upstream handles this one)
