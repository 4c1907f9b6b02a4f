"""The round state machine: publish a signed manifest, fetch peers' payloads, agree on the
round's updates, hold the swarm's global adapter.

The coordinator holds G_r, the global adapter round r starts from, and its digest
(state_hash.adapter_digest). Round r on one node (`RoundCoordinator.exchange`):
  1. compress the local delta with error feedback around the injected codec, keep the payload
     to serve it (keyed by (round, SHA-256)), gossip the signed manifest (wire.UpdateManifest,
     naming the digest of G_r: updates trained from another adapter never mix);
  2. for each manifest of round r and base G_r that intake accepted (intake.py), fetch the
     payload from the sender or a relay (fetch.py), decode it against the expected shapes;
  3. stop when `min_peers` peers' updates are in, at the deadline, or when a peer's round
     record for (r, G_r) arrives;
  4. agree (agreement.py): propose a signed round record of what we hold unless a record came
     first, wait for the contributors' records, adopt the best record we can recompute;
     G_{r+1} = G_r + rule(decoded deltas of exactly that record's updates), so every node that
     adopts the same record holds the same bits.
Every failure in (2) becomes a `rejected` entry with a reason and a log line; the round goes on.

`catch_up` moves a node that is behind or on a minority fork to the swarm's head: the state
the most signers claim at the highest round (view.py), fetched from one of them by digest
(wire state request) and checked against it.

In the background (`run`): feed gossip to intake, serve payloads and adapters, republish the
current manifest and the adopted record (serving.py).

Tasks: `run` owns the republish loop; each `exchange` owns its nursery, in which a dispatcher
reads intake's deliveries and starts one fetch per sender.

Logger: "bitswarm.federation.rounds" (parent of the rounds.* module loggers).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import numbers
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from bitswarm.federation.aggregation import AggregationRule, Contribution, FedAvg, NesterovOuter
from bitswarm.federation.codecs import (CODECS, Codec, CodecError, ErrorFeedback, Int8BlockCodec,
                                        RawCodec, decode_update, encode_update, max_payload_bytes)
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.round_record import (MAX_RECORD_UPDATES, RoundRecord, encode_record,
                                              proposer_rank)
from bitswarm.federation.secagg.messages import MASKED_CODEC, SECAGG_MAGIC, masked_bound
from bitswarm.federation.state_hash import adapter_digest
from bitswarm.federation.transport import FetchError
from bitswarm.federation.wire import (MAX_ROUND, MAX_TOKENS, UpdateManifest, WireError,
                                      encode_manifest, encode_state_request, lora_dict)

from .agreement import acknowledged, outranking, ranked
from .fetch import FetchFailed, PayloadFetcher
from .intake import ManifestIntake, ManifestSeen, RecordSeen, RoundState
from .secure import SECURE_RULES, RoundAbandoned, SecureRound
from .secure_intake import SecAggIntake
from .serving import (SERVED_ROUNDS, ServedRounds, publish, publish_served, republish_loop,
                      republish_period)

log = logging.getLogger("bitswarm.federation.rounds")

T = TypeVar("T")
_UNCHECKED = object()

# A manifest whose payload no source served (fetch.py's passes, 2 x fetch_timeout_s) is asked
# for again this many times while the round collects, FETCH_RETRY_PAUSE_S apart (jittered);
# the exchange's end cancels the retries.
FETCH_RETRIES = 4
FETCH_RETRY_PAUSE_S = 10.0
VERIFY_FETCH_RETRIES = 2     # the same, for a payload a round record names that we lack
PROPOSAL_SPREAD_S = 5.0      # the PROPOSERS best-ranked contributors propose this far apart (s)
STAGGER_FROM = 8             # other members up to which every node proposes at once
PROPOSERS = 3                # contributors that propose in a larger swarm (by proposer rank)
FOLLOW_WAIT_S = 60.0         # the others wait this long for a record before proposing (s)


@dataclass(frozen=True)
class RoundResult:
    """Outcome of one round on this node.

    aggregate: name -> float32 array (expected shapes), the aggregation rule's result over the
        adopted record's decoded deltas. adapter: G_{round+1} = G_round + aggregate (float32),
        now held by the coordinator; adapter_sha256: its hex digest. contributors: peer IDs
        whose updates are in the aggregate, sorted. included: whether ours is among them (a
        late update is dropped). proposer: the peer ID whose round record was adopted.
        rejected: (peer ID, reason) per refused manifest, payload or record (for a bad
        signature, the peer is the gossip author, not the claimed sender). bytes_sent /
        bytes_received: the transport's counters over this exchange (all traffic in that
        window, republishing included).
    """

    round: int
    aggregate: dict[str, np.ndarray]
    adapter: dict[str, np.ndarray]
    adapter_sha256: str
    contributors: list[str]
    included: bool
    proposer: str
    rejected: list[tuple[str, str]]
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class SyncResult:
    """A catch-up: the coordinator now holds G_round (adapter, hex adapter_sha256), fetched
    from `source`; `signers` peers claimed it."""

    round: int
    adapter: dict[str, np.ndarray]
    adapter_sha256: str
    source: str
    signers: int


@dataclass
class _Exchange:
    """One exchange's progress: the updates of our base we hold (decoded), their signed
    manifests, the records seen and who authored records, and the events that move it."""

    intake: RoundState
    base: bytes
    contributions: dict[str, Contribution] = field(default_factory=dict)
    manifests: dict[str, ManifestSeen] = field(default_factory=dict)
    records: list[RoundRecord] = field(default_factory=list)
    authors: set[str] = field(default_factory=set)
    record_authors: dict[bytes, set[str]] = field(default_factory=dict)   # record bytes -> authors
    fetched: dict[tuple[str, bytes], dict] = field(default_factory=dict)  # (sender, sha) -> delta
    # Peers' updates of our base already buffered when we entered: a straggler's count.
    buffered_at_entry: int = 0
    enough: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class SwarmMovedOn(Exception):
    """The swarm is too many rounds ahead to check its records (its payloads of our round are
    no longer served), or it left our base while our round collected (a better-supported head
    that catch_up moves to): our update would be dropped anyway. `head`: the swarm's round.
    The caller catches up (RoundCoordinator.catch_up) instead of exchanging."""

    def __init__(self, round: int, head: int) -> None:
        super().__init__(f"round {round}: the swarm is at round {head}")
        self.round, self.head = round, head


class NoRecordAdopted(SwarmMovedOn):
    """A large swarm's round records all failed our check (their payloads could not be
    fetched, say, on a starved mesh) and a record of ours would hold fewer updates than the
    quorum: proposing it would start a lone fork that no peer adopts. The caller catches up
    instead (the swarm's adopted adapter reaches our view as its adopters republish)."""

    def __init__(self, round: int, held: int, quorum: int) -> None:
        Exception.__init__(self, f"round {round}: no round record of the swarm could be checked "
                           f"and ours would hold {held} of the quorum's {quorum} updates")
        self.round, self.head = round, round + 1


async def _to_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


class RoundCoordinator:
    """Runs federated rounds over a Transport (bitswarm.federation.transport API).

    Args:
        transport: publish / messages / set_payload_provider / set_gossip_validator / fetch /
            connected_peers / peer_id / byte counters.
        key_pair: libp2p Ed25519 KeyPair of transport.peer_id (signs our manifests, records).
        swarm: swarm name. base_model: hex SHA-256 of the base model.
        lora: LoRAConfig or mapping (rank, alpha, target_modules, freeze_A); peers must match.
        expected_shapes: name -> shape of every LoRA tensor (lora_A (r, in), lora_B (out, r)).
        initial_adapter: G at `initial_round` (name -> float32, expected shapes; default zeros).
        initial_round: the round `initial_adapter` starts (0, or a resumed node's next round).
        min_peers: valid updates from OTHER peers that complete a round early (>= 0).
        round_timeout_s: deadline of one exchange's collection, seconds, from its start.
        settle_s: longest wait for the contributors' round records after closing, seconds, in a
            swarm of up to 8 other members; longer in a larger one (`settle_window_s`).
        fetch_timeout_s: deadline of one payload fetch, seconds.
        republish_interval_s: period of republishing, seconds.
        codec: Codec of our payloads (default Int8BlockCodec()), wrapped in error feedback;
            we accept peers' payloads in any registered codec (codecs.CODECS).
        aggregation: AggregationRule of the round (default FedAvg()); peers must use the same.
        outer: the outer optimizer of the global step (aggregation/outer.py: DiLoCo's
            NesterovOuter), or None for G + aggregate; peers must use the same (its name joins
            the rule's on the wire), and its state is part of the global state's hash.
        dp: (clip norm C, noise multiplier sigma) of the swarm's DP-FedAvg, or None: every
            member must use the same (it joins the rule's name on the wire), so no peer's
            update in the aggregate carries less noise than the swarm promises. The clipping
            and noising itself is the caller's (federation/privacy), before `exchange`.
        secure_aggregation: run every round as a secure aggregation (rounds/secure.py,
            Bonawitz et al. 2017): peers see only the cohort's sum. Needs `dp` (its clip C
            bounds every update before masking; noise may be 0) and the fedavg rule (the
            others need individual updates); joins the rule's name on the wire ("+secagg").
            A round that cannot be unmasked raises RoundAbandoned from `exchange`.
        secure_min_sum: with secure aggregation, the fewest members whose updates a revealed
            sum may hold (0: the Shamir threshold alone). Distributed DP sets it to the count
            each member's noise share assumes (node/runtime.member_noise), so no revealed sum
            carries less noise than sigma C: a round with fewer survivors is abandoned.
        max_rounds_ahead: manifests up to this many rounds ahead of ours are buffered.
        max_peers_per_round: manifests buffered per round (<= 256, a record's bound), beyond
            which new senders are dropped.
        max_parallel_fetches: payload fetches at once.
        allowed_senders: peer IDs (base58) whose updates may count; None = anyone in the swarm.
            Others are rejected ("sender not on the allow-list") and not relayed.
        max_age_s: oldest issued_at accepted, seconds (default max(3600, 4 x round_timeout_s)).
        clock: unix time, seconds (time.time); stamps and checks issued_at.
        run_blocking: awaits a zero-argument function off the event loop (compression, decoding,
            aggregation). Default: trio.to_thread.run_sync. Tests under trio's MockClock pass an
            inline runner: the clock's autojump does not see worker threads.

    Raises ValueError on bad arguments, including a key pair that is not the transport's.
    Usage: start `run` in a nursery (`await nursery.start(coord.run)`), then call `exchange`
    once per round with increasing round numbers (`catch_up` between rounds).
    """

    def __init__(self, transport: Any, key_pair: Any, *, swarm: str, base_model: str, lora: Any,
                 expected_shapes: Mapping[str, tuple[int, ...]],
                 initial_adapter: Mapping[str, np.ndarray] | None = None, initial_round: int = 0,
                 min_peers: int = 1, round_timeout_s: float = 300.0, settle_s: float = 5.0,
                 fetch_timeout_s: float = 30.0, republish_interval_s: float = 2.0,
                 codec: Codec | None = None, aggregation: AggregationRule | None = None,
                 outer: NesterovOuter | None = None, dp: tuple[float, float] | None = None,
                 secure_aggregation: bool = False, secure_min_sum: int = 0,
                 max_rounds_ahead: int = 2, max_peers_per_round: int = MAX_RECORD_UPDATES,
                 max_parallel_fetches: int = 8, allowed_senders: frozenset[str] | None = None,
                 max_age_s: float | None = None, clock: Callable[[], float] = time.time,
                 run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None) -> None:
        for name, v in [("round_timeout_s", round_timeout_s), ("fetch_timeout_s", fetch_timeout_s),
                        ("republish_interval_s", republish_interval_s), ("settle_s", settle_s)]:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name, v, lo in [("min_peers", min_peers, 0), ("max_rounds_ahead", max_rounds_ahead, 0),
                            ("max_peers_per_round", max_peers_per_round, 1),
                            ("max_parallel_fetches", max_parallel_fetches, 1),
                            ("initial_round", initial_round, 0)]:
            if type(v) is not int or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if max_peers_per_round > MAX_RECORD_UPDATES:
            raise ValueError(f"max_peers_per_round must be <= {MAX_RECORD_UPDATES} (what a "
                             f"round record holds), got {max_peers_per_round}")
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
        if initial_adapter is None:
            initial_adapter = {k: np.zeros(s, np.float32) for k, s in self.expected_shapes.items()}
        if set(initial_adapter) != set(self.expected_shapes) or any(
                tuple(np.shape(initial_adapter[k])) != s for k, s in self.expected_shapes.items()):
            raise ValueError("initial_adapter keys/shapes differ from expected_shapes")
        self.min_peers = min_peers
        self.round_timeout_s = float(round_timeout_s)
        self.settle_s = float(settle_s)
        self.fetch_timeout_s = float(fetch_timeout_s)
        self.republish_interval_s = float(republish_interval_s)
        self.codec = codec
        self.aggregation = aggregation
        if outer is not None and not isinstance(outer, NesterovOuter):
            raise ValueError(f"outer must be a NesterovOuter or None, got {outer!r}")
        self.outer = outer
        # The name peers must match: the rule, then the outer step when there is one.
        self.rule_name = aggregation.name if outer is None else f"{aggregation.name}+{outer.name}"
        if dp is not None:
            clip, noise = dp
            if not (math.isfinite(clip) and clip > 0 and math.isfinite(noise) and noise >= 0):
                raise ValueError(f"dp must be (clip > 0, noise >= 0), got {dp!r}")
            self.rule_name += f"+dp(c={clip:g},s={noise:g})"
        self.secure: tuple[float, float] | None = None
        if secure_aggregation:
            if aggregation.name not in SECURE_RULES:
                raise ValueError(
                    f"secure aggregation sums masked updates, so only {list(SECURE_RULES)} can "
                    f"be computed; {aggregation.name!r} needs the individual updates")
            if dp is None:
                raise ValueError("secure aggregation needs dp=(clip, noise): every update is "
                                 "clipped to a swarm-wide L2 norm before masking")
            self.secure = (float(dp[0]), float(dp[1]))
            self.rule_name += "+secagg"
        if secure_min_sum < 0 or (secure_min_sum and not secure_aggregation):
            raise ValueError(f"secure_min_sum must be >= 0 and needs secure aggregation, got "
                             f"{secure_min_sum}")
        self.secure_min_sum = int(secure_min_sum)
        self._state_shapes = dict(self.expected_shapes)
        if outer is not None:
            self._state_shapes.update(outer.state_shapes(self.expected_shapes))
        self.max_rounds_ahead = max_rounds_ahead
        self.max_peers_per_round = max_peers_per_round
        self._clock = clock
        self._run_blocking = run_blocking or _to_thread
        self._ef = ErrorFeedback(codec)
        self._max_payload = max_payload_bytes(self.expected_shapes)
        if self.secure is not None:
            self._max_payload = masked_bound(sum(math.prod(s) for s in
                                                 self.expected_shapes.values()))
        self._max_state = max_payload_bytes(self._state_shapes)
        self._intake = ManifestIntake(
            peer_id=self.peer_id, swarm=swarm, base_model=self.base_model, lora=self.lora,
            rule=self.rule_name, max_payload=self._max_payload,
            max_rounds_ahead=max_rounds_ahead, max_peers_per_round=max_peers_per_round,
            allowed_senders=allowed_senders, clock=clock,
            codecs=None if self.secure is None else frozenset({MASKED_CODEC}),
            max_age_s=max(3600.0, 4 * self.round_timeout_s) if max_age_s is None else max_age_s)
        self._secagg = SecAggIntake(
            peer_id=self.peer_id, swarm=swarm, rule=self.rule_name,
            max_rounds_ahead=max_rounds_ahead, max_peers=max_peers_per_round,
            allowed_senders=allowed_senders, clock=clock, max_age_s=self._intake.max_age_s)
        self._fetcher = PayloadFetcher(transport, fetch_timeout_s=self.fetch_timeout_s,
                                       max_parallel_fetches=max_parallel_fetches)
        self._served = ServedRounds()
        self._rng = random.Random()
        self._round = initial_round
        self._set_state(initial_round, initial_adapter)
        self._running = False
        self._exchanging = False

    # --- public API ----------------------------------------------------------------------

    @property
    def round(self) -> int:
        """The round the held adapter starts: the next round this node takes part in."""
        return self._round

    @property
    def adapter(self) -> dict[str, np.ndarray]:
        """The held global adapter G_round (name -> float32; do not modify)."""
        return self._adapter

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The held global state: the adapter plus the outer optimizer's tensors (if any)."""
        return self._state

    @property
    def adapter_sha256(self) -> str:
        """Hex SHA-256 of the held global state (state_hash.adapter_sha256): the adapter's
        own hash without an outer optimizer, adapter and optimizer state with one."""
        return self._digest.hex()

    @property
    def view(self):
        """The swarm view (rounds/view.py): signed claims of who holds which adapter."""
        return self._intake.view

    @property
    def incompatible_peers(self) -> set[str]:
        """Peers whose own valid messages we refuse as incompatible (another swarm, base model,
        LoRA config, rule or codec, or off our allow-list): they cannot federate with us."""
        return set(self._intake.incompatible)

    @property
    def republish_period_s(self) -> float:
        """Seconds between our republishes now: republish_interval_s, longer in a large swarm
        (serving.republish_period)."""
        return republish_period(self.republish_interval_s,
                                self._intake.view.signers(exclude=self.peer_id))

    @property
    def settle_window_s(self) -> float:
        """Longest wait for the best record's acknowledgements now: settle_s, scaled like the
        republish period (serving.republish_period: x members / 8 beyond 8 other members, at
        most 30 s). Each contributor's ack is a gossip message that a starved process may take
        seconds to send; with 32 nodes on 2 cores a fixed 5 s let nodes adopt a record before
        the best one's acks arrived (5-10 different adapters after a round, healed only by the
        next round's catch-up). The wait ends as soon as every contributor has acknowledged."""
        return republish_period(self.settle_s, self._intake.view.signers(exclude=self.peer_id))

    @property
    def error_feedback(self) -> ErrorFeedback:
        """The error-feedback state of our payloads (its `residual` is what a resumed node
        restores)."""
        return self._ef

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve payloads and adapters, consume gossip and republish until cancelled (or until
        the transport's message channel closes). Reports started once it serves payloads."""
        self.transport.set_payload_provider(self._served.serve)
        self.transport.set_gossip_validator(self._relayable)   # relay only what we accept
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(republish_loop, self.transport, self._served,
                                   lambda: self.republish_period_s, self.fetch_timeout_s)
                task_status.started()
                async for msg in self.transport.messages():
                    if bytes(msg.data[:4]) == SECAGG_MAGIC:
                        self._secagg.on_gossip(msg.from_peer, msg.data)
                    else:
                        self._intake.on_gossip(msg.from_peer, msg.data)
                log.info("gossip channel closed; coordinator stops")
                nursery.cancel_scope.cancel()
        finally:
            self._running = False

    def _relayable(self, from_peer: str, data: bytes) -> bool:
        if bytes(data[:4]) == SECAGG_MAGIC:
            return self.secure is not None and self._secagg.relayable(from_peer, data)
        return self._intake.relayable(from_peer, data)

    async def exchange(self, round: int, delta: Mapping[str, np.ndarray],
                       tokens: int) -> RoundResult:
        """Run round `round` (>= self.round; the held adapter is its base) with our `delta`
        (name -> float32, expected shapes) trained on `tokens` tokens (int >= 1, our FedAvg
        weight). Returns within about round_timeout_s + settle_s (plus the fetches a record
        we adopt needs); the coordinator then holds G_{round+1}.

        Raises ValueError (bad round, tokens or delta; rounds must increase), RuntimeError
        (run() not started, or another exchange in progress) and SwarmMovedOn (the swarm's
        head is SERVED_ROUNDS or more rounds ahead, or it left our base meanwhile: catch up
        instead; its subclass NoRecordAdopted: in a large swarm no record could be checked and
        ours would be below the quorum); with secure
        aggregation, RoundAbandoned (too few members or survivors: nothing was revealed; the
        round passed empty, the node holds G_{round+1} = G_round). Other peer failures never
        raise.
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
        if round < self._round:
            raise ValueError(f"round {round} is before the held adapter's round {self._round}")
        if type(tokens) is not int or not 1 <= tokens <= MAX_TOKENS:
            raise ValueError(f"tokens must be an int in [1, {MAX_TOKENS}], got {tokens!r}")
        if set(delta) != set(self.expected_shapes) or any(
                tuple(np.shape(delta[k])) != s for k, s in self.expected_shapes.items()):
            raise ValueError("delta keys/shapes differ from expected_shapes")
        head = self._head()
        if head is not None and head.round >= round + SERVED_ROUNDS:
            raise SwarmMovedOn(round, head.round)
        self._exchanging = True
        try:
            if self.secure is not None:
                return await self._secure_exchange(round, delta, tokens)
            return await self._exchange(round, delta, tokens)
        finally:
            self._exchanging = False

    async def follow(self, round: int) -> RoundResult | None:
        """Take part in round `round` (>= self.round) without an update of ours (e.g. after
        local training diverged): wait up to 2 x round_timeout_s (peers may run to their own
        deadline first) for the swarm's round records, adopt the best that recomputes, hold
        G_{round+1}. Returns None (holding G_round still)
        when none arrived or none recomputed. Raises like `exchange`."""
        if not self._running:
            raise RuntimeError("start RoundCoordinator.run in a nursery before follow")
        if self._exchanging:
            raise RuntimeError("an exchange is already in progress")
        if type(round) is not int or round < self._round:
            raise ValueError(f"round {round!r} is before the held adapter's round {self._round}")
        self._exchanging = True
        try:
            sent0, received0 = self.transport.bytes_sent, self.transport.bytes_received
            base = self._state
            ex = _Exchange(self._intake.enter(round), self._digest)
            self._served.enter(round)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch, self._intake.open(round, ex.base),
                                       nursery, ex)
                    with trio.move_on_after(2 * self.round_timeout_s):
                        while not ex.records:
                            await ex.changed.wait()
                    adopted = await self._agree(round, base, ex, contribute=False)
                    nursery.cancel_scope.cancel()
            finally:
                self._intake.close(round)
            if adopted is None:
                log.warning("round %d: no round record of the swarm could be adopted; holding "
                            "round %d's adapter", round, round)
                return None
            return self._finish(round, ex, *adopted, sent0, received0)
        finally:
            self._exchanging = False

    async def announce(self) -> None:
        """Publish what we serve (our claim of the adapter we hold, manifests) once now rather
        than at the next republish period. For a node about to leave: a straggler that syncs
        straight to the final round would otherwise exit before its first republish, and its
        peers would never learn that it holds their adapter. Bounded by fetch_timeout_s per
        message; failures are logged, not raised (serving.publish)."""
        await publish_served(self.transport, self._served, self.fetch_timeout_s)

    async def catch_up(self) -> SyncResult | None:
        """Move to the swarm's head if we are behind it or on a fork with fewer signers
        (view.py): fetch the head adapter by digest from a signer (connected ones first) and
        check it. The head is the highest round claimed by at least 2 signers (1 when we know
        only one). Returns None when we are at the head (or no signer served it; logged).
        Call between exchanges, never during one."""
        if self._exchanging:
            raise RuntimeError("catch_up during an exchange")
        head = self._sync_target()
        if head is None:
            return None
        log.info("the swarm is at round %d (adapter %s…, %d signer(s)); we hold round %d (%s…): "
                 "syncing", head.round, head.digest.hex()[:16], len(head.signers), self._round,
                 self._digest.hex()[:16])
        request = encode_state_request(head.round, head.digest)
        sources = list(head.signers)
        self._rng.shuffle(sources)
        connected = set(self.transport.connected_peers())
        sources.sort(key=lambda p: p not in connected)       # peers we can reach first
        for source in sources[:4]:
            adapter = await self._fetch_state(source, request, head.digest)
            if adapter is not None:
                self._set_state(head.round, adapter)
                self._intake.enter(head.round)   # buffer the head round's records from now on
                # Republish the head's record, not the one we had adopted: that is our claim
                # of the head to every view. Republishing the old record kept claiming the
                # adapter we left, so peers' views went stale and nodes synced back and forth
                # (32 nodes: 2 of them stuck on the side the other 30 had left).
                rec = self._intake.record_for(head.round - 1, head.digest, swarm=self.swarm,
                                              base_model=self.base_model, rule=self.rule_name,
                                              lora=self.lora)
                self._served.records = {} if rec is None else {rec.round: rec.data}
                return SyncResult(head.round, self._adapter, head.digest.hex(), source,
                                  len(head.signers))
        log.warning("round %d: no signer served adapter %s…; staying at round %d", head.round,
                    head.digest.hex()[:16], self._round)
        return None

    def _sync_target(self):
        """The head catch_up would move us to (behind it, or on a fork of our round with fewer
        signers), else None."""
        head = self._head()
        if head is None or head.round < self._round:
            return None
        if head.round == self._round:
            if head.digest == self._digest:
                return None
            ours = len(self._intake.view.support(self._round, self._digest,
                                                 exclude=self.peer_id)) + 1
            if (ours, head.digest) > (len(head.signers), self._digest):
                return None                          # we are on the better-supported side
        return head

    async def _watch_for_a_better_fork(self, round: int, moved: list) -> None:
        """While round `round` collects: every republish period, check whether the swarm has
        left our base (a head of >= 2 signers that catch_up would move us to: the majority
        adopted another record of the last round, or finished this one on another base). Our
        update can then never reach the quorum (peers refuse updates of another base), so
        waiting out the round deadline only delays the re-sync: append the head to `moved`
        and end the wait (the exchange raises SwarmMovedOn and the caller catches up)."""
        while True:
            await trio.sleep(self.republish_period_s)
            head = self._sync_target()
            if head is not None and len(head.signers) >= 2:
                moved.append(head)
                return

    def _head(self):
        # One signer alone is not trusted while others exist (a fast peer, or a liar).
        view = self._intake.view
        quorum = 2 if view.signers(exclude=self.peer_id) >= 2 else 1
        head = view.head(exclude=self.peer_id, min_signers=quorum)
        if head is None and quorum == 2 and not view.support(self._round, self._digest,
                                                             exclude=self.peer_id):
            # Nobody else holds our adapter and no adapter has two signers: the swarm split
            # into lone forks (rounds closed at their deadline with the few updates each node
            # had). Lone forks of our own round merge onto the smallest digest, which every
            # lone node computes alike; we are no worse off trusting one signer than our own
            # lone adapter, and a lone claim of a later round still cannot pull us ahead.
            head = view.best_at(self._round, exclude=self.peer_id)
        return head

    def buffered(self, round: int) -> list[str]:
        """Senders (sorted) of valid manifests held for `round` (for tests and status)."""
        return self._intake.buffered(round)

    # --- one round -----------------------------------------------------------------------

    async def _exchange(self, round: int, delta: Mapping[str, np.ndarray],
                        tokens: int) -> RoundResult:
        sent0, received0 = self.transport.bytes_sent, self.transport.bytes_received
        base, base_digest = self._state, self._digest
        payload, own = await self._run_blocking(functools.partial(self._ef.compress, delta))
        sha = hashlib.sha256(payload).digest()
        manifest = UpdateManifest(
            swarm=self.swarm, round=round, base_model=self.base_model, lora=self.lora,
            sender=self.peer_id, tokens=tokens, codec=self.codec.wire_name, payload_sha256=sha,
            payload_size=len(payload), base_adapter=base_digest, issued_at=int(self._clock()),
            rule=self.rule_name)
        data = encode_manifest(manifest, self.key_pair)
        ex = _Exchange(self._intake.enter(round), base_digest)
        ex.buffered_at_entry = sum(1 for sender, b in ex.intake.manifests
                                   if b == base_digest and sender != self.peer_id)
        ex.contributions[self.peer_id] = Contribution(self.peer_id, tokens, own)
        ex.manifests[self.peer_id] = ManifestSeen(manifest, data)
        self._served.enter(round)
        self._served.payloads[(round, sha)] = payload        # serve before announcing
        self._served.manifests[round] = data
        log.info("round %d: publishing update (%d bytes, %d tokens, %d manifests buffered)",
                 round, len(payload), tokens, len(ex.intake.manifests))
        moved: list = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch, self._intake.open(round, base_digest),
                                   nursery, ex)
                with trio.move_on_after(self.round_timeout_s) as deadline:
                    await publish(self.transport, data, round, self.fetch_timeout_s)
                    self._check_enough(ex)
                    async with trio.open_nursery() as waiting:
                        async def watch():
                            await self._watch_for_a_better_fork(round, moved)
                            waiting.cancel_scope.cancel()
                        waiting.start_soon(watch)
                        await ex.enough.wait()
                        waiting.cancel_scope.cancel()
                if moved and not ex.records:
                    nursery.cancel_scope.cancel()
                else:
                    moved.clear()
                    self._log_close(round, ex, deadline.cancelled_caught)
                    adopted = await self._agree(round, base, ex)
                    nursery.cancel_scope.cancel()   # stragglers' fetches are not needed
        finally:
            self._intake.close(round)               # late messages for this round: ignored
        if moved:
            head = moved[0]
            log.info("round %d: the swarm left our base (round %d, adapter %s…, %d signers): "
                     "our update is dropped", round, head.round, head.digest.hex()[:16],
                     len(head.signers))
            raise SwarmMovedOn(round, head.round)
        if adopted is None:
            held, quorum = len(ex.contributions), self._record_quorum()
            log.warning("round %d: no round record of the swarm could be checked, and ours "
                        "would hold %d of the quorum's %d updates (a lone fork): catching up "
                        "instead of proposing", round, held, quorum)
            raise NoRecordAdopted(round, held, quorum)
        return self._finish(round, ex, *adopted, sent0, received0)

    async def _secure_exchange(self, round: int, delta: Mapping[str, np.ndarray],
                               tokens: int) -> RoundResult:
        sent0, received0 = self.transport.bytes_sent, self.transport.bytes_received
        ex = _Exchange(self._intake.enter(round), self._digest)
        self._secagg.enter(round)
        self._served.enter(round)
        secure = SecureRound(self, round, ex, delta, tokens)
        abandoned: RoundAbandoned | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch, self._intake.open(round, ex.base), nursery,
                                   ex, secure.fetch_one)
                try:
                    record, aggregate, adapter, _ = await secure.run()
                except RoundAbandoned as e:
                    abandoned = e
                nursery.cancel_scope.cancel()
        finally:
            self._intake.close(round)
            self._secagg.close(round)
        if abandoned is not None:
            # The round passes empty (G_{r+1} = G_r, the same bits on every node that abandons
            # it): the next round's keys are fresh and its messages never mix with this one's.
            log.warning("round %d: secure aggregation abandoned: %s", round, abandoned.reason)
            self._set_state(round + 1, self._state)
            raise abandoned
        return self._finish(round, ex, record, aggregate, adapter, sent0, received0)

    def _finish(self, round: int, ex: _Exchange, record: RoundRecord, aggregate: dict,
                adapter: dict, sent0: int, received0: int) -> RoundResult:
        """Hold the adopted record's adapter, republish the record, report the round."""
        self._served.records = {round: record.data}
        self._set_state(round + 1, adapter)
        contributors = record.contributors
        included = self.peer_id in contributors
        if not included and self.peer_id in ex.manifests:
            log.warning("round %d: our update came too late for the record the swarm adopted "
                        "(proposer %s); it is dropped", round, record.proposer)
        log.info("round %d: aggregated %d updates (%s) per the record of %s, %d rejected", round,
                 len(contributors), ", ".join(p[-8:] for p in contributors),
                 "ours" if record.proposer == self.peer_id else record.proposer,
                 len(ex.intake.rejected))
        return RoundResult(round=round, aggregate=aggregate, adapter=self._adapter,
                           adapter_sha256=self._digest.hex(), contributors=contributors,
                           included=included, proposer=record.proposer,
                           rejected=list(ex.intake.rejected),
                           bytes_sent=self.transport.bytes_sent - sent0,
                           bytes_received=self.transport.bytes_received - received0)

    def _log_close(self, round: int, ex: _Exchange, deadline: bool) -> None:
        got = len(ex.contributions) - 1
        if ex.records:
            log.info("round %d: a peer's round record arrived with %d of our %d peer update(s) "
                     "in", round, got, self.min_peers)
        elif deadline and got:
            log.warning("round %d: deadline (%.1f s) with %d of %d peer updates; proposing "
                        "those", round, self.round_timeout_s, got, self.min_peers)
        elif deadline:
            log.warning("round %d: deadline (%.1f s) with no valid peer update; proposing our "
                        "own delta alone", round, self.round_timeout_s)

    async def _agree(self, round: int, base: Mapping[str, np.ndarray], ex: _Exchange, *,
                     contribute: bool = True, verify: Callable | None = None,
                     own: tuple[RoundRecord, dict, dict] | None = None
                     ) -> tuple[RoundRecord, dict, dict] | None:
        """Propose unless a record came first (or we do not contribute), settle, adopt the
        best record that recomputes (agreement.py). Returns (record, aggregate, new adapter);
        None when not contributing and no record recomputed, or when contributing in a large
        swarm where none recomputed and ours would fall below the quorum. verify: how a record is
        recomputed (default `_verify`); own: our proposal when already published (secure
        rounds)."""
        verify = verify or self._verify
        quorum = self._record_quorum()
        if contribute and own is None and not ex.records:
            await self._stagger_proposal(round, ex)
        if contribute and own is None and not ex.records:
            own = await self._propose(round, base, ex)
        if not ex.records:
            return None
        with trio.move_on_after(self.settle_window_s):
            while not acknowledged(ranked(ex.records, quorum)[0], ex.authors, self.peer_id):
                await ex.changed.wait()
        if quorum is not None:
            # Records at the quorum differ by rank alone: a contributor that ranks better than
            # the best record's proposer and has not spoken may still be proposing (a slow
            # node proposes late). It gets as long as a follower waits for a record; the
            # others' acks cannot change the choice. (32 loaded nodes: the window above ended
            # before such records arrived, and 9-16 nodes of a round adopted the loser.)
            with trio.move_on_after(self._follow_wait_s(0)):
                while True:
                    best = ranked(ex.records, quorum)[0]
                    if len(best.updates) < quorum or not outranking(best, ex.authors,
                                                                     self.peer_id):
                        break
                    await ex.changed.wait()
        # Re-ranked after every check: a better record that arrived while we recomputed
        # another is checked and adopted first (under load a check takes seconds, and adopting
        # the record we had been checking split rounds).
        checked: dict[bytes, tuple[dict, dict] | None] = {}
        while True:
            left = [r for r in ranked(ex.records, quorum)
                    if checked.get(r.data, _UNCHECKED) is not None]
            if not left:
                break
            record = left[0]
            if own is not None and record is own[0]:
                return own
            if record.data not in checked:
                checked[record.data] = await verify(round, base, record, ex)
                continue
            # The ack: only contributors' acks are waited for (agreement.acknowledged), so a
            # follower leaves it to the republish loop (N followers acking at once would be N^2
            # deliveries per round in a large swarm).
            if self.peer_id in record.contributors:
                await publish(self.transport, record.data, round, self.fetch_timeout_s)
            return (record, *checked[record.data])
        if own is None and contribute:               # every peer record failed to recompute
            if quorum is not None and len(ex.contributions) < quorum:
                return None     # a lone fork below the quorum: the caller catches up instead
            own = await self._propose(round, base, ex)
        return own

    def _record_quorum(self) -> int | None:
        """The contributor count at which records tie on size (agreement.ranked): our quorum
        (min_peers + 1) in a swarm of more than STAGGER_FROM other members, where only the
        best-ranked contributors propose; None (no cap: most contributors win) below it."""
        if self._intake.view.signers(exclude=self.peer_id) > STAGGER_FROM:
            return self.min_peers + 1
        return None

    async def _stagger_proposal(self, round: int, ex: _Exchange) -> None:
        """Before proposing in a large swarm, let the best-ranked contributors go first. In a
        large swarm many nodes reach the quorum within seconds; each proposing its own set made
        nodes adopt different records under load (32 nodes: 9 different adapters after one
        round; with a 5 s stagger by rank still 6). So beyond STAGGER_FROM other members only
        the PROPOSERS best-ranked contributors we hold (proposer rank, the tie-break agreement
        uses) propose, PROPOSAL_SPREAD_S / PROPOSERS apart; every other node waits for a
        record and adopts it, and proposes only if none came (liveness when the first ranks
        are slow or gone): after FOLLOW_WAIT_S plus a settle window per rank past PROPOSERS,
        at most a quarter of the round timeout. A record
        arriving ends any wait. Small swarms settle within settle_s as they are: no wait."""
        members = self._intake.view.signers(exclude=self.peer_id)
        if members <= STAGGER_FROM:
            return
        # Rank among the contributions we hold, not every manifest seen: a sender that
        # announces an update and never serves it must not hold our proposal back.
        mine = proposer_rank(ex.base, round, self.peer_id)
        position = sum(1 for pid in ex.contributions
                       if pid != self.peer_id and proposer_rank(ex.base, round, pid) < mine)
        if ex.buffered_at_entry >= self.min_peers:
            # A straggler: the quorum's updates were in before we had trained, so the round's
            # first proposers have most likely published already, and their records are still
            # on their way to us. Proposing at our rank's turn regardless let a slow node's
            # better-ranked record land after part of the swarm had adopted an earlier one
            # (32 loaded nodes: 9-16 nodes of a round on the losing side). We follow instead;
            # our fallback proposal keeps the round live if no record comes.
            position = max(position, PROPOSERS)
        if position < PROPOSERS:
            wait = PROPOSAL_SPREAD_S * position / PROPOSERS
        else:
            # The followers' fallback is staggered by rank too, a settle window apart: when
            # none of the best-ranked proposes in time (they may be the stragglers, still
            # training or catching up), the first follower's record reaches the others before
            # their own turn. (32 processes on 2 cores: 16 followers waited out the same
            # FOLLOW_WAIT_S and proposed 16 records in one round.)
            wait = self._follow_wait_s(position - PROPOSERS)
        if wait <= 0:
            return
        with trio.move_on_after(wait):
            while not ex.records:
                await ex.changed.wait()

    def _follow_wait_s(self, turn: int) -> float:
        """Seconds a follower of turn `turn` (0: the first after the PROPOSERS) waits for a
        record before proposing itself: FOLLOW_WAIT_S plus a settle window per turn, at most a
        quarter of the round timeout."""
        return min(FOLLOW_WAIT_S + turn * self.settle_window_s, self.round_timeout_s / 4)

    async def _propose(self, round: int, base: Mapping[str, np.ndarray],
                       ex: _Exchange) -> tuple[RoundRecord, dict, dict]:
        contributions = sorted(ex.contributions.values(), key=lambda c: c.peer_id)
        aggregate, adapter = await self._run_blocking(
            functools.partial(self._apply, round, base, contributions))
        record = encode_record(
            swarm=self.swarm, round=round, base_model=self.base_model, lora=self.lora,
            rule=self.rule_name, base_adapter=ex.base,
            new_adapter=adapter_digest(adapter), issued_at=int(self._clock()),
            update_bytes=[ex.manifests[c.peer_id].data for c in contributions],
            key_pair=self.key_pair)
        ex.records.append(record)
        await publish(self.transport, record.data, round, self.fetch_timeout_s)
        return record, aggregate, adapter

    def _apply(self, round: int, base: Mapping[str, np.ndarray],
               contributions: list[Contribution]) -> tuple[dict, dict]:
        """(aggregate, next global state) of `contributions` on global state `base`."""
        aggregate = self.aggregation.aggregate(round, contributions)
        if self.outer is not None:
            return aggregate, self.outer.step(base, aggregate)
        return aggregate, {k: (base[k] + aggregate[k]).astype(np.float32) for k in base}

    async def _verify(self, round: int, base: Mapping[str, np.ndarray], record: RoundRecord,
                      ex: _Exchange) -> tuple[dict, dict] | None:
        """Recompute `record` from its updates (fetching the payloads we lack, all at once up
        to max_parallel_fetches, within round_timeout_s); the (aggregate, adapter) if its new
        adapter digest matches, else None (rejection filed)."""
        got: dict[str, Contribution] = {}
        missing: list[UpdateManifest] = []
        for m in record.updates:
            held = ex.contributions.get(m.sender)
            if held is not None and ex.manifests[m.sender].manifest.payload_sha256 == \
                    m.payload_sha256:
                got[m.sender] = Contribution(m.sender, m.tokens, held.delta)
            elif (m.sender, m.payload_sha256) in ex.fetched:     # fetched for another record
                got[m.sender] = Contribution(m.sender, m.tokens,
                                             ex.fetched[(m.sender, m.payload_sha256)])
            elif m.sender == self.peer_id:
                # An update we published earlier in this round, on this base (before a
                # catch-up moved us away and back): ours, signed, still served. Refusing
                # such records made nodes that synced back and forth propose lone forks.
                earlier = self._served.payloads.get((m.round, m.payload_sha256))
                if earlier is None:
                    ex.intake.reject(record.proposer, "round record names an update of ours "
                                     "that we did not send this round")
                    return None
                delta = await self._run_blocking(functools.partial(
                    decode_update, earlier, expected_shapes=self.expected_shapes,
                    max_bytes=m.payload_size, codec=m.codec))
                got[m.sender] = Contribution(m.sender, m.tokens, delta)
            else:
                missing.append(m)
        # Ask the record's proposer and the peers that adopted it first (they hold every
        # payload it names), again after transient failures, and all payloads side by side:
        # under load a check that fetched 20 payloads one by one, giving up after one pass
        # each, took tens of minutes or refused the best record, and split the round.
        holders = (record.proposer, *sorted(ex.record_authors.get(record.data, ())))
        unfetched: list[str] = []
        with trio.move_on_after(self.round_timeout_s):
            async with trio.open_nursery() as nursery:
                async def fetch(m: UpdateManifest) -> None:
                    delta = await self._fetch_decoded(m, ex, retries=VERIFY_FETCH_RETRIES,
                                                      prefer=holders)
                    if delta is None:
                        unfetched.append(m.sender)
                        nursery.cancel_scope.cancel()      # the record cannot be checked
                        return
                    ex.fetched[(m.sender, m.payload_sha256)] = delta
                    got[m.sender] = Contribution(m.sender, m.tokens, delta)
                for m in missing:
                    nursery.start_soon(fetch, m)
            if unfetched:
                ex.intake.reject(record.proposer, f"round record: update of {unfetched[0]} "
                                 "could not be fetched to check it")
                return None
            contributions = [got[m.sender] for m in record.updates]
            aggregate, adapter = await self._run_blocking(
                functools.partial(self._apply, round, base, contributions))
            if adapter_digest(adapter) != record.new_adapter:
                ex.intake.reject(record.proposer, "round record's new adapter does not "
                                 "recompute from its updates")
                return None
            return aggregate, adapter
        ex.intake.reject(record.proposer, "round record: checking it timed out")
        return None

    async def _dispatch(self, inbox: trio.MemoryReceiveChannel, nursery: trio.Nursery,
                        ex: _Exchange, fetch_one: Callable | None = None) -> None:
        """Start one fetch per accepted manifest (`fetch_one(seen)`, default `_fetch_one`)
        and file each record, in the exchange's nursery, until intake closes the round (or
        the exchange cancels the nursery)."""
        async with inbox:
            async for item in inbox:
                if isinstance(item, RecordSeen):
                    ex.records.append(item.record)
                    ex.authors.update({item.author, item.record.proposer})
                    ex.record_authors.setdefault(item.record.data, set()).add(item.author)
                    ex.enough.set()                  # a peer closed the round: stop collecting
                    ex.poke()
                elif fetch_one is not None:
                    nursery.start_soon(fetch_one, item)
                else:
                    nursery.start_soon(self._fetch_one, ex, item)

    async def _fetch_decoded(self, m: UpdateManifest, ex: _Exchange, *, retries: int = 0,
                             prefer: tuple[str, ...] = ()) -> dict | None:
        """Fetch, verify and decode one peer's update; failures become rejections (None).
        retries: times a payload that no source served (each only timed out, was unreachable
        or lacked it: FetchFailed.transient) is asked for again, after a pause of
        FETCH_RETRY_PAUSE_S (x 0.5-1.5): on a loaded machine or link a sender that answers no
        stream for a minute usually answers later, and an update rejected for it is lost to
        the round (and the records that name it cannot be checked). prefer: peers asked
        right after the sender (PayloadFetcher.fetch)."""
        failed: str | None = None
        try:
            for attempt in range(retries + 1):
                try:
                    data, source = await self._fetcher.fetch(m, prefer)
                    break
                except FetchFailed as e:
                    if attempt == retries or not e.transient:
                        ex.intake.reject(m.sender, e.reason)
                        return None
                    failed = e.reason
                    log.info("round %d: payload of %s not served yet (%s); asking again "
                             "(%d/%d)", m.round, m.sender, e.reason, attempt + 1, retries)
                    await trio.sleep(FETCH_RETRY_PAUSE_S * self._rng.uniform(0.5, 1.5))
        except trio.Cancelled:
            # The round closed while we were still asking; unless another fetch of the same
            # payload (a record's check) got it meanwhile.
            if failed is not None and (m.round, m.payload_sha256) not in self._served.payloads:
                ex.intake.reject(m.sender, f"{failed} (still unserved when the round closed)")
            raise
        try:
            # The bytes match the signed manifest: a decode failure is the sender's doing.
            delta = await self._run_blocking(functools.partial(
                decode_update, data, expected_shapes=self.expected_shapes,
                max_bytes=m.payload_size, codec=m.codec))
        except CodecError as e:
            ex.intake.reject(m.sender, f"bad payload: {e}")
            return None
        self._served.payloads[(m.round, m.payload_sha256)] = data   # relay it for peers behind us
        log.info("round %d: update from %s accepted (%d bytes, %d tokens, via %s)", m.round,
                 m.sender, len(data), m.tokens, "sender" if source == m.sender else source)
        return delta

    async def _fetch_one(self, ex: _Exchange, seen: ManifestSeen) -> None:
        m = seen.manifest
        delta = await self._fetch_decoded(m, ex, retries=FETCH_RETRIES)
        if delta is None:
            return
        ex.contributions[m.sender] = Contribution(m.sender, m.tokens, delta)
        ex.manifests[m.sender] = seen
        self._check_enough(ex)

    def _check_enough(self, ex: _Exchange) -> None:
        if len(ex.contributions) - 1 >= self.min_peers:
            ex.enough.set()

    # --- the held adapter ----------------------------------------------------------------

    def _set_state(self, round: int, state: Mapping[str, np.ndarray]) -> None:
        """Hold G_round (adapter tensors, plus the outer optimizer's: zeros where `state`
        lacks them, as at the start) and serve it to peers that sync (raw float32: lossless)."""
        self._round = round
        self._state = {k: np.asarray(state[k], np.float32) if k in state
                       else np.zeros(s, np.float32) for k, s in self._state_shapes.items()}
        self._adapter = {k: self._state[k] for k in self.expected_shapes}
        self._digest = adapter_digest(self._state)
        self._intake.view.note(self.peer_id, round, self._digest)
        payload, _ = encode_update(self._state, codec=RawCodec())
        self._served.states = {k: v for k, v in self._served.states.items() if k[0] >= round - 1}
        self._served.states[(round, self._digest)] = payload

    async def _fetch_state(self, source: str, request: bytes, digest: bytes) -> dict | None:
        try:
            data = await self.transport.fetch(source, request, max_bytes=self._max_state,
                                              timeout_s=self.fetch_timeout_s)
            adapter = await self._run_blocking(functools.partial(
                decode_update, data, expected_shapes=self._state_shapes,
                max_bytes=self._max_state, codec=RawCodec.wire_name))
        except (FetchError, CodecError) as e:
            log.warning("state from %s: %s", source, e)
            return None
        if adapter_digest(adapter) != digest:
            log.warning("state from %s does not match the digest it claimed; ignored", source)
            return None
        return adapter
