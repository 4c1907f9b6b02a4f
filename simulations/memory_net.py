"""An in-memory network of transports for many nodes in one trio process: the virtual-time
engine of simulations (simulations/attacks.py) and, in tests, a test double of the libp2p
transport (the network itself is tested with real hosts in tests/federation/transport/).

Same API as bitswarm.federation.transport.Transport: publish / messages / set_payload_provider
/ set_gossip_validator / fetch / connected_peers / peer_id / byte counters. Gossip reaches
every other node at once (through its validator, as gossipsub's topic validator); a fetch calls
the target's payload provider after a little virtual latency. Pairs in `unlinked` have no
direct connection (fetches between them fail; gossip still crosses, as through the mesh).
"""
from __future__ import annotations

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import FetchError, GossipMessage


class MemoryNetwork:
    """Test double of the libp2p network: instant gossip to every other node, fetch = a call
    of the target's payload provider. Records every publish (sender, data)."""

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryTransport] = {}
        self.published: list[tuple[str, bytes]] = []
        self.unlinked: set[frozenset[str]] = set()   # pairs with no direct connection

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.unlinked

    def add(self, key_pair=None) -> tuple["MemoryTransport", object]:
        key_pair = key_pair or create_new_key_pair()
        t = MemoryTransport(self, peer_id_of(key_pair))
        self.nodes[t.peer_id] = t
        return t, key_pair


class MemoryTransport:
    """Same API as bitswarm.federation.transport.Transport (test double)."""

    def __init__(self, net: MemoryNetwork, peer_id: str) -> None:
        self.net, self.peer_id = net, peer_id
        self.listen_multiaddrs: list[str] = []
        self.bytes_sent = self.bytes_received = 0
        self._send, self._recv = trio.open_memory_channel(256)
        self._provider = None
        self._validator = None
        self.failing_serves = 0              # next fetches FROM this node fail ('connection')
        self.serve_delay_s = 0.0             # fetches FROM this node hang this long first

    async def publish(self, data: bytes) -> None:
        self.net.published.append((self.peer_id, data))
        self.bytes_sent += len(data)
        for other in self.net.nodes.values():
            if other is not self:
                if other._validator is not None and not other._validator(self.peer_id, bytes(data)):
                    continue                 # like gossipsub: refused by the topic validator
                try:
                    other._send.send_nowait(GossipMessage(self.peer_id, bytes(data)))
                    other.bytes_received += len(data)
                except trio.WouldBlock:
                    pass                     # like the real transport: a full buffer drops
        await trio.lowlevel.checkpoint()

    def messages(self):
        return self._recv

    def set_payload_provider(self, fn) -> None:
        self._provider = fn

    def set_gossip_validator(self, fn) -> None:
        self._validator = fn

    async def fetch(self, peer_id: str, request: bytes, *, max_bytes: int, timeout_s: float) -> bytes:
        await trio.sleep(0.01)               # a little virtual latency
        target = self.net.nodes.get(peer_id)
        if target is None or not self.net.linked(self.peer_id, peer_id):
            raise FetchError("connection", f"no known addresses to peer {peer_id}")
        await trio.sleep(target.serve_delay_s)   # an endless server: only deadlines end it
        if target.failing_serves:
            target.failing_serves -= 1
            raise FetchError("connection", "injected dial failure")
        payload = target._provider(request) if target._provider else None
        if payload is None:
            raise FetchError("not_found", "unknown payload")
        if len(payload) > max_bytes:
            raise FetchError("oversize", f"{len(payload)} > {max_bytes}")
        target.bytes_sent += len(payload)
        self.bytes_received += len(payload)
        return payload

    def connected_peers(self) -> list[str]:
        return [p for p in self.net.nodes if p != self.peer_id and self.net.linked(self.peer_id, p)]
