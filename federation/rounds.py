"""The round protocol: publish a signed manifest, fetch peers' payloads, FedAvg them.

Round r on one node (`RoundCoordinator.exchange`):
  1. compress the local delta with error feedback (codecs.ErrorFeedback), keep the payload to
     serve it (keyed by (round, SHA-256)), gossip the signed manifest (wire.UpdateManifest);
  2. for each valid manifest of round r from another peer (signature by its sender, same swarm,
     base model, LoRA config, codec, size bound), fetch the payload from the SENDER (or, if
     that fails, from a connected peer that already verified it: payloads are addressed by
     (round, SHA-256), so any holder will do), check size and SHA-256, decode against the
     expected shapes; a few passes with backoff absorb transient dial failures;
  3. stop when `min_peers` peers' updates are in, or at the deadline with what arrived;
  4. aggregate = FedAvg (aggregate.fedavg) over the own DECODED delta plus the peers' decoded
     deltas, so nodes holding the same set of updates compute the same bits.
Every failure in (2) becomes a `rejected` entry with a reason and a log line; the round goes on.

In the background (`run`): consume gossip, validate manifests, buffer them per round (a peer may
be a round or two ahead), and republish our manifests of the current and previous round every
`republish_interval_s` (gossipsub may publish before a peer's subscription is known, and late
joiners miss messages); receivers dedupe by (sender, round). Payloads of the last 2 rounds stay
served (our own and the verified ones we relay), for peers that are a round behind.

Logger: "bitswarm.federation.rounds".
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import numbers
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from bitswarm.federation.aggregate import Contribution, fedavg
from bitswarm.federation.codecs import (CODECS, INT8_CODEC, CodecError, ErrorFeedback,
                                        decode_update, max_payload_bytes)
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import FetchError, TransportError
from bitswarm.federation.wire import (MAX_ROUND, MAX_TOKENS, UpdateManifest, WireError,
                                      check_compatible, decode_manifest, decode_payload_request,
                                      encode_manifest, encode_payload_request, lora_dict)

log = logging.getLogger("bitswarm.federation.rounds")

T = TypeVar("T")
_MAX_REJECTIONS_PER_ROUND = 1024      # bounds memory against a flood of distinct bad messages
_SERVED_ROUNDS = 2                    # payloads and republished manifests: current + previous
FETCH_ATTEMPTS = 3                    # passes over the sources of one (sender, round)
FETCH_RETRY_BACKOFF_S = 1.0           # pause before pass k: k times this, seconds
MAX_RELAYS = 4                        # connected peers asked per pass after the sender


@dataclass(frozen=True)
class RoundResult:
    """Outcome of one round on this node.

    aggregate: name -> float32 array (expected shapes), the FedAvg of the contributors' decoded
        deltas; add it to the global adapter. contributors: peer IDs whose updates are in the
        aggregate, own included, sorted. rejected: (peer ID, reason) per refused manifest or
        payload (for a bad signature, the peer is the gossip author, not the claimed sender).
        bytes_sent / bytes_received: the transport's counters over this exchange (bytes, all
        traffic in that window, republishing included).
    """

    round: int
    aggregate: dict[str, np.ndarray]
    contributors: list[str]
    rejected: list[tuple[str, str]]
    bytes_sent: int
    bytes_received: int


@dataclass
class _RoundState:
    manifests: dict[str, UpdateManifest] = field(default_factory=dict)   # accepted, by sender
    contributions: dict[str, Contribution] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)    # senders accepted or refused: dedupe
    fetching: set[str] = field(default_factory=set)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    enough: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Active:
    round: int
    nursery: trio.Nursery
    state: _RoundState


async def _to_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


class RoundCoordinator:
    """Runs federated rounds over a Transport (bitswarm.federation.transport API).

    Args:
        transport: publish / messages / set_payload_provider / fetch / peer_id / byte counters.
        key_pair: libp2p Ed25519 KeyPair of transport.peer_id (signs our manifests).
        swarm: swarm name. base_model: hex SHA-256 of the base model.
        lora: LoRAConfig or mapping (rank, alpha, target_modules, freeze_A); peers must match.
        expected_shapes: name -> shape of every LoRA tensor (lora_A (r, in), lora_B (out, r)).
        min_peers: valid updates from OTHER peers that complete a round early (>= 0).
        round_timeout_s: deadline of one exchange, seconds, from its start.
        fetch_timeout_s: deadline of one payload fetch, seconds.
        republish_interval_s: period of manifest republishing, seconds.
        codec: codec of our payloads (codecs.CODECS); we accept peers' payloads in any of them.
        max_rounds_ahead: manifests up to this many rounds ahead of ours are buffered.
        max_peers_per_round: manifests buffered per round, beyond which new senders are dropped.
        max_parallel_fetches: payload fetches at once.
        run_blocking: awaits a zero-argument function off the event loop (compression, decoding,
            aggregation). Default: trio.to_thread.run_sync. Tests under trio's MockClock pass an
            inline runner: the clock's autojump does not see worker threads.

    Raises ValueError on bad arguments, including a key pair that is not the transport's.
    Usage: start `run` in a nursery (`await nursery.start(coord.run)`), then call `exchange`
    once per round with increasing round numbers.
    """

    def __init__(self, transport: Any, key_pair: Any, *, swarm: str, base_model: str, lora: Any,
                 expected_shapes: Mapping[str, tuple[int, ...]], min_peers: int = 1,
                 round_timeout_s: float = 300.0, fetch_timeout_s: float = 30.0,
                 republish_interval_s: float = 2.0, codec: str = INT8_CODEC,
                 max_rounds_ahead: int = 2, max_peers_per_round: int = 256,
                 max_parallel_fetches: int = 8,
                 run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None) -> None:
        for name, v in [("round_timeout_s", round_timeout_s), ("fetch_timeout_s", fetch_timeout_s),
                        ("republish_interval_s", republish_interval_s)]:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name, v, lo in [("min_peers", min_peers, 0), ("max_rounds_ahead", max_rounds_ahead, 0),
                            ("max_peers_per_round", max_peers_per_round, 1),
                            ("max_parallel_fetches", max_parallel_fetches, 1)]:
            if type(v) is not int or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", base_model or ""):
            raise ValueError(f"base_model must be a hex SHA-256, got {base_model!r}")
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {CODECS}")
        if not expected_shapes:
            raise ValueError("expected_shapes is empty")
        if peer_id_of(key_pair) != transport.peer_id:
            raise ValueError("key_pair does not belong to the transport's peer ID")
        self.transport = transport
        self.key_pair = key_pair
        self.peer_id: str = transport.peer_id
        self.swarm = swarm
        self.base_model = base_model.lower()
        try:
            self.lora = lora_dict(lora)
        except WireError as e:
            raise ValueError(f"bad lora config: {e.reason}") from None
        self.expected_shapes = {k: tuple(int(d) for d in s) for k, s in expected_shapes.items()}
        self.min_peers = min_peers
        self.round_timeout_s = float(round_timeout_s)
        self.fetch_timeout_s = float(fetch_timeout_s)
        self.republish_interval_s = float(republish_interval_s)
        self.codec = codec
        self.max_rounds_ahead = max_rounds_ahead
        self.max_peers_per_round = max_peers_per_round
        self.latest_round_seen: int | None = None   # highest round of a valid, compatible manifest
        self._max_payload = max_payload_bytes(self.expected_shapes)
        self._run_blocking = run_blocking or _to_thread
        self._fetch_limiter = trio.CapacityLimiter(max_parallel_fetches)
        self._rng = random.Random()           # relay order only; spreads load over neighbours
        self._ef = ErrorFeedback(codec=codec)
        self._floor = 0                     # manifests for rounds below this are ignored
        self._last_round: int | None = None
        self._rounds: dict[int, _RoundState] = {}
        self._payloads: dict[tuple[int, bytes], bytes] = {}   # (round, sha256) -> payload
        self._published: dict[int, bytes] = {}                # round -> our signed manifest
        self._active: _Active | None = None
        self._running = False
        self._exchanging = False

    # --- public API ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve payloads, consume gossip and republish manifests until cancelled (or until
        the transport's message channel closes). Reports started once it serves payloads."""
        self.transport.set_payload_provider(self._serve_payload)
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._republish_loop)
                task_status.started()
                async for msg in self.transport.messages():
                    self._on_gossip(msg.from_peer, msg.data)
                log.info("gossip channel closed; coordinator stops")
                nursery.cancel_scope.cancel()
        finally:
            self._running = False

    async def exchange(self, round: int, delta: Mapping[str, np.ndarray],
                       tokens: int) -> RoundResult:
        """Run round `round` with our `delta` (name -> float32, expected shapes) trained on
        `tokens` tokens (int >= 1, our FedAvg weight). Returns within about round_timeout_s.

        Raises ValueError (bad round, tokens or delta; rounds must increase) and RuntimeError
        (run() not started, or another exchange in progress). Peer failures never raise.
        """
        if not self._running:
            raise RuntimeError("start RoundCoordinator.run in a nursery before exchange")
        if self._exchanging:
            raise RuntimeError("an exchange is already in progress")
        # NumPy integers (token counts summed from arrays) are fine; bools are not.
        if isinstance(round, numbers.Integral) and not isinstance(round, bool):
            round = int(round)
        if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
            tokens = int(tokens)
        if type(round) is not int or not 0 <= round <= MAX_ROUND:
            raise ValueError(f"round must be an int in [0, {MAX_ROUND}], got {round!r}")
        if self._last_round is not None and round <= self._last_round:
            raise ValueError(f"round {round} is not after the last round {self._last_round}")
        if type(tokens) is not int or not 1 <= tokens <= MAX_TOKENS:
            raise ValueError(f"tokens must be an int in [1, {MAX_TOKENS}], got {tokens!r}")
        if set(delta) != set(self.expected_shapes) or any(
                tuple(np.shape(delta[k])) != s for k, s in self.expected_shapes.items()):
            raise ValueError("delta keys/shapes differ from expected_shapes")
        self._exchanging = True
        try:
            return await self._exchange(round, delta, tokens)
        finally:
            self._exchanging = False

    async def _exchange(self, round: int, delta: Mapping[str, np.ndarray],
                        tokens: int) -> RoundResult:
        sent0, received0 = self.transport.bytes_sent, self.transport.bytes_received
        payload, own = await self._run_blocking(functools.partial(self._ef.compress, delta))
        sha = hashlib.sha256(payload).digest()
        manifest = UpdateManifest(
            swarm=self.swarm, round=round, base_model=self.base_model, lora=self.lora,
            sender=self.peer_id, tokens=tokens, codec=self.codec, payload_sha256=sha,
            payload_size=len(payload))
        data = encode_manifest(manifest, self.key_pair)
        self._last_round = round
        self._advance(round)
        self._payloads[(round, sha)] = payload        # serve before announcing
        self._published[round] = data
        state = self._state(round)
        log.info("round %d: publishing update (%d bytes, %d tokens, %d manifests buffered)",
                 round, len(payload), tokens, len(state.manifests))

        with trio.move_on_after(self.round_timeout_s) as deadline:
            try:
                await self._publish(data, round)
                async with trio.open_nursery() as nursery:
                    self._active = _Active(round, nursery, state)
                    for m in list(state.manifests.values()):
                        self._start_fetch(m)
                    self._check_enough(state)
                    await state.enough.wait()
                    nursery.cancel_scope.cancel()       # stragglers' fetches are not needed
            finally:
                self._active = None
        self._floor = round + 1                         # late manifests for this round: ignored
        self._rounds.pop(round, None)

        got = len(state.contributions)
        if deadline.cancelled_caught:
            if got:
                log.warning("round %d: deadline (%.1f s) with %d of %d peer updates; aggregating "
                            "those", round, self.round_timeout_s, got, self.min_peers)
            else:
                log.warning("round %d: deadline (%.1f s) with no valid peer update; the aggregate "
                            "is our own decoded delta alone", round, self.round_timeout_s)
        contributions = [Contribution(self.peer_id, tokens, own), *state.contributions.values()]
        aggregate = await self._run_blocking(functools.partial(fedavg, contributions))
        contributors = sorted(c.peer_id for c in contributions)
        log.info("round %d: aggregated %d updates (%s), %d rejected", round, len(contributors),
                 ", ".join(p[-8:] for p in contributors), len(state.rejected))
        return RoundResult(round=round, aggregate=aggregate, contributors=contributors,
                           rejected=list(state.rejected),
                           bytes_sent=self.transport.bytes_sent - sent0,
                           bytes_received=self.transport.bytes_received - received0)

    def buffered(self, round: int) -> list[str]:
        """Senders (sorted) of valid manifests held for `round` (for tests and status)."""
        state = self._rounds.get(round)
        return sorted(state.manifests) if state else []

    # --- gossip intake -------------------------------------------------------------------

    def _on_gossip(self, from_peer: str, data: bytes) -> None:
        """Validate one gossip message and file it. Never raises on hostile input."""
        try:
            m = decode_manifest(data)
        except WireError as e:
            self._reject_unverified(from_peer, e)
            return
        if m.sender == self.peer_id:
            return                                       # our own manifest, forwarded back
        if m.round < self._floor or m.round > self._floor + self.max_rounds_ahead:
            log.debug("manifest of %s for round %d outside window [%d, %d]; ignored", m.sender,
                      m.round, self._floor, self._floor + self.max_rounds_ahead)
            return
        state = self._state(m.round)
        if m.sender in state.settled:
            return                                       # republished: (sender, round) seen
        if len(state.settled) >= self.max_peers_per_round:
            log.warning("round %d: %d senders already; manifest of %s dropped", m.round,
                        len(state.settled), m.sender)
            return
        state.settled.add(m.sender)
        try:
            check_compatible(m, swarm=self.swarm, base_model=self.base_model, lora=self.lora)
            if m.codec not in CODECS:
                raise WireError(f"unknown codec {m.codec!r}")
            if m.payload_size > self._max_payload:
                raise WireError(f"payload_size {m.payload_size} exceeds the bound "
                                f"{self._max_payload} for our shapes")
        except WireError as e:
            self._reject(state, m.round, m.sender, e.reason)
            return
        state.manifests[m.sender] = m
        self.latest_round_seen = max(m.round, self.latest_round_seen or 0)
        log.debug("round %d: manifest from %s (%d tokens)", m.round, m.sender, m.tokens)
        if self._active is not None and self._active.round == m.round:
            self._start_fetch(m)

    def _reject_unverified(self, from_peer: str, e: WireError) -> None:
        # Unverified content cannot be pinned on the claimed sender (anyone can forge that),
        # so the gossip author is blamed, under the claimed round if it is one we track.
        rnd = e.round
        if rnd is not None and self._floor <= rnd <= self._floor + self.max_rounds_ahead:
            self._reject(self._state(rnd), rnd, from_peer, e.reason)
        elif self._active is not None:
            self._reject(self._active.state, self._active.round, from_peer, e.reason)
        else:
            log.info("invalid gossip from %s: %s", from_peer, e.reason)

    # --- fetching ------------------------------------------------------------------------

    def _start_fetch(self, m: UpdateManifest) -> None:
        assert self._active is not None
        state = self._active.state
        if m.sender in state.fetching or m.sender in state.contributions:
            return
        state.fetching.add(m.sender)
        self._active.nursery.start_soon(self._fetch_one, state, m)

    async def _fetch_one(self, state: _RoundState, m: UpdateManifest) -> None:
        """Fetch, verify, decode and file one peer's update; failures become rejections."""
        request = encode_payload_request(m.round, m.payload_sha256)
        sender_error = other_error = None
        async with self._fetch_limiter:
            for attempt in range(FETCH_ATTEMPTS):
                if attempt:
                    await trio.sleep(FETCH_RETRY_BACKOFF_S * attempt)
                for source in self._sources(m):
                    data, error = await self._fetch_verified(source, m, request)
                    if data is not None:
                        break
                    if source == m.sender:
                        sender_error = error
                    else:
                        other_error = f"{error} (via {source})"
                else:
                    log.info("round %d: payload of %s not fetched (attempt %d/%d): %s", m.round,
                             m.sender, attempt + 1, FETCH_ATTEMPTS, sender_error or other_error)
                    continue
                break
            else:
                self._reject(state, m.round, m.sender, sender_error or other_error or "no source")
                return
        try:
            # The bytes match the signed manifest: a decode failure is the sender's doing.
            delta = await self._run_blocking(functools.partial(
                decode_update, data, expected_shapes=self.expected_shapes,
                max_bytes=m.payload_size, codec=m.codec))
        except CodecError as e:
            self._reject(state, m.round, m.sender, f"bad payload: {e}")
            return
        self._payloads[(m.round, m.payload_sha256)] = data     # relay it for peers behind us
        state.contributions[m.sender] = Contribution(m.sender, m.tokens, delta)
        log.info("round %d: update from %s accepted (%d bytes, %d tokens, via %s)", m.round,
                 m.sender, len(data), m.tokens, "sender" if source == m.sender else source)
        self._check_enough(state)

    def _sources(self, m: UpdateManifest) -> list[str]:
        """The sender first; then up to MAX_RELAYS directly connected peers, which serve
        payloads they verified: gossip reaches us through the mesh even when we hold no
        address of the sender (a star or a line of peers)."""
        relays = [p for p in self.transport.connected_peers() if p not in (m.sender, self.peer_id)]
        self._rng.shuffle(relays)
        return [m.sender, *relays[:MAX_RELAYS]]

    async def _fetch_verified(self, source: str, m: UpdateManifest,
                              request: bytes) -> tuple[bytes | None, str]:
        """(payload, "") if `source` served the bytes the manifest names, else (None, reason)."""
        # The transport bounds its own wait; the outer scope guards against one that does not
        # (1 s of grace so the transport's own timeout error wins normally).
        with trio.move_on_after(self.fetch_timeout_s + 1.0):
            try:
                data = await self.transport.fetch(source, request, max_bytes=m.payload_size,
                                                  timeout_s=self.fetch_timeout_s)
            except FetchError as e:
                return None, f"fetch failed: {e}"
            if len(data) != m.payload_size:
                return None, f"payload size {len(data)} != announced {m.payload_size}"
            if hashlib.sha256(data).digest() != m.payload_sha256:
                return None, "payload SHA-256 mismatch with the manifest"
            return data, ""
        return None, "fetch timed out"

    def _check_enough(self, state: _RoundState) -> None:
        if len(state.contributions) >= self.min_peers:
            state.enough.set()

    # --- serving and publishing ----------------------------------------------------------

    def _serve_payload(self, request: bytes) -> bytes | None:
        """Payload provider for the transport: a dict lookup, safe on the event loop."""
        try:
            rnd, sha = decode_payload_request(request)
        except WireError as e:
            log.debug("bad payload request: %s", e.reason)
            return None
        return self._payloads.get((rnd, sha))

    async def _publish(self, data: bytes, rnd: int) -> None:
        try:
            with trio.move_on_after(self.fetch_timeout_s) as scope:
                await self.transport.publish(data)
        except TransportError as e:
            log.warning("round %d: publishing our manifest failed (%s); will retry", rnd, e)
            return
        if scope.cancelled_caught:
            log.warning("round %d: publishing our manifest timed out; will retry", rnd)

    async def _republish_loop(self) -> None:
        while True:
            await trio.sleep(self.republish_interval_s)
            for rnd in sorted(self._published):
                await self._publish(self._published[rnd], rnd)

    # --- bookkeeping ---------------------------------------------------------------------

    def _state(self, rnd: int) -> _RoundState:
        state = self._rounds.get(rnd)
        if state is None:
            state = self._rounds[rnd] = _RoundState()
        return state

    def _advance(self, rnd: int) -> None:
        """Enter round `rnd`: drop older round states, old payloads and old manifests."""
        self._floor = rnd
        for r in [r for r in self._rounds if r < rnd]:
            del self._rounds[r]
        keep_from = rnd - (_SERVED_ROUNDS - 1)
        self._payloads = {k: v for k, v in self._payloads.items() if k[0] >= keep_from}
        self._published = {r: v for r, v in self._published.items() if r >= keep_from}

    def _reject(self, state: _RoundState, rnd: int, peer: str, reason: str) -> None:
        entry = (peer, reason[:300])
        if entry in state.rejected or len(state.rejected) >= _MAX_REJECTIONS_PER_ROUND:
            return
        state.rejected.append(entry)
        log.warning("round %d: rejected update from %s: %s", rnd, peer, entry[1])
