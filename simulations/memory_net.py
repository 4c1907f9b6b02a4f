"""An in-memory network of transports for many nodes in one trio process: the virtual-time
engine of simulations (simulations/attacks.py) and, in tests, a test double of the libp2p
transport (the network itself is tested with real hosts in tests/federation/transport/).

Same API as bitswarm.federation.transport.Transport: publish / messages / set_payload_provider
/ set_gossip_validator / fetch / connected_peers / peer_id / byte counters. Gossip reaches
every other node at once (through its validator, as gossipsub's topic validator); a fetch calls
the target's payload provider after the link's latency and transfer time. Pairs in `unlinked`
have no direct connection (fetches between them fail; gossip still crosses, as through the
mesh). Link shaping for the virtual engine (simulations/virtual.py): `latency_s` one way,
`bandwidth_Bps` per transfer, `loss` the chance that one gossip delivery or one fetch is lost,
`gossip_delay_s` (lo, hi): each gossip delivery arrives after a delay drawn uniformly from it,
independently per receiver (so deliveries overtake one another), as on a mesh of starved
processes: 32 nodes sharing 2 cores took seconds to tens of seconds to pass a message on.
"""
from __future__ import annotations

import heapq
import math
import random

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import FetchError, GossipMessage
from bitswarm.federation.wire import STATE_REQUEST_MAGIC


class MemoryNetwork:
    """Test double of the libp2p network: instant gossip to every other node, fetch = a call
    of the target's payload provider. Records every publish (sender, data)."""

    def __init__(self, *, latency_s: float = 0.005, bandwidth_Bps: float | None = None,
                 loss: float = 0.0, seed: int = 0, buffer: int = 256,
                 record_published: bool = True,
                 gossip_delay_s: tuple[float, float] | None = None) -> None:
        if gossip_delay_s is not None and not 0 <= gossip_delay_s[0] <= gossip_delay_s[1]:
            raise ValueError(f"gossip_delay_s must be (lo, hi) with 0 <= lo <= hi, got "
                             f"{gossip_delay_s!r}")
        self.nodes: dict[str, MemoryTransport] = {}
        self.published: list[tuple[str, bytes]] = []
        self.unlinked: set[frozenset[str]] = set()   # pairs with no direct connection
        self.latency_s, self.bandwidth_Bps, self.loss = latency_s, bandwidth_Bps, loss
        self.buffer, self.record_published = buffer, record_published
        self.gossip_delay_s = gossip_delay_s
        self.rng = random.Random(seed)
        self.payload_bytes = 0              # fetched update payloads (not state syncs)
        self.payload_transfers = 0          # how many such payloads were fetched

    def lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss

    def transfer_s(self, n_bytes: int) -> float:
        """Seconds for a request/response of n_bytes: two latencies plus the transfer."""
        return 2 * self.latency_s + (n_bytes / self.bandwidth_Bps if self.bandwidth_Bps else 0.0)

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.unlinked

    def add(self, key_pair=None) -> tuple["MemoryTransport", object]:
        key_pair = key_pair or create_new_key_pair()
        t = MemoryTransport(self, peer_id_of(key_pair))
        self.nodes[t.peer_id] = t
        return t, key_pair

    def remove(self, peer_id: str) -> None:
        """The node leaves the network: no more gossip to or from it, fetches from it fail."""
        t = self.nodes.pop(peer_id, None)
        if t is not None:
            t._send.close()
            t._inbox.close()


class MemoryTransport:
    """Same API as bitswarm.federation.transport.Transport (test double)."""

    def __init__(self, net: MemoryNetwork, peer_id: str) -> None:
        self.net, self.peer_id = net, peer_id
        self.listen_multiaddrs: list[str] = []
        self.bytes_sent = self.bytes_received = 0
        self._send, self._recv = trio.open_memory_channel(net.buffer)
        self._inbox = _DelayedInbox(net.buffer)
        self._provider = None
        self._validator = None
        self.failing_serves = 0              # next fetches FROM this node fail ('connection')
        self.serve_delay_s = 0.0             # fetches FROM this node hang this long first
        self.delay_factor = 1.0              # x gossip_delay_s for deliveries TO this node

    async def publish(self, data: bytes) -> None:
        if self.net.record_published:
            self.net.published.append((self.peer_id, data))
        for other in list(self.net.nodes.values()):
            if other is not self:
                if self.net.lost():
                    continue
                self.bytes_sent += len(data)     # one copy per receiver, as a mesh sends it
                if other._validator is not None and not other._validator(self.peer_id, bytes(data)):
                    continue                 # like gossipsub: refused by the topic validator
                msg = GossipMessage(self.peer_id, bytes(data))
                if self.net.gossip_delay_s is not None:
                    delay = self.net.rng.uniform(*self.net.gossip_delay_s) * other.delay_factor
                    if other._inbox.put(msg, delay):
                        other.bytes_received += len(data)
                    continue
                try:
                    other._send.send_nowait(msg)
                    other.bytes_received += len(data)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    pass                     # like the real transport: a full buffer drops
        await trio.lowlevel.checkpoint()

    def messages(self):
        return self._inbox if self.net.gossip_delay_s is not None else self._recv

    def set_payload_provider(self, fn) -> None:
        self._provider = fn

    def set_gossip_validator(self, fn) -> None:
        self._validator = fn

    async def fetch(self, peer_id: str, request: bytes, *, max_bytes: int, timeout_s: float) -> bytes:
        await trio.sleep(2 * self.net.latency_s)             # request and first byte
        target = self.net.nodes.get(peer_id)
        if target is None or not self.net.linked(self.peer_id, peer_id):
            raise FetchError("connection", f"no known addresses to peer {peer_id}")
        if self.net.lost():
            raise FetchError("connection", "lost on the link")
        await trio.sleep(target.serve_delay_s)   # an endless server: only deadlines end it
        if target.failing_serves:
            target.failing_serves -= 1
            raise FetchError("connection", "injected dial failure")
        payload = target._provider(request) if target._provider else None
        if payload is None:
            raise FetchError("not_found", "unknown payload")
        if len(payload) > max_bytes:
            raise FetchError("oversize", f"{len(payload)} > {max_bytes}")
        if self.net.bandwidth_Bps:
            await trio.sleep(len(payload) / self.net.bandwidth_Bps)
        if bytes(request[:4]) != STATE_REQUEST_MAGIC:        # an update, not a state sync
            self.net.payload_bytes += len(payload)
            self.net.payload_transfers += 1
        target.bytes_sent += len(payload)
        self.bytes_received += len(payload)
        return payload

    def connected_peers(self) -> list[str]:
        return [p for p in self.net.nodes if p != self.peer_id and self.net.linked(self.peer_id, p)]


class _DelayedInbox:
    """A node's gossip inbox when deliveries are delayed: messages become receivable at their
    arrival time (trio's clock), earliest first; at most `buffer` wait (more are dropped, like a
    full transport buffer). Async-iterable like a trio receive channel; ends once closed."""

    def __init__(self, buffer: int) -> None:
        self._heap: list[tuple[float, int, GossipMessage]] = []
        self._seq = 0
        self._buffer = buffer
        self._changed = trio.Event()
        self._closed = False

    def put(self, msg: GossipMessage, delay_s: float) -> bool:
        if self._closed or len(self._heap) >= self._buffer:
            return False
        self._seq += 1
        heapq.heappush(self._heap, (trio.current_time() + delay_s, self._seq, msg))
        self._changed.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> GossipMessage:
        while True:
            if self._closed:
                raise StopAsyncIteration
            now = trio.current_time()
            if self._heap and self._heap[0][0] <= now:
                msg = heapq.heappop(self._heap)[2]
                await trio.lowlevel.checkpoint()
                return msg
            wait = self._heap[0][0] - now if self._heap else math.inf
            with trio.move_on_after(wait):
                await self._changed.wait()
            self._changed = trio.Event()
