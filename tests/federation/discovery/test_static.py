"""StaticPeers with real libp2p transports on 127.0.0.1: dial, skip bad and own addresses,
retry a dead one with backoff; open_transport runs the discovery it is given."""
from __future__ import annotations

import logging
import socket

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.discovery import StaticPeers
from bitswarm.federation.discovery.static import REDIAL_BACKOFF_S
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import TransportConfig, open_transport

TOPIC = "bitswarm-discovery-test"


async def _until(pred, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_static_peers_dial_and_skip_bad_and_own_addresses(caplog):
    caplog.set_level(logging.INFO, logger="bitswarm.federation.discovery")
    kp_b = create_new_key_pair()
    own = f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id_of(kp_b)}"

    async def main():
        async with open_transport(create_new_key_pair(), TransportConfig(topic=TOPIC)) as a:
            discovery = StaticPeers([a.listen_multiaddrs[0], "/ip4/not-an-addr", own])
            async with open_transport(kp_b, TransportConfig(topic=TOPIC),
                                      discovery=discovery) as b:
                await _until(lambda: f"connected to {a.listen_multiaddrs[0]}" in caplog.text, 10)
                assert a.peer_id in b.connected_peers()
                await _until(lambda: b.peer_id in a.connected_peers(), 5)

    trio.run(main)
    assert "ignoring configured peer '/ip4/not-an-addr'" in caplog.text
    assert f"ignoring configured peer {own}: that is us" in caplog.text


def test_static_peers_retry_a_dead_address_with_backoff(caplog):
    caplog.set_level(logging.INFO, logger="bitswarm.federation.discovery")
    with socket.socket() as sock:               # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}/p2p/{peer_id_of(create_new_key_pair())}"

    async def main():
        discovery = StaticPeers([dead])
        async with open_transport(create_new_key_pair(), TransportConfig(topic=TOPIC),
                                  discovery=discovery) as b:
            t0 = trio.current_time()
            await _until(lambda: f"dial attempt 2 to {dead} failed" in caplog.text, 10)
            # Attempt 2 comes after the first backoff step, not in a tight loop.
            assert trio.current_time() - t0 >= REDIAL_BACKOFF_S[0]
            assert b.connected_peers() == []

    trio.run(main)
    assert f"dial attempt 1 to {dead} failed" in caplog.text


def test_open_transport_refuses_two_sources_of_peers():
    async def main():
        cfg = TransportConfig(topic=TOPIC, peers=["/ip4/127.0.0.1/tcp/1/p2p/x"])
        async with open_transport(create_new_key_pair(), cfg, discovery=StaticPeers()):
            pass

    with pytest.raises(ValueError, match="not both"):
        trio.run(main)
