"""What a node serves: payloads and adapters of the last two rounds, the current manifest and
the last adopted record; republishing order."""
from __future__ import annotations

import trio
import trio.testing

from bitswarm.federation import wire
from bitswarm.federation.rounds.serving import SERVED_ROUNDS, ServedRounds, republish_loop
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
        with trio.move_on_after(4.5):
            await republish_loop(transport, served, interval_s=2.0, timeout_s=1.0)
        # t=2: m3 failed (logged), m4 sent; t=4: m3, m4.
        assert transport.published == [(2.0, b"m4"), (4.0, b"m3"), (4.0, b"m4")]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
