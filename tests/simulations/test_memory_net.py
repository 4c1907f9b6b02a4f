"""The in-memory network's delayed gossip (simulations/memory_net.py): each delivery arrives
after its own delay, times the receiver's slowness, so later messages can overtake earlier
ones; a full inbox drops; a removed node's inbox ends."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from bitswarm.simulations.memory_net import MemoryNetwork


def run_mock(fn):
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_delayed_deliveries_arrive_in_their_window_and_overtake():
    async def main():
        net = MemoryNetwork(gossip_delay_s=(1.0, 10.0), seed=3)
        a, _ = net.add()
        b, _ = net.add()
        slow, _ = net.add()
        slow.delay_factor = 3.0
        got: dict[str, list[tuple[float, bytes]]] = {b.peer_id: [], slow.peer_id: []}

        async def receive(t, n):
            async for msg in t.messages():
                got[t.peer_id].append((trio.current_time(), msg.data))
                if len(got[t.peer_id]) == n:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, b, 20)
            nursery.start_soon(receive, slow, 20)
            for i in range(20):
                await a.publish(b"m%02d" % i)
        for t, (lo, hi) in ((b, (1.0, 10.0)), (slow, (3.0, 30.0))):
            times = [when for when, _ in got[t.peer_id]]
            assert all(lo <= when <= hi for when in times), times
            assert times == sorted(times)                       # earliest arrival first
            order = [data for _, data in got[t.peer_id]]
            assert sorted(order) == [b"m%02d" % i for i in range(20)]
            assert order != sorted(order)                       # some overtook others
        assert max(w for w, _ in got[slow.peer_id]) > 10.0      # the slow receiver lags
    run_mock(main)


def test_a_full_inbox_drops_and_a_removed_node_stops():
    async def main():
        net = MemoryNetwork(gossip_delay_s=(0.0, 1.0), buffer=4)
        a, _ = net.add()
        b, _ = net.add()
        for i in range(6):
            await a.publish(b"x%d" % i)
        assert b.bytes_received == 4 * 2                        # two of six were dropped
        received = []
        with trio.move_on_after(5):
            async for msg in b.messages():
                received.append(msg.data)
                if len(received) == 4:
                    net.remove(b.peer_id)                       # the iteration then ends
        assert sorted(received) == [b"x0", b"x1", b"x2", b"x3"]
        assert trio.current_time() < 5
    run_mock(main)


def test_bad_delay_window_is_refused():
    with pytest.raises(ValueError, match="gossip_delay_s"):
        MemoryNetwork(gossip_delay_s=(2.0, 1.0))
