"""Gossip intake: validate manifests and round records, buffer them per round, hand the active
round's to its exchange over a trio memory channel, and keep the swarm view (view.py).

A manifest is accepted for round r if it decodes and verifies (signature by its sender), is
not ours, is fresh (issued_at within [now - max_age_s, now + max_skew_s]), r lies in the window
[floor, floor + max_rounds_ahead], its (sender, base adapter) is new for r, fewer than
max_peers_per_round were seen for r, and it is compatible: same swarm, base model, LoRA config,
a codec we decode, a payload size within the bound of our shapes, a sender on the allow-list
when there is one. A round record is accepted likewise (its proposer's signature, every update
in it verified, the same aggregation rule, every contributor allowed). Valid messages of any
later round are still evidence for the swarm view (a node that is behind learns the head from
them). Every refusal is filed as a rejection of round r with a reason and a rate-limited log
line; nothing raises.

Logger: "bitswarm.federation.rounds.intake".
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from bitswarm.federation.codecs import CODECS
from bitswarm.federation.log_limit import RateLimitedLog, reason_key
from bitswarm.federation.round_record import RECORD_MAGIC, RoundRecord, decode_record
from bitswarm.federation.transport import IGNORE
from bitswarm.federation.wire import (Incompatible, UpdateManifest, WireError, check_compatible,
                                      decode_manifest)

from .view import SwarmView

log = logging.getLogger("bitswarm.federation.rounds.intake")
_LOG = RateLimitedLog(log)     # peers choose how often these fire

_MAX_REJECTIONS_PER_ROUND = 1024      # bounds memory against a flood of distinct bad messages
_VERIFIED_CACHE = 4096                # manifests whose signature was checked (records embed them)
_RECORD_CACHE = 256                   # verified records: acks and republishes repeat the bytes


@dataclass(frozen=True)
class ManifestSeen:
    """A valid manifest and its signed bytes (a round record re-embeds them)."""

    manifest: UpdateManifest
    data: bytes


@dataclass(frozen=True)
class RecordSeen:
    """A valid round record, gossiped by `author` (its proposer, or a peer that adopted it)."""

    record: RoundRecord
    author: str


@dataclass
class RoundState:
    """What intake holds for one round: accepted manifests by (sender, base adapter), the keys
    of valid compatible manifests (the dedupe set and the sender slots), records by (author,
    record hash), and the rejections (peer ID, reason)."""

    round: int
    manifests: dict[tuple[str, bytes], ManifestSeen] = field(default_factory=dict)
    settled: set[tuple[str, bytes]] = field(default_factory=set)
    records: dict[tuple[str, bytes], RecordSeen] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, peer: str, reason: str) -> None:
        """File one rejection (deduped, reason cut to 300 chars, at most 1024 per round)."""
        entry = (peer, reason[:300])
        if entry in self.rejected or len(self.rejected) >= _MAX_REJECTIONS_PER_ROUND:
            return
        self.rejected.append(entry)
        _LOG.log(logging.WARNING, reason_key("rejected", entry[1]),
                 "round %d: rejected update from %s: %s", self.round, peer, entry[1])


Delivery = ManifestSeen | RecordSeen


class ManifestIntake:
    """Validates and files gossip for a RoundCoordinator (see the module docstring).

    Args:
        peer_id: our base58 peer ID (our own manifests, forwarded back, are skipped).
        swarm, base_model (hex SHA-256), lora (canonical `wire.lora_dict`), rule (aggregation
            rule name): compatibility.
        max_payload: bytes; larger announced payloads are refused.
        max_rounds_ahead, max_peers_per_round: the buffering bounds.
        allowed_senders: peer IDs whose updates may count (None: any); our own always may.
        max_age_s, max_skew_s: freshness window of issued_at, seconds (replay protection).
        clock: unix time in seconds (time.time).
        codecs: the payload codecs accepted (None: every registered one; a secure-aggregation
            swarm accepts only masked inputs).
    """

    def __init__(self, *, peer_id: str, swarm: str, base_model: str, lora: dict, rule: str,
                 max_payload: int, max_rounds_ahead: int, max_peers_per_round: int,
                 allowed_senders: frozenset[str] | None = None, max_age_s: float = 3600.0,
                 max_skew_s: float = 300.0, clock: Callable[[], float] = time.time,
                 codecs: frozenset[str] | None = None) -> None:
        self.peer_id, self.swarm, self.base_model, self.lora = peer_id, swarm, base_model, lora
        self.rule = rule
        self.codecs = codecs               # accepted payload codecs (None: every registered one)
        self.allowed = None if allowed_senders is None else frozenset(allowed_senders) | {peer_id}
        self.max_payload = max_payload
        self.max_rounds_ahead = max_rounds_ahead
        self.max_peers_per_round = max_peers_per_round
        self.max_age_s, self.max_skew_s, self.clock = max_age_s, max_skew_s, clock
        self.view = SwarmView()
        self._floor = 0                     # messages for rounds below this are not buffered
        self._rounds: dict[int, RoundState] = {}
        self._active: RoundState | None = None
        self._active_base: bytes | None = None
        self._outbox: trio.MemorySendChannel[Delivery] | None = None
        self._verified: OrderedDict[bytes, UpdateManifest] = OrderedDict()
        self._records: OrderedDict[bytes, RoundRecord] = OrderedDict()
        # Signers whose own valid messages we refuse as incompatible -> why (the latest): they
        # cannot federate with us, so nothing waits for them (node/runtime.py's linger).
        self.incompatible: dict[str, str] = {}

    @property
    def latest_round_seen(self) -> int | None:
        """Highest round a peer's valid, compatible message claimed (None before the first)."""
        rounds = [r for r, _ in self.view.latest(exclude=self.peer_id).values()]
        return max(rounds) if rounds else None

    def buffered(self, rnd: int) -> list[str]:
        """Senders (sorted) of accepted manifests held for round `rnd`."""
        state = self._rounds.get(rnd)
        return sorted({s for s, _ in state.manifests}) if state else []

    def enter(self, rnd: int) -> RoundState:
        """Make `rnd` the window's floor, drop older rounds; returns round `rnd`'s state."""
        self._floor = rnd
        for r in [r for r in self._rounds if r < rnd]:
            del self._rounds[r]
        return self._state(rnd)

    def open(self, rnd: int, base: bytes) -> trio.MemoryReceiveChannel[Delivery]:
        """Activate round `rnd` trained from the adapter with digest `base`: the channel yields
        its buffered manifests and records of that base, then each one accepted later, until
        `close`. Manifests of another base are rejected (a fork: see the swarm view)."""
        # Each key is delivered at most once and at most max_peers_per_round keys of each kind
        # are settled: the buffer never fills, so intake never waits on the exchange.
        send, recv = trio.open_memory_channel[Delivery](2 * self.max_peers_per_round)
        self._active, self._active_base, self._outbox = self._state(rnd), bytes(base), send
        for m in list(self._active.manifests.values()):
            self._deliver(m)
        for seen in list(self._active.records.values()):
            self._deliver(seen)
        return recv

    def close(self, rnd: int) -> None:
        """End round `rnd`: no more deliveries; its late messages are not buffered from now on."""
        if self._outbox is not None:
            self._outbox.close()
        self._active = self._active_base = self._outbox = None
        self._floor = rnd + 1
        self._rounds.pop(rnd, None)

    def relayable(self, from_peer: str, data: bytes) -> bool:
        """The transport's gossip validator: True for a valid, verified, compatible, fresh
        manifest or record of round floor - 1 or later; IGNORE (falsy: refused, but no score
        penalty for the forwarder) for a valid one of an older round; False for the rest, which
        is then neither delivered nor relayed to the mesh, its rejection filed as `on_gossip`
        would. Never raises on hostile input."""
        try:
            msg = self._decode(data)
        except WireError as e:
            self._reject_unverified(from_peer, e)
            return False
        signer = msg.proposer if isinstance(msg, RoundRecord) else msg.sender
        if signer == self.peer_id:
            return True
        if msg.round < self._floor - 1:
            # Nobody near us needs it any more, but an honest peer a round or two behind
            # still sends it: refused without lowering the forwarder's score.
            return IGNORE
        try:
            self._check(msg)
        except WireError as e:
            if self._floor <= msg.round <= self._floor + self.max_rounds_ahead:
                self._state(msg.round).reject(signer, e.reason)
            else:                                # a closed or far round: logged, not filed
                _LOG.log(logging.WARNING, reason_key("rejected", e.reason),
                         "round %d: rejected message from %s: %s", msg.round, signer, e.reason)
            return False
        return True

    def on_gossip(self, from_peer: str, data: bytes) -> None:
        """Validate one gossip message (signed author `from_peer`) and file it. Never raises
        on hostile input."""
        try:
            msg = self._decode(data)
        except WireError as e:
            self._reject_unverified(from_peer, e)
            return
        if isinstance(msg, RoundRecord):
            self._on_record(from_peer, msg)
        else:
            self._on_manifest(msg, bytes(data))

    # --- manifests and records -----------------------------------------------------------

    def _on_manifest(self, m: UpdateManifest, data: bytes) -> None:
        if m.sender == self.peer_id:
            return                                       # our own manifest, forwarded back
        in_window = self._floor <= m.round <= self._floor + self.max_rounds_ahead
        if not in_window:
            if m.round > self._floor and self._valid(m):
                self._claim(m.sender, m.round, m.base_adapter)    # evidence of a head ahead
            return
        state = self._state(m.round)
        key = (m.sender, m.base_adapter)
        if key in state.settled:
            return                                       # republished: seen
        try:
            self._check(m)                               # refusals take no sender slot
        except WireError as e:
            state.reject(m.sender, e.reason)
            return
        if len(state.settled) >= self.max_peers_per_round:
            _LOG.log(logging.WARNING, "sender cap", "round %d: %d senders already; manifest of "
                     "%s dropped", m.round, len(state.settled), m.sender)
            return
        state.settled.add(key)
        self._claim(m.sender, m.round, m.base_adapter)
        seen = state.manifests[key] = ManifestSeen(m, data)
        log.debug("round %d: manifest from %s (%d tokens)", m.round, m.sender, m.tokens)
        if self._active is state:
            self._deliver(seen)

    def _on_record(self, author: str, rec: RoundRecord) -> None:
        if not self._valid(rec):
            return
        self._claim(rec.proposer, rec.round + 1, rec.new_adapter, via_record=True,
                    inferred=author != rec.proposer)
        if author not in (self.peer_id, rec.proposer):
            self._claim(author, rec.round + 1, rec.new_adapter, via_record=True)
        if not self._floor <= rec.round <= self._floor + self.max_rounds_ahead:
            return
        state = self._state(rec.round)
        key = (author, hashlib.sha256(rec.data).digest())
        if key in state.records or len(state.records) >= self.max_peers_per_round:
            return
        seen = state.records[key] = RecordSeen(rec, author)
        if self._active is state:
            self._deliver(seen)

    def _deliver(self, item: Delivery) -> None:
        if self._outbox is None:
            return
        base = (item.record if isinstance(item, RecordSeen) else item.manifest).base_adapter
        if base != self._active_base:
            if isinstance(item, ManifestSeen):
                self._active.reject(item.manifest.sender, "trained from another adapter (sha256 "
                                    f"{base.hex()[:16]}…, ours {self._active_base.hex()[:16]}…)")
            return
        try:
            self._outbox.send_nowait(item)
        except trio.BrokenResourceError:
            return                               # the exchange is closing the round
        except (trio.WouldBlock, trio.ClosedResourceError):
            _LOG.log(logging.WARNING, "intake full", "round %d: intake buffer full; dropped",
                     self._active.round)

    def _valid(self, msg: UpdateManifest | RoundRecord) -> bool:
        try:
            self._check(msg)
            return True
        except WireError as e:
            signer = msg.proposer if isinstance(msg, RoundRecord) else msg.sender
            _LOG.log(logging.WARNING, reason_key("rejected", e.reason),
                     "round %d: rejected message from %s: %s", msg.round, signer, e.reason)
            return False

    def _check(self, msg: UpdateManifest | RoundRecord) -> None:
        """Admission, compatibility, freshness and bounds of a verified message; raises
        WireError with the reason. Keeps `incompatible` current for the message's signer."""
        signer = msg.proposer if isinstance(msg, RoundRecord) else msg.sender
        try:
            self._check_message(msg)
        except Incompatible as e:
            if e.sender == signer:       # its own update or rule: not one an included peer's
                self.incompatible[signer] = e.reason
            raise
        self.incompatible.pop(signer, None)      # restarted with our config: federates again

    def _check_message(self, msg: UpdateManifest | RoundRecord) -> None:
        now = self.clock()
        if msg.issued_at < now - self.max_age_s:
            raise WireError(f"stale: issued {now - msg.issued_at:.0f} s ago (a replay?)")
        if msg.issued_at > now + self.max_skew_s:
            raise WireError(f"issued {msg.issued_at - now:.0f} s in the future (clock skew?)")
        if isinstance(msg, RoundRecord):
            if msg.rule != self.rule:
                raise Incompatible(f"round record uses aggregation rule {msg.rule!r}, ours is "
                                   f"{self.rule!r}", sender=msg.proposer)
            for m in msg.updates:
                self._check_update(m)
        else:
            self._check_update(msg)

    def _check_update(self, m: UpdateManifest) -> None:
        if self.allowed is not None and m.sender not in self.allowed:
            raise Incompatible("sender not on the allow-list", sender=m.sender)
        check_compatible(m, swarm=self.swarm, base_model=self.base_model, lora=self.lora)
        if m.rule != self.rule:
            raise Incompatible(f"aggregation rule {m.rule!r} (ours is {self.rule!r})",
                               sender=m.sender)
        if self.codecs is not None:
            if m.codec not in self.codecs:
                raise Incompatible(f"codec {m.codec!r} is not accepted here (ours: "
                                   f"{sorted(self.codecs)})", sender=m.sender)
        elif m.codec not in CODECS:
            raise WireError(f"unknown codec {m.codec!r}")
        if m.payload_size > self.max_payload:
            raise WireError(f"payload_size {m.payload_size} exceeds the bound "
                            f"{self.max_payload} for our shapes")

    def record_for(self, rnd: int, new_adapter: bytes, *, swarm: str, base_model: str,
                   rule: str, lora: dict) -> RoundRecord | None:
        """A verified record of round `rnd` of our swarm (same base model, rule and LoRA) that
        produced `new_adapter`, from the recently decoded ones (newest first), or None."""
        for rec in reversed(self._records.values()):
            if (rec.round == rnd and rec.new_adapter == new_adapter and rec.swarm == swarm
                    and rec.base_model == base_model and rec.rule == rule and rec.lora == lora):
                return rec
        return None

    def _claim(self, signer: str, rnd: int, digest: bytes, *, via_record: bool = False,
               inferred: bool = False) -> None:
        self.view.note(signer, rnd, digest, via_record=via_record, inferred=inferred)

    def _decode(self, data: bytes) -> UpdateManifest | RoundRecord:
        if bytes(data[:4]) == RECORD_MAGIC:
            # Every contributor acks a record with the same bytes, and the validator and the
            # consumer both see each delivery: verify each distinct record once.
            key = hashlib.sha256(data).digest()
            rec = self._records.get(key)
            if rec is None:
                rec = decode_record(data, decode_update=self._decode_manifest_cached)
                self._records[key] = rec
                while len(self._records) > _RECORD_CACHE:
                    self._records.popitem(last=False)
            return rec
        # The validator and the consumer both decode each delivery, and republishes repeat
        # it: verify each distinct manifest once.
        return self._decode_manifest_cached(data)

    def _decode_manifest_cached(self, data: bytes) -> UpdateManifest:
        # A record embeds up to 256 manifests, most already verified on their own gossip.
        key = hashlib.sha256(data).digest()
        m = self._verified.get(key)
        if m is None:
            m = decode_manifest(data)
            self._verified[key] = m
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return m

    def _reject_unverified(self, from_peer: str, e: WireError) -> None:
        # Unverified content cannot be pinned on the claimed sender (anyone can forge that),
        # so the gossip author is blamed, under the claimed round if it is one we track.
        rnd = e.round
        if rnd is not None and self._floor <= rnd <= self._floor + self.max_rounds_ahead:
            self._state(rnd).reject(from_peer, e.reason)
        elif self._active is not None:
            self._active.reject(from_peer, e.reason)
        else:
            _LOG.log(logging.INFO, reason_key("invalid gossip", e.reason),
                     "invalid gossip from %s: %s", from_peer, e.reason)

    def _state(self, rnd: int) -> RoundState:
        state = self._rounds.get(rnd)
        if state is None:
            state = self._rounds[rnd] = RoundState(rnd)
        return state
