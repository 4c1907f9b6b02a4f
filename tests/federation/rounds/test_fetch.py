"""PayloadFetcher's sources (federation/rounds/fetch.py): the sender, then the preferred holders
(a round record's proposer and adopters), then random connected relays, at most MAX_RELAYS
after the sender. Over simulations/memory_net.py (a test double of the transport)."""
from __future__ import annotations

import hashlib
import time

import trio
import trio.testing

from bitswarm.federation import wire
from bitswarm.federation.rounds.fetch import MAX_RELAYS, FetchFailed, PayloadFetcher
from bitswarm.simulations.memory_net import MemoryNetwork

PAYLOAD = b"payload bytes " * 100


def _manifest(sender: str) -> wire.UpdateManifest:
    return wire.UpdateManifest(
        swarm="s", round=3, base_model=hashlib.sha256(b"m").hexdigest(),
        lora=wire.lora_dict({"rank": 4, "alpha": 8.0, "target_modules": ["q_proj"],
                             "freeze_A": False}),
        sender=sender, tokens=10, codec="int8-block-zstd/1",
        payload_sha256=hashlib.sha256(PAYLOAD).digest(), payload_size=len(PAYLOAD),
        base_adapter=b"\x02" * 32, issued_at=int(time.time()), rule="fedavg")


def _net(n_empty: int):
    """me, the sender (unreachable from me), one holder, and n_empty peers lacking it."""
    net = MemoryNetwork()
    me, _ = net.add()
    sender, _ = net.add()
    holder, _ = net.add()
    holder.set_payload_provider(lambda req: PAYLOAD)
    empties = [net.add()[0] for _ in range(n_empty)]
    for e in empties:
        e.set_payload_provider(lambda req: None)            # not_found
    net.unlinked.add(frozenset((me.peer_id, sender.peer_id)))
    return net, me, sender, holder, empties


def _record_fetches(transport) -> list[str]:
    """The peers `transport` fetches from, in order (the list fills as it fetches)."""
    asked: list[str] = []
    real = transport.fetch

    async def spy(peer_id, request, **kw):
        asked.append(peer_id)
        return await real(peer_id, request, **kw)
    transport.fetch = spy
    return asked


def test_a_preferred_holder_is_asked_right_after_the_sender():
    async def main():
        net, me, sender, holder, empties = _net(12)
        fetcher = PayloadFetcher(me, fetch_timeout_s=5.0, max_parallel_fetches=2)
        asked = _record_fetches(me)
        for _ in range(5):                                  # relay order is random: every time
            asked.clear()
            data, source = await fetcher.fetch(_manifest(sender.peer_id),
                                               prefer=(holder.peer_id, empties[0].peer_id))
            assert data == PAYLOAD and source == holder.peer_id
            assert asked[0] == sender.peer_id
            assert holder.peer_id in asked[1:3]             # among the two preferred
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_without_preference_at_most_max_relays_are_asked_per_pass():
    async def main():
        net, me, sender, holder, empties = _net(12)
        holder.set_payload_provider(lambda req: None)       # nobody holds it now
        fetcher = PayloadFetcher(me, fetch_timeout_s=5.0, max_parallel_fetches=2)
        asked = _record_fetches(me)
        try:
            await fetcher.fetch(_manifest(sender.peer_id))
            raise AssertionError("fetched from nobody")
        except FetchFailed as e:
            assert e.transient
        per_pass = [p for p in asked if p != sender.peer_id]
        assert asked.count(sender.peer_id) == 3             # FETCH_ATTEMPTS passes
        assert len(per_pass) == 3 * MAX_RELAYS
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
