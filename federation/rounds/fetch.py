"""Fetching one announced payload: from its sender, else from connected peers that verified
it, with a few passes and backoff; the bytes must match the signed manifest.

Payloads are addressed by (round, SHA-256), so any holder will do: gossip reaches us through
the mesh even when we hold no address of the sender (a star or a line of peers).

Logger: "bitswarm.federation.rounds.fetch".
"""
from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import trio

from bitswarm.federation.transport import FetchError
from bitswarm.federation.wire import UpdateManifest, encode_payload_request

log = logging.getLogger("bitswarm.federation.rounds.fetch")

FETCH_ATTEMPTS = 3                    # passes over the sources of one (sender, round)
FETCH_RETRY_BACKOFF_S = 1.0           # pause before pass k: k times this, seconds
MAX_RELAYS = 4                        # connected peers asked per pass after the sender
TOTAL_DEADLINE_FACTOR = 2.0           # one fetch, every pass and source: this x fetch_timeout_s


# Failures that say nothing against a source (it was busy, unreachable, or not holding the
# payload yet); any other (oversize, wrong size or hash, protocol error) is a source misbehaving.
TRANSIENT_FETCH_ERRORS = frozenset({"timeout", "connection", "not_found"})


class FetchFailed(Exception):
    """No source served the announced payload; `reason` says why (the sender's error first);
    `transient`: every source only timed out, could not be reached or lacked it (asking again
    later may work), none served wrong bytes."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class PayloadFetcher:
    """Fetches payloads over a Transport (fetch / connected_peers / peer_id).

    fetch_timeout_s: deadline of one fetch from one source, seconds.
    max_parallel_fetches: payload fetches at once (all passes of one manifest hold one slot).
    """

    def __init__(self, transport: Any, *, fetch_timeout_s: float,
                 max_parallel_fetches: int) -> None:
        self.transport = transport
        self.fetch_timeout_s = fetch_timeout_s
        self._limiter = trio.CapacityLimiter(max_parallel_fetches)
        self._rng = random.Random()           # relay order only; spreads load over neighbours

    async def fetch(self, m: UpdateManifest, prefer: tuple[str, ...] = ()) -> tuple[bytes, str]:
        """The payload `m` announces (size and SHA-256 checked) and the peer that served it.
        prefer: peers asked right after the sender, before random relays (those known to hold
        it, e.g. the proposer of a round record naming it and the peers that adopted it).

        Takes at most TOTAL_DEADLINE_FACTOR x fetch_timeout_s seconds, all sources and passes
        together (a slow or endless server holds a fetch slot no longer). Raises FetchFailed.
        """
        request = encode_payload_request(m.round, m.payload_sha256)
        async with self._limiter:
            with trio.move_on_after(TOTAL_DEADLINE_FACTOR * self.fetch_timeout_s):
                return await self._passes(m, request, prefer)
            raise FetchFailed(f"no source served it within "
                              f"{TOTAL_DEADLINE_FACTOR * self.fetch_timeout_s:.0f} s",
                              transient=True)

    async def _passes(self, m: UpdateManifest, request: bytes,
                      prefer: tuple[str, ...] = ()) -> tuple[bytes, str]:
        sender_error = other_error = None
        misbehaved = False
        for attempt in range(FETCH_ATTEMPTS):
            if attempt:
                await trio.sleep(FETCH_RETRY_BACKOFF_S * attempt)
            for source in self._sources(m, prefer):
                data, error, bad = await self._fetch_verified(source, m, request)
                misbehaved |= bad
                if data is not None:
                    return data, source
                if source == m.sender:
                    sender_error = error
                else:
                    other_error = f"{error} (via {source})"
            log.info("round %d: payload of %s not fetched (attempt %d/%d): %s", m.round,
                     m.sender, attempt + 1, FETCH_ATTEMPTS, sender_error or other_error)
        raise FetchFailed(sender_error or other_error or "no source", transient=not misbehaved)

    def _sources(self, m: UpdateManifest, prefer: tuple[str, ...] = ()):
        """The sender first; then (only if it failed) up to MAX_RELAYS of `prefer` and of
        the directly connected peers, `prefer` first (in random order each; of `prefer`, the
        connected ones and its first, e.g. a record's proposer, which may be dialled)."""
        yield m.sender
        me = self.transport.peer_id
        connected = self.transport.connected_peers()
        reachable = set(connected) | set(prefer[:1])     # the first preferred even if not
        first = [p for p in dict.fromkeys(prefer) if p not in (m.sender, me) and p in reachable]
        self._rng.shuffle(first)
        relays = [p for p in connected if p not in (m.sender, me) and p not in first]
        yield from (first + self._rng.sample(relays, len(relays)))[:MAX_RELAYS]

    async def _fetch_verified(self, source: str, m: UpdateManifest,
                              request: bytes) -> tuple[bytes | None, str, bool]:
        """(payload, "", False) if `source` served the bytes the manifest names, else (None,
        reason, whether the source misbehaved: served wrong bytes or broke the protocol)."""
        # The transport bounds its own wait; the outer scope guards against one that does not
        # (1 s of grace so the transport's own timeout error wins normally).
        with trio.move_on_after(self.fetch_timeout_s + 1.0):
            try:
                data = await self.transport.fetch(source, request, max_bytes=m.payload_size,
                                                  timeout_s=self.fetch_timeout_s)
            except FetchError as e:
                return None, f"fetch failed: {e}", e.reason not in TRANSIENT_FETCH_ERRORS
            if len(data) != m.payload_size:
                return None, f"payload size {len(data)} != announced {m.payload_size}", True
            if hashlib.sha256(data).digest() != m.payload_sha256:
                return None, "payload SHA-256 mismatch with the manifest", True
            return data, "", False
        return None, "fetch timed out", False
