"""The round state machine: publish a signed manifest, fetch peers' payloads, aggregate.

Round r on one node (`RoundCoordinator.exchange`):
  1. compress the local delta with error feedback around the injected codec, keep the payload
     to serve it (keyed by (round, SHA-256)), gossip the signed manifest (wire.UpdateManifest);
  2. for each manifest of round r that intake accepted (intake.py), fetch the payload from
     the sender or a relay (fetch.py), decode it against the expected shapes (codecs);
  3. stop when `min_peers` peers' updates are in, or at the deadline with what arrived;
  4. aggregate with the injected rule (default FedAvg) over the own DECODED delta plus the
     peers' decoded deltas, so nodes holding the same set of updates compute the same bits.
Every failure in (2) becomes a `rejected` entry with a reason and a log line; the round goes on.

In the background (`run`): feed gossip to intake, serve payloads and republish manifests of
the current and previous round (serving.py).

Tasks: `run` owns the republish loop; each `exchange` owns its nursery, in which a dispatcher
reads the accepted manifests from intake's memory channel and starts one fetch per sender.

Logger: "bitswarm.federation.rounds" (parent of the rounds.* module loggers).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import numbers
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from bitswarm.federation.aggregation import AggregationRule, Contribution, FedAvg
from bitswarm.federation.codecs import (CODECS, Codec, CodecError, ErrorFeedback, Int8BlockCodec,
                                        decode_update, max_payload_bytes)
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.wire import (MAX_ROUND, MAX_TOKENS, UpdateManifest, WireError,
                                      encode_manifest, lora_dict)

from .fetch import FetchFailed, PayloadFetcher
from .intake import ManifestIntake, RoundState
from .serving import ServedRounds, publish_manifest, republish_loop

log = logging.getLogger("bitswarm.federation.rounds")

T = TypeVar("T")


@dataclass(frozen=True)
class RoundResult:
    """Outcome of one round on this node.

    aggregate: name -> float32 array (expected shapes), the aggregation rule's result over the
        contributors' decoded deltas; add it to the global adapter. contributors: peer IDs
        whose updates are in the aggregate, own included, sorted. rejected: (peer ID, reason)
        per refused manifest or payload (for a bad signature, the peer is the gossip author,
        not the claimed sender). bytes_sent / bytes_received: the transport's counters over
        this exchange (bytes, all traffic in that window, republishing included).
    """

    round: int
    aggregate: dict[str, np.ndarray]
    contributors: list[str]
    rejected: list[tuple[str, str]]
    bytes_sent: int
    bytes_received: int


@dataclass
class _Exchange:
    """One exchange's progress: peers' decoded updates, and whether there are enough."""

    intake: RoundState
    contributions: dict[str, Contribution] = field(default_factory=dict)
    enough: trio.Event = field(default_factory=trio.Event)


async def _to_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


class RoundCoordinator:
    """Runs federated rounds over a Transport (bitswarm.federation.transport API).

    Args:
        transport: publish / messages / set_payload_provider / fetch / connected_peers /
            peer_id / byte counters.
        key_pair: libp2p Ed25519 KeyPair of transport.peer_id (signs our manifests).
        swarm: swarm name. base_model: hex SHA-256 of the base model.
        lora: LoRAConfig or mapping (rank, alpha, target_modules, freeze_A); peers must match.
        expected_shapes: name -> shape of every LoRA tensor (lora_A (r, in), lora_B (out, r)).
        min_peers: valid updates from OTHER peers that complete a round early (>= 0).
        round_timeout_s: deadline of one exchange, seconds, from its start.
        fetch_timeout_s: deadline of one payload fetch, seconds.
        republish_interval_s: period of manifest republishing, seconds.
        codec: Codec of our payloads (default Int8BlockCodec()), wrapped in error feedback;
            we accept peers' payloads in any registered codec (codecs.CODECS).
        aggregation: AggregationRule of the round (default FedAvg()).
        max_rounds_ahead: manifests up to this many rounds ahead of ours are buffered.
        max_peers_per_round: manifests buffered per round, beyond which new senders are dropped.
        max_parallel_fetches: payload fetches at once.
        allowed_senders: peer IDs (base58) whose updates may count; None = anyone in the swarm.
            Others are rejected ("sender not on the allow-list") and not relayed.
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
                 republish_interval_s: float = 2.0, codec: Codec | None = None,
                 aggregation: AggregationRule | None = None,
                 max_rounds_ahead: int = 2, max_peers_per_round: int = 256,
                 max_parallel_fetches: int = 8, allowed_senders: frozenset[str] | None = None,
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
        codec = Int8BlockCodec() if codec is None else codec
        # Receivers decode with the registered class of the wire name: ours must be exactly it.
        if not isinstance(codec, Codec) or CODECS.get(codec.wire_name) is not type(codec):
            raise ValueError(f"codec must be an instance of a registered codec {sorted(CODECS)}, "
                             f"got {codec!r}")
        aggregation = FedAvg() if aggregation is None else aggregation
        if not isinstance(aggregation, AggregationRule):
            raise ValueError(f"aggregation must be an AggregationRule, got {aggregation!r}")
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
        self.aggregation = aggregation
        self.max_rounds_ahead = max_rounds_ahead
        self.max_peers_per_round = max_peers_per_round
        self._run_blocking = run_blocking or _to_thread
        self._ef = ErrorFeedback(codec)
        self._intake = ManifestIntake(
            peer_id=self.peer_id, swarm=swarm, base_model=self.base_model, lora=self.lora,
            max_payload=max_payload_bytes(self.expected_shapes),
            max_rounds_ahead=max_rounds_ahead, max_peers_per_round=max_peers_per_round,
            allowed_senders=allowed_senders)
        self._fetcher = PayloadFetcher(transport, fetch_timeout_s=self.fetch_timeout_s,
                                       max_parallel_fetches=max_parallel_fetches)
        self._served = ServedRounds()
        self._last_round: int | None = None
        self._running = False
        self._exchanging = False

    @property
    def latest_round_seen(self) -> int | None:
        """Highest round of a valid, compatible manifest received (None before the first)."""
        return self._intake.latest_round_seen

    # --- public API ----------------------------------------------------------------------

    @property
    def error_feedback(self) -> ErrorFeedback:
        """The error-feedback state of our payloads (its `residual` is what a resumed node
        restores)."""
        return self._ef

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve payloads, consume gossip and republish manifests until cancelled (or until
        the transport's message channel closes). Reports started once it serves payloads."""
        self.transport.set_payload_provider(self._served.serve)
        self.transport.set_gossip_validator(self._intake.relayable)   # relay only what we accept
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(republish_loop, self.transport, self._served,
                                   self.republish_interval_s, self.fetch_timeout_s)
                task_status.started()
                async for msg in self.transport.messages():
                    self._intake.on_gossip(msg.from_peer, msg.data)
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

    def buffered(self, round: int) -> list[str]:
        """Senders (sorted) of valid manifests held for `round` (for tests and status)."""
        return self._intake.buffered(round)

    # --- one round -----------------------------------------------------------------------

    async def _exchange(self, round: int, delta: Mapping[str, np.ndarray],
                        tokens: int) -> RoundResult:
        sent0, received0 = self.transport.bytes_sent, self.transport.bytes_received
        payload, own = await self._run_blocking(functools.partial(self._ef.compress, delta))
        sha = hashlib.sha256(payload).digest()
        manifest = UpdateManifest(
            swarm=self.swarm, round=round, base_model=self.base_model, lora=self.lora,
            sender=self.peer_id, tokens=tokens, codec=self.codec.wire_name, payload_sha256=sha,
            payload_size=len(payload))
        data = encode_manifest(manifest, self.key_pair)
        self._last_round = round
        ex = _Exchange(self._intake.enter(round))
        self._served.enter(round)
        self._served.payloads[(round, sha)] = payload        # serve before announcing
        self._served.manifests[round] = data
        log.info("round %d: publishing update (%d bytes, %d tokens, %d manifests buffered)",
                 round, len(payload), tokens, len(ex.intake.manifests))

        try:
            with trio.move_on_after(self.round_timeout_s) as deadline:
                await publish_manifest(self.transport, data, round, self.fetch_timeout_s)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch, self._intake.open(round), nursery, ex)
                    self._check_enough(ex)
                    await ex.enough.wait()
                    nursery.cancel_scope.cancel()       # stragglers' fetches are not needed
        finally:
            self._intake.close(round)                   # late manifests for this round: ignored

        got = len(ex.contributions)
        if deadline.cancelled_caught:
            if got:
                log.warning("round %d: deadline (%.1f s) with %d of %d peer updates; aggregating "
                            "those", round, self.round_timeout_s, got, self.min_peers)
            else:
                log.warning("round %d: deadline (%.1f s) with no valid peer update; the aggregate "
                            "is our own decoded delta alone", round, self.round_timeout_s)
        contributions = [Contribution(self.peer_id, tokens, own), *ex.contributions.values()]
        aggregate = await self._run_blocking(
            functools.partial(self.aggregation.aggregate, round, contributions))
        contributors = sorted(c.peer_id for c in contributions)
        log.info("round %d: aggregated %d updates (%s), %d rejected", round, len(contributors),
                 ", ".join(p[-8:] for p in contributors), len(ex.intake.rejected))
        return RoundResult(round=round, aggregate=aggregate, contributors=contributors,
                           rejected=list(ex.intake.rejected),
                           bytes_sent=self.transport.bytes_sent - sent0,
                           bytes_received=self.transport.bytes_received - received0)

    async def _dispatch(self, inbox: trio.MemoryReceiveChannel[UpdateManifest],
                        nursery: trio.Nursery, ex: _Exchange) -> None:
        """Start one fetch per accepted manifest, in the exchange's nursery, until intake
        closes the round (or the exchange cancels the nursery)."""
        async with inbox:
            async for m in inbox:
                nursery.start_soon(self._fetch_one, ex, m)

    async def _fetch_one(self, ex: _Exchange, m: UpdateManifest) -> None:
        """Fetch, verify, decode and file one peer's update; failures become rejections."""
        try:
            data, source = await self._fetcher.fetch(m)
        except FetchFailed as e:
            ex.intake.reject(m.sender, e.reason)
            return
        try:
            # The bytes match the signed manifest: a decode failure is the sender's doing.
            delta = await self._run_blocking(functools.partial(
                decode_update, data, expected_shapes=self.expected_shapes,
                max_bytes=m.payload_size, codec=m.codec))
        except CodecError as e:
            ex.intake.reject(m.sender, f"bad payload: {e}")
            return
        self._served.payloads[(m.round, m.payload_sha256)] = data   # relay it for peers behind us
        ex.contributions[m.sender] = Contribution(m.sender, m.tokens, delta)
        log.info("round %d: update from %s accepted (%d bytes, %d tokens, via %s)", m.round,
                 m.sender, len(data), m.tokens, "sender" if source == m.sender else source)
        self._check_enough(ex)

    def _check_enough(self, ex: _Exchange) -> None:
        if len(ex.contributions) >= self.min_peers:
            ex.enough.set()
