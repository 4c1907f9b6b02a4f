"""What a node offers the swarm: payloads by (round, SHA-256) and global adapters by (round,
SHA-256), served to any peer that asks; its signed manifest of the current round and the round
record it adopted last, republished.

Gossipsub may publish before a peer's subscription is known, and late joiners miss messages,
so both are republished every interval (receivers dedupe). Payloads of the last SERVED_ROUNDS
rounds stay served (our own and the verified ones we relay) for peers behind, who need them to
check the records they adopt; adapters only for the current and previous round. The adopted record is what a straggler or a newcomer needs to
reach the swarm's adapter; republishing it is also our acknowledgement of it (agreement.py).

Logger: "bitswarm.federation.rounds.serving".
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import trio

from bitswarm.federation.transport import TransportError
from bitswarm.federation.wire import (STATE_REQUEST_MAGIC, WireError, decode_payload_request,
                                      decode_state_request)

log = logging.getLogger("bitswarm.federation.rounds.serving")

# Payloads: the current round and 3 before it, so a straggler up to 3 rounds behind can still
# check the records it adopts (further behind, it catches up by adapter hash instead).
SERVED_ROUNDS = 4


class ServedRounds:
    """Payloads, adapters and our messages of the last SERVED_ROUNDS rounds."""

    def __init__(self) -> None:
        self.payloads: dict[tuple[int, bytes], bytes] = {}   # (round, sha256) -> payload
        self.states: dict[tuple[int, bytes], bytes] = {}     # (round, adapter sha256) -> payload
        self.manifests: dict[int, bytes] = {}                # round -> our signed manifest
        self.records: dict[int, bytes] = {}                  # round -> the record adopted last
        self.secagg: dict[int, list[bytes]] = {}             # round -> our secure-agg messages

    def enter(self, rnd: int) -> None:
        """Round `rnd` starts: drop what is older than the previous round and manifests of
        earlier rounds (the adopted record carries those that counted)."""
        keep_from = rnd - (SERVED_ROUNDS - 1)
        self.payloads = {k: v for k, v in self.payloads.items() if k[0] >= keep_from}
        self.states = {k: v for k, v in self.states.items() if k[0] >= rnd - 1}
        self.manifests = {r: v for r, v in self.manifests.items() if r >= rnd}
        self.secagg = {r: v for r, v in self.secagg.items() if r >= rnd}

    def serve(self, request: bytes) -> bytes | None:
        """Provider for the transport (a wire payload or state request -> bytes or None): a
        dict lookup, safe on the event loop. Malformed requests get None."""
        try:
            if bytes(request[:4]) == STATE_REQUEST_MAGIC:
                return self.states.get(decode_state_request(request))
            return self.payloads.get(decode_payload_request(request))
        except WireError as e:
            log.debug("bad request: %s", e.reason)
            return None

    def gossip(self) -> list[tuple[int, bytes]]:
        """(round, message) to republish: the adopted records, then our manifests, then our
        secure-aggregation messages of the current round."""
        return (sorted(self.records.items()) + sorted(self.manifests.items())
                + [(r, m) for r, ms in sorted(self.secagg.items()) for m in ms])


async def publish(transport: Any, data: bytes, rnd: int, timeout_s: float) -> None:
    """Gossip our message `data` of round `rnd` within `timeout_s` seconds; a failure is
    logged (the republish loop retries), never raised."""
    try:
        with trio.move_on_after(timeout_s) as scope:
            await transport.publish(data)
    except TransportError as e:
        log.warning("round %d: publishing failed (%s); will retry", rnd, e)
        return
    if scope.cancelled_caught:
        log.warning("round %d: publishing timed out; will retry", rnd)


# Every republished message reaches every member (gossipsub floods it through the mesh), so
# with a fixed period the swarm's message rate, and each member's CPU spent on receiving, grows
# with the number of members: 32 members republishing every 2 s kept 2 cores saturated. The
# period grows with the members heard so that the swarm republishes about as often as
# REPUBLISH_GROUP members at the base period would.
REPUBLISH_GROUP = 8
REPUBLISH_MAX_S = 30.0


def republish_period(base_s: float, members: int) -> float:
    """Seconds between republishes for a swarm of `members` other members heard: base_s up to
    REPUBLISH_GROUP members, then proportional, at most max(base_s, REPUBLISH_MAX_S)."""
    return min(max(base_s, REPUBLISH_MAX_S), base_s * max(1.0, members / REPUBLISH_GROUP))


async def publish_served(transport: Any, served: ServedRounds, timeout_s: float) -> None:
    """Publish everything in `served.gossip()` once, each message within `timeout_s`."""
    for rnd, data in served.gossip():
        await publish(transport, data, rnd, timeout_s)


async def republish_loop(transport: Any, served: ServedRounds,
                         interval_s: float | Callable[[], float], timeout_s: float) -> None:
    """Every `interval_s` seconds (a number, or a callable read before each wait, jittered by
    +-20% so members do not republish in step), publish `served.gossip()` again. Runs until
    cancelled."""
    rng = random.Random()
    while True:
        period = interval_s() if callable(interval_s) else interval_s
        await trio.sleep(period * rng.uniform(0.8, 1.2))
        await publish_served(transport, served, timeout_s)
