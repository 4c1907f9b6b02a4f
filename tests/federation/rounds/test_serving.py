"""What a node serves: payloads and adapters of the last two rounds, the current manifest and
the last adopted record; republishing order."""
from __future__ import annotations

import trio
import trio.testing

from bitswarm.federation import wire
from bitswarm.federation.rounds.serving import ServedRounds, republish_loop
from bitswarm.federation.transport import TransportError


def test_served_rounds_keep_current_and_previous_round():
    served = ServedRounds()
    for rnd in range(3):
        served.enter(rnd)
        served.payloads[(rnd, bytes([rnd]) * 32)] = f"payload {rnd}".encode()
        served.manifests[rnd] = f"manifest {rnd}".encode()
    assert served.serve(wire.encode_payload_request(0, b"\x00" * 32)) is None   # pruned
    assert served.serve(wire.encode_payload_request(2, b"\x02" * 32)) == b"payload 2"
    assert served.serve(wire.encode_payload_request(1, b"\x01" * 32)) == b"payload 1"
    assert served.serve(wire.encode_payload_request(2, b"\x01" * 32)) is None   # wrong hash
    assert served.serve(b"junk") is None
    assert sorted(served.manifests) == [2]           # the adopted record carries older ones
    served.states[(2, b"\x07" * 32)] = b"adapter 2"
    served.records = {1: b"record 1"}
    assert served.serve(wire.encode_state_request(2, b"\x07" * 32)) == b"adapter 2"
    assert served.serve(wire.encode_state_request(2, b"\x08" * 32)) is None
    assert served.gossip() == [(1, b"record 1"), (2, b"manifest 2")]


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
        with trio.move_on_after(4.5):
            await republish_loop(transport, served, interval_s=2.0, timeout_s=1.0)
        # t=2: m3 failed (logged), m4 sent; t=4: m3, m4.
        assert transport.published == [(2.0, b"m4"), (4.0, b"m3"), (4.0, b"m4")]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
