"""The libp2p 0.8.1 workarounds NAT traversal needs (libp2p_compat patches 4 and 5): each test
exercises the ORIGINAL upstream function (and fails once upstream changes), then our patch; and
NAT traversal on loopback, where every node is reachable."""
from __future__ import annotations

from pathlib import Path

import trio
from multiaddr import Multiaddr

from bitswarm.federation import libp2p_compat
from bitswarm.federation.identity import load_or_create_identity
from bitswarm.federation.transport import TransportConfig, open_transport

RELAY = "12D3KooWMBVCxcRE8bfjzaA9QgHCSB3drHqHKruevUGjvF4nDtdn"
CIRCUIT = f"/ip4/203.0.113.10/tcp/4001/p2p/{RELAY}/p2p-circuit"


def test_upstream_get_addrs_mangles_a_circuit_address_and_the_patch_announces_it(tmp_path: Path):
    from libp2p import new_host
    from libp2p.host.basic_host import BasicHost

    libp2p_compat.apply()
    host = new_host(key_pair=load_or_create_identity(tmp_path),
                    addrs_factory=lambda candidates: [*candidates, Multiaddr(CIRCUIT)])
    me = host.get_id().to_base58()
    original = [str(a) for a in libp2p_compat.ORIGINALS["BasicHost.get_addrs"](host)]
    # Upstream cuts at the relay's /p2p/ and appends ours: the relay's IP under our peer ID.
    assert original == [f"/ip4/203.0.113.10/tcp/4001/p2p/{me}"]

    plain = new_host(key_pair=load_or_create_identity(tmp_path / "b"))
    plain._bitswarm_circuit_addrs = [Multiaddr(CIRCUIT)]
    assert BasicHost.get_addrs is not libp2p_compat.ORIGINALS["BasicHost.get_addrs"]
    addrs = [str(a) for a in plain.get_addrs()]
    assert addrs == [f"{CIRCUIT}/p2p/{plain.get_id().to_base58()}"]


def test_upstream_autonat_dial_back_claims_success_over_the_existing_connection(tmp_path: Path):
    trio.run(_autonat_dial_back, tmp_path)


async def _autonat_dial_back(tmp_path: Path) -> None:
    from libp2p.host.autonat import AutoNATService

    cfg = TransportConfig(listen="/ip4/127.0.0.1/tcp/0", topic="nat-compat")
    async with open_transport(load_or_create_identity(tmp_path / "a"), cfg) as a, \
            open_transport(load_or_create_identity(tmp_path / "b"), cfg) as b:
        await a.connect(b.listen_multiaddrs[0])
        server = AutoNATService(b.libp2p_host, serve=False)
        a_id = a.libp2p_host.get_id()
        nobody = Multiaddr("/ip4/127.0.0.1/tcp/9").to_bytes()     # nothing listens there
        with trio.fail_after(20):
            # Upstream: host.connect returns at once (a connection exists): "reachable".
            assert await libp2p_compat.ORIGINALS["AutoNATService._try_dial"](
                server, a_id, [nobody]) == nobody
            # Patched: a fresh dial, which fails there and succeeds at a's real address.
            assert await server._try_dial(a_id, [nobody]) is None
            real = Multiaddr(a.listen_multiaddrs[0]).to_bytes()
            assert await server._try_dial(a_id, [nobody, real]) == real


def test_loopback_nodes_find_themselves_public_and_direct(tmp_path: Path):
    trio.run(_loopback_public, tmp_path)


async def _loopback_public(tmp_path: Path) -> None:
    cfg = TransportConfig(listen="/ip4/127.0.0.1/tcp/0", topic="nat-loopback")
    async with open_transport(load_or_create_identity(tmp_path / "a"), cfg) as a, \
            open_transport(load_or_create_identity(tmp_path / "b"), cfg) as b:
        assert a.reachability == "unknown"
        await a.connect(b.listen_multiaddrs[0])
        with trio.fail_after(20):
            while a.reachability == "unknown" or b.reachability == "unknown":
                await trio.sleep(0.1)
        assert (a.reachability, b.reachability) == ("public", "public")
        assert a.peer_paths() == {b.peer_id: "direct"} and b.peer_paths() == {a.peer_id: "direct"}
        assert a.circuit_addrs == [] and b.circuit_addrs == []      # public: no relay needed
