"""Gossip intake of secure-aggregation messages (secagg/messages.py: keys, shares, unmask).

A message is accepted for round r if it decodes and verifies (signature by its sender), names
our swarm and rule, is fresh (issued_at within [now - max_age_s, now + max_skew_s]), r lies in
[floor - 1, floor + max_rounds_ahead], its sender is on the allow-list when there is one, and
it is the first of its kind from that sender for (r, base adapter); at most max_peers senders
per kind and round are held. Refusals are logged (rate-limited) and never relayed; nothing
raises. Our own messages, forwarded back, are accepted for relaying and ignored.

Logger: "bitswarm.federation.rounds.secure".
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from bitswarm.federation.log_limit import RateLimitedLog, reason_key
from bitswarm.federation.secagg.messages import SecAggMessage, decode_message
from bitswarm.federation.wire import WireError

log = logging.getLogger("bitswarm.federation.rounds.secure")
_LOG = RateLimitedLog(log)


class SecAggIntake:
    """Validates and files secure-aggregation gossip (see the module docstring).

    Args: peer_id (ours), swarm, rule (the swarm's rule name, "+secagg" included),
    max_rounds_ahead, max_peers (senders per kind and round), allowed_senders (None: any),
    max_age_s / max_skew_s (freshness, seconds), clock (unix seconds).
    """

    def __init__(self, *, peer_id: str, swarm: str, rule: str, max_rounds_ahead: int,
                 max_peers: int, allowed_senders: frozenset[str] | None = None,
                 max_age_s: float = 3600.0, max_skew_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.peer_id, self.swarm, self.rule = peer_id, swarm, rule
        self.max_rounds_ahead, self.max_peers = max_rounds_ahead, max_peers
        self.allowed = None if allowed_senders is None else frozenset(allowed_senders) | {peer_id}
        self.max_age_s, self.max_skew_s, self.clock = max_age_s, max_skew_s, clock
        self._floor = 0
        # round -> kind -> (sender, base adapter) -> message
        self._rounds: dict[int, dict[str, dict[tuple[str, bytes], SecAggMessage]]] = {}
        self.changed = trio.Event()

    def enter(self, rnd: int) -> None:
        """Round `rnd` starts: older rounds are dropped."""
        self._floor = rnd
        for r in [r for r in self._rounds if r < rnd]:
            del self._rounds[r]

    def close(self, rnd: int) -> None:
        """Round `rnd` ended: its messages are dropped, later ones not buffered."""
        self._floor = max(self._floor, rnd + 1)
        self._rounds.pop(rnd, None)

    def messages(self, rnd: int, kind: str, base: bytes) -> dict[str, SecAggMessage]:
        """sender -> message of `kind` for (rnd, base)."""
        held = self._rounds.get(rnd, {}).get(kind, {})
        return {s: m for (s, b), m in held.items() if b == base}

    def relayable(self, from_peer: str, data: bytes) -> bool:
        """The gossip validator's answer for a secure-aggregation message (never raises)."""
        msg = self._accept(from_peer, data)
        return msg is not None

    def on_gossip(self, from_peer: str, data: bytes) -> None:
        """File one delivered message (never raises)."""
        msg = self._accept(from_peer, data)
        if msg is None or msg.sender == self.peer_id:
            return
        if not self._floor <= msg.round <= self._floor + self.max_rounds_ahead:
            return
        held = self._rounds.setdefault(msg.round, {}).setdefault(msg.kind, {})
        key = (msg.sender, msg.base_adapter)
        if key in held:
            return
        if len(held) >= self.max_peers:
            _LOG.log(logging.WARNING, "secagg cap", "round %d: %d %s messages already; one of "
                     "%s dropped", msg.round, len(held), msg.kind, msg.sender)
            return
        held[key] = msg
        self.changed.set()
        self.changed = trio.Event()

    def _accept(self, from_peer: str, data: bytes) -> SecAggMessage | None:
        try:
            msg = decode_message(data)
        except WireError as e:
            _LOG.log(logging.WARNING, reason_key("secagg invalid", e.reason),
                     "invalid secure-aggregation gossip from %s: %s", from_peer, e.reason)
            return None
        if msg.sender == self.peer_id:
            return msg
        if msg.round < self._floor - 1:
            return None
        reason = self._refusal(msg)
        if reason is not None:
            _LOG.log(logging.WARNING, reason_key("secagg rejected", reason),
                     "round %d: rejected secure-aggregation %s from %s: %s", msg.round, msg.kind,
                     msg.sender, reason)
            return None
        return msg

    def _refusal(self, msg: SecAggMessage) -> str | None:
        now = self.clock()
        if msg.swarm != self.swarm:
            return f"wrong swarm {msg.swarm!r}"
        if msg.rule != self.rule:
            return f"aggregation rule {msg.rule!r} (ours is {self.rule!r})"
        if msg.issued_at < now - self.max_age_s:
            return f"stale: issued {now - msg.issued_at:.0f} s ago (a replay?)"
        if msg.issued_at > now + self.max_skew_s:
            return f"issued {msg.issued_at - now:.0f} s in the future (clock skew?)"
        if self.allowed is not None and msg.sender not in self.allowed:
            return "sender not on the allow-list"
        return None
