"""The transport with real node processes (helpers_fed_node.py) on 127.0.0.1: gossip, payload
fetches and their failures, restart with the same identity, Noise only; errors inside
open_transport."""

from __future__ import annotations

from pathlib import Path

import multiaddr
import pytest
import trio

from bitswarm.federation.identity import load_or_create_identity, peer_id_of
from bitswarm.federation.transport import muxer_options, security_options

TOPIC = "bitswarm-test"
MB = 1_000_000


# ---- processes: gossip, fetch, restart -----------------------------------------------------


def test_three_processes_gossip_and_fetch(tmp_path: Path, node_process) -> None:
    with node_process(tmp_path / "a", TOPIC) as a:
        with node_process(tmp_path / "b", TOPIC, [a.addr]) as b, node_process(tmp_path / "c", TOPIC, [a.addr]) as c:
            for node, n in ((a, 2), (b, 1), (c, 1)):
                node.send(cmd="wait_topic_peers", n=n)
                node.expect(lambda e: e["event"] == "peers", timeout_s=15)

            # Gossip both ways; c hears b only through a's forwarding.
            a.send(cmd="publish", data="from-a")
            b.gossip_from(a.peer_id, "from-a")
            c.gossip_from(a.peer_id, "from-a")
            b.send(cmd="publish", data="from-b")
            a.gossip_from(b.peer_id, "from-b")
            c.gossip_from(b.peer_id, "from-b")
            assert not any(e["event"] == "gossip" and e["from"] == b.peer_id for e in b.seen)  # no own echo

            # 20 MB payload, above what request_response can carry.
            a.send(cmd="serve", key="adapter-r1", size=20 * MB)
            served = a.expect(lambda e: e["event"] == "served", timeout_s=10)
            b.send(cmd="fetch", peer=a.peer_id, key="adapter-r1", max_bytes=25 * MB, timeout_s=15)
            fetched = b.expect(lambda e: e["event"] in ("fetched", "fetch_error"), timeout_s=20)
            assert fetched == {"event": "fetched", "len": 20 * MB, "sha256": served["sha256"]}

            c.send(cmd="fetch", peer=a.peer_id, key="no-such-key", max_bytes=25 * MB, timeout_s=5)
            assert c.expect(lambda e: e["event"] in ("fetched", "fetch_error"), 10)["reason"] == "not_found"
            c.send(cmd="fetch", peer=a.peer_id, key="adapter-r1", max_bytes=MB, timeout_s=5)
            assert c.expect(lambda e: e["event"] in ("fetched", "fetch_error"), 10)["reason"] == "oversize"
            # An unknown peer cannot be dialed: a connection error (or timeout), not a hang.
            unknown = peer_id_of(load_or_create_identity(tmp_path / "ghost"))
            c.send(cmd="fetch", peer=unknown, key="adapter-r1", max_bytes=MB, timeout_s=3)
            assert c.expect(lambda e: e["event"] in ("fetched", "fetch_error"), 10)["reason"] in ("connection", "timeout")

            # A node that survived the oversize abort still serves.
            c.send(cmd="fetch", peer=a.peer_id, key="adapter-r1", max_bytes=25 * MB, timeout_s=15)
            assert c.expect(lambda e: e["event"] in ("fetched", "fetch_error"), 20)["sha256"] == served["sha256"]
        assert a.proc.poll() is None
        assert a.stop() < 5  # shutdown is prompt
    # Same data dir, new process: same peer ID.
    with node_process(tmp_path / "a", TOPIC) as again:
        assert again.peer_id == a.peer_id


# ---- security: Noise only ------------------------------------------------------------------


async def _dial(target: str, sec_opt: dict) -> str:
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr

    kp = create_new_key_pair()
    host = new_host(key_pair=kp, sec_opt=sec_opt(kp), muxer_opt=muxer_options())
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            with trio.fail_after(10):
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target)))
            return "connected"
        except trio.TooSlowError:
            return "timeout"
        except Exception as e:
            return f"refused: {type(e).__name__}"


def test_plaintext_dialer_is_refused(tmp_path: Path, node_process) -> None:
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    def plaintext_only(kp):  # type: ignore[no-untyped-def]
        return {PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)}

    with node_process(tmp_path / "n", TOPIC) as node:
        assert trio.run(_dial, node.addr, plaintext_only).startswith("refused")
        assert trio.run(_dial, node.addr, security_options) == "connected"  # the dialer itself works
        assert node.proc.poll() is None


def test_error_inside_open_transport_propagates():
    """libp2p's cleanup cancels its nurseries; the caller's exception must survive that."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from bitswarm.federation.transport import TransportConfig, open_transport

    async def main():
        async with open_transport(create_new_key_pair(), TransportConfig(topic="t")):
            raise LookupError("raised inside the transport block")

    with pytest.raises(LookupError, match="inside the transport block"):
        trio.run(main)
