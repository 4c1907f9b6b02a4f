"""Gossip intake: validate manifests, buffer them per round, hand the active round's to its
exchange over a trio memory channel.

A manifest is accepted for round r if it decodes and verifies (signature by its sender), is
not ours, r lies in the window [floor, floor + max_rounds_ahead] (a peer may be a round or two
ahead), its sender is new for r (republished copies are deduped by (sender, round)), fewer
than max_peers_per_round senders were seen for r, and it is compatible: same swarm, base
model, LoRA config, a codec we decode, a payload size within the bound of our shapes. Every
refusal is filed as a rejection of round r with a reason and a log line; nothing raises.

Logger: "bitswarm.federation.rounds.intake".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from bitswarm.federation.codecs import CODECS
from bitswarm.federation.log_limit import RateLimitedLog, reason_key
from bitswarm.federation.wire import UpdateManifest, WireError, check_compatible, decode_manifest

log = logging.getLogger("bitswarm.federation.rounds.intake")
_LOG = RateLimitedLog(log)     # peers choose how often these fire

_MAX_REJECTIONS_PER_ROUND = 1024      # bounds memory against a flood of distinct bad messages


@dataclass
class RoundState:
    """What intake holds for one round: accepted manifests by sender, every sender judged
    (accepted or refused: the dedupe set), and the rejections (peer ID, reason)."""

    round: int
    manifests: dict[str, UpdateManifest] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, peer: str, reason: str) -> None:
        """File one rejection (deduped, reason cut to 300 chars, at most 1024 per round)."""
        entry = (peer, reason[:300])
        if entry in self.rejected or len(self.rejected) >= _MAX_REJECTIONS_PER_ROUND:
            return
        self.rejected.append(entry)
        _LOG.log(logging.WARNING, reason_key("rejected", entry[1]),
                 "round %d: rejected update from %s: %s", self.round, peer, entry[1])


class ManifestIntake:
    """Validates and files gossip for a RoundCoordinator (see the module docstring).

    Args:
        peer_id: our base58 peer ID (our own manifests, forwarded back, are skipped).
        swarm, base_model (hex SHA-256), lora (canonical `wire.lora_dict`): compatibility.
        max_payload: bytes; larger announced payloads are refused.
        max_rounds_ahead, max_peers_per_round: the buffering bounds.
        allowed_senders: peer IDs whose updates may count (None: any); our own always may.
    """

    def __init__(self, *, peer_id: str, swarm: str, base_model: str, lora: dict,
                 max_payload: int, max_rounds_ahead: int, max_peers_per_round: int,
                 allowed_senders: frozenset[str] | None = None) -> None:
        self.peer_id, self.swarm, self.base_model, self.lora = peer_id, swarm, base_model, lora
        self.allowed = None if allowed_senders is None else frozenset(allowed_senders) | {peer_id}
        self.max_payload = max_payload
        self.max_rounds_ahead = max_rounds_ahead
        self.max_peers_per_round = max_peers_per_round
        self.latest_round_seen: int | None = None   # highest round of a valid, compatible manifest
        self._floor = 0                     # manifests for rounds below this are ignored
        self._rounds: dict[int, RoundState] = {}
        self._active: RoundState | None = None
        self._outbox: trio.MemorySendChannel[UpdateManifest] | None = None

    def buffered(self, rnd: int) -> list[str]:
        """Senders (sorted) of accepted manifests held for round `rnd`."""
        state = self._rounds.get(rnd)
        return sorted(state.manifests) if state else []

    def enter(self, rnd: int) -> RoundState:
        """Make `rnd` the window's floor, drop older rounds; returns round `rnd`'s state."""
        self._floor = rnd
        for r in [r for r in self._rounds if r < rnd]:
            del self._rounds[r]
        return self._state(rnd)

    def open(self, rnd: int) -> trio.MemoryReceiveChannel[UpdateManifest]:
        """Activate round `rnd`: the channel yields its buffered manifests, then each one
        accepted later, every sender once, until `close`."""
        # Every sender is delivered at most once per round, and at most max_peers_per_round
        # senders are settled: the buffer never fills, so intake never waits on the exchange.
        send, recv = trio.open_memory_channel[UpdateManifest](self.max_peers_per_round)
        self._active, self._outbox = self._state(rnd), send
        for m in list(self._active.manifests.values()):
            send.send_nowait(m)
        return recv

    def close(self, rnd: int) -> None:
        """End round `rnd`: no more deliveries; its late manifests are ignored from now on."""
        if self._outbox is not None:
            self._outbox.close()
        self._active = self._outbox = None
        self._floor = rnd + 1
        self._rounds.pop(rnd, None)

    def relayable(self, from_peer: str, data: bytes) -> bool:
        """The transport's gossip validator: True for a valid, verified, compatible manifest of
        a round in the window (or the round just below it, which stragglers still need); false
        for the rest, which is then neither delivered nor relayed to the mesh, its rejection
        filed as `on_gossip` would. No per-sender bookkeeping here (that is on_gossip's, on
        delivery). Never raises on hostile input."""
        try:
            m = decode_manifest(data)
        except WireError as e:
            self._reject_unverified(from_peer, e)
            return False
        if m.sender == self.peer_id:
            return True
        if m.round < self._floor - 1 or m.round > self._floor + self.max_rounds_ahead:
            return False                         # outside what any node near us still needs
        try:
            self._check(m)
        except WireError as e:
            if self._floor <= m.round:
                self._state(m.round).reject(m.sender, e.reason)
            else:                                # a round we closed: refused, logged, not filed
                _LOG.log(logging.WARNING, reason_key("rejected", e.reason),
                         "round %d: rejected update from %s: %s", m.round, m.sender, e.reason)
            return False
        return True

    def _check(self, m: UpdateManifest) -> None:
        """Admission, compatibility and bounds of a verified manifest; raises WireError with the
        reason."""
        if self.allowed is not None and m.sender not in self.allowed:
            raise WireError("sender not on the allow-list")
        check_compatible(m, swarm=self.swarm, base_model=self.base_model, lora=self.lora)
        if m.codec not in CODECS:
            raise WireError(f"unknown codec {m.codec!r}")
        if m.payload_size > self.max_payload:
            raise WireError(f"payload_size {m.payload_size} exceeds the bound "
                            f"{self.max_payload} for our shapes")

    def on_gossip(self, from_peer: str, data: bytes) -> None:
        """Validate one gossip message (signed author `from_peer`) and file it. Never raises
        on hostile input."""
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
            _LOG.log(logging.WARNING, "sender cap", "round %d: %d senders already; manifest of "
                     "%s dropped", m.round, len(state.settled), m.sender)
            return
        state.settled.add(m.sender)
        try:
            self._check(m)
        except WireError as e:
            state.reject(m.sender, e.reason)
            return
        state.manifests[m.sender] = m
        self.latest_round_seen = max(m.round, self.latest_round_seen or 0)
        log.debug("round %d: manifest from %s (%d tokens)", m.round, m.sender, m.tokens)
        if self._active is state and self._outbox is not None:
            self._outbox.send_nowait(m)

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
