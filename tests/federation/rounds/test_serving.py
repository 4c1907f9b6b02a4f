"""What a node serves: payloads and adapters of the last two rounds, the current manifest and
the last adopted record; republishing order."""
from __future__ import annotations

import trio
import trio.testing

from bitswarm.federation import wire
from bitswarm.federation.rounds.serving import (REPUBLISH_GROUP, REPUBLISH_MAX_S, SERVED_ROUNDS,
                                                ServedRounds, republish_loop, republish_period)
from bitswarm.federation.transport import TransportError


def test_served_rounds_keep_the_last_rounds():
    served = ServedRounds()
    for rnd in range(SERVED_ROUNDS + 1):
        served.enter(rnd)
        served.payloads[(rnd, bytes([rnd]) * 32)] = f"payload {rnd}".encode()
        served.manifests[rnd] = f"manifest {rnd}".encode()
    r0, r2 = 0, SERVED_ROUNDS                        # first and last round entered
    req = lambda r, b=None: wire.encode_payload_request(r, bytes([b if b is not None else r]) * 32)  # noqa: E731
    assert served.serve(req(r0)) is None                            # pruned: SERVED_ROUNDS kept
    assert served.serve(req(r0 + 1)) == f"payload {r0 + 1}".encode()
    assert served.serve(req(r2)) == f"payload {r2}".encode()
    assert served.serve(req(r2, r0 + 1)) is None                    # wrong hash
    assert served.serve(b"junk") is None
    assert sorted(served.manifests) == [r2]          # the adopted record carries older ones
    served.states[(r2, b"\x07" * 32)] = b"adapter"
    served.records = {r2 - 1: b"record"}
    assert served.serve(wire.encode_state_request(r2, b"\x07" * 32)) == b"adapter"
    assert served.serve(wire.encode_state_request(r2, b"\x08" * 32)) is None
    assert served.gossip() == [(r2 - 1, b"record"), (r2, f"manifest {r2}".encode())]


class _Publisher:
    """The transport's publish, recording (time, data); the first call fails, like a
    publish that timed out inside the transport."""

    def __init__(self) -> None:
        self.published: list[tuple[float, bytes]] = []
        self.calls = 0

    async def publish(self, data: bytes) -> None:
        self.calls += 1
        if self.calls == 1:
            raise TransportError("publish took longer than 10.0 s")
        self.published.append((trio.current_time(), data))


def test_republish_loop_oldest_first_and_survives_a_failed_publish():
    async def main():
        served, transport = ServedRounds(), _Publisher()
        served.manifests.update({4: b"m4", 3: b"m3"})
        with trio.move_on_after(5.0):
            await republish_loop(transport, served, interval_s=2.0, timeout_s=1.0)
        # ~t=2: m3 failed (logged), m4 sent; ~t=4: m3, m4 (each wait 2 s +-20%).
        (t1, a), (t2, b), (t3, c) = transport.published[:3]
        assert (a, b, c) == (b"m4", b"m3", b"m4")
        assert 1.6 <= t1 <= 2.4 and 1.6 <= t2 - t1 <= 2.4 and t3 == t2
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_republish_period_grows_with_the_swarm_and_is_read_before_each_wait():
    assert republish_period(2.0, 0) == republish_period(2.0, REPUBLISH_GROUP) == 2.0
    assert republish_period(2.0, 4 * REPUBLISH_GROUP) == 8.0
    assert republish_period(2.0, 10_000) == REPUBLISH_MAX_S
    assert republish_period(60.0, 10_000) == 60.0           # never below the base period

    async def main():
        served, transport = ServedRounds(), _Publisher()
        transport.calls = 1                                  # no failing first publish here
        served.manifests[0] = b"m0"
        periods = iter([1.0, 10.0, 10.0])
        with trio.move_on_after(14.0):
            await republish_loop(transport, served, interval_s=lambda: next(periods), timeout_s=1.0)
        times = [t for t, _ in transport.published]
        assert len(times) == 2 and 0.8 <= times[0] <= 1.2 and 8.0 <= times[1] - times[0] <= 12.0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
