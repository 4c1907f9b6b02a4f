"""What a node offers the swarm: payloads by (round, SHA-256), served to any peer that asks,
and its signed manifests, republished, both for the current and the previous round.

Gossipsub may publish before a peer's subscription is known, and late joiners miss messages,
so manifests are republished every interval (receivers dedupe by (sender, round)). Payloads
of the previous round stay served (our own and the verified ones we relay) for peers a round
behind.

Logger: "bitswarm.federation.rounds.serving".
"""
from __future__ import annotations

import logging
from typing import Any

import trio

from bitswarm.federation.transport import TransportError
from bitswarm.federation.wire import WireError, decode_payload_request

log = logging.getLogger("bitswarm.federation.rounds.serving")

SERVED_ROUNDS = 2                     # payloads and republished manifests: current + previous


class ServedRounds:
    """Payloads and manifests of the last SERVED_ROUNDS rounds."""

    def __init__(self) -> None:
        self.payloads: dict[tuple[int, bytes], bytes] = {}   # (round, sha256) -> payload
        self.manifests: dict[int, bytes] = {}                # round -> our signed manifest

    def enter(self, rnd: int) -> None:
        """Round `rnd` starts: drop what is older than the previous round."""
        keep_from = rnd - (SERVED_ROUNDS - 1)
        self.payloads = {k: v for k, v in self.payloads.items() if k[0] >= keep_from}
        self.manifests = {r: v for r, v in self.manifests.items() if r >= keep_from}

    def serve(self, request: bytes) -> bytes | None:
        """Payload provider for the transport (a wire payload request -> bytes or None):
        a dict lookup, safe on the event loop. Malformed requests get None."""
        try:
            rnd, sha = decode_payload_request(request)
        except WireError as e:
            log.debug("bad payload request: %s", e.reason)
            return None
        return self.payloads.get((rnd, sha))


async def publish_manifest(transport: Any, data: bytes, rnd: int, timeout_s: float) -> None:
    """Gossip our manifest `data` of round `rnd` within `timeout_s` seconds; a failure is
    logged (the republish loop retries), never raised."""
    try:
        with trio.move_on_after(timeout_s) as scope:
            await transport.publish(data)
    except TransportError as e:
        log.warning("round %d: publishing our manifest failed (%s); will retry", rnd, e)
        return
    if scope.cancelled_caught:
        log.warning("round %d: publishing our manifest timed out; will retry", rnd)


async def republish_loop(transport: Any, served: ServedRounds, interval_s: float,
                         timeout_s: float) -> None:
    """Every `interval_s` seconds, publish each manifest in `served` again, oldest round
    first. Runs until cancelled."""
    while True:
        await trio.sleep(interval_s)
        for rnd, data in sorted(served.manifests.items()):
            await publish_manifest(transport, data, rnd, timeout_s)
