"""Per-peer resource limits and the offender list of one transport.

What a peer can make a node spend, and what happens when it tries for more:

- gossip rate, per forwarding neighbour: two token buckets (messages/s and bytes/s). A message
  over either is dropped before its signature is checked and costs the forwarder a behaviour
  penalty in the gossipsub score.
- gossipsub peer score (GossipSub v1.1 spec, "Peer Scoring"; py-libp2p 0.8.1's `ScoreParams`,
  all zero by default): invalid messages (refused by our validator), bad signatures and
  rate-limit overruns lower a forwarder's score; below `publish_threshold` py-libp2p drops its
  messages unread, below `graylist_threshold` we BLOCK it: pubsub blacklist, every connection
  closed, new ones refused, for `block_s` seconds. py-libp2p 0.8.1 computes the score but never
  disconnects anyone; that part is ours.
- connections: at most `max_connections` in all, `max_conns_per_peer` per peer ID and path
  (direct or relayed: a hole punch's direct connection passes however many relayed ones are
  open), `max_conns_per_ip` direct inbound ones per remote IP (a relayed connection's socket is
  the relay's, so it counts toward no IP); at most `max_inbound_streams_per_conn` streams a
  peer has open to us on one connection (py-libp2p 0.8.1 caps only outbound streams, 256).
  Enforced by the hooks in libp2p_compat, which call `connection_refusal` and read the limit.

Logging: one line per offender and decision (blocked, over rate, unblocked), rate-limited per
kind, never one per message. Every per-peer table is bounded (`max_tracked_peers`, the
stalest evicted). Logger: "bitswarm.federation.transport".
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..log_limit import RateLimitedLog

log = logging.getLogger("bitswarm.federation.transport")


@dataclass(frozen=True)
class GuardLimits:
    """Resource limits of one node; defaults sized for a laptop in a swarm of tens of peers."""

    gossip_msgs_per_s: float = 50.0          # per forwarding neighbour, sustained
    gossip_msgs_burst: float = 200.0         # ... and at once (a round's manifests, relayed)
    gossip_bytes_per_s: float = 512 * 1024   # per forwarding neighbour, bytes/s
    gossip_bytes_burst: float = 2 * 1024 * 1024  # > MAX_GOSSIP_BYTES, so one big message fits
    max_connections: int = 128               # open connections, both directions
    max_conns_per_peer: int = 2              # per peer and path (direct / relayed): two peers
                                             # dialing each other's circuit at once hold 2 relayed
    max_conns_per_ip: int = 16               # inbound direct ones, per remote IP (loopback too)
    max_inbound_streams_per_conn: int = 64   # streams a peer holds open to us on one connection
    block_s: float = 300.0                   # how long a graylisted peer stays blocked, s
    max_tracked_peers: int = 4096            # per-peer tables' size bound

    def __post_init__(self) -> None:
        for name in ("gossip_msgs_per_s", "gossip_msgs_burst", "gossip_bytes_per_s",
                     "gossip_bytes_burst", "block_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"GuardLimits.{name} must be > 0, got {v}")
        for name in ("max_connections", "max_conns_per_peer", "max_conns_per_ip",
                     "max_inbound_streams_per_conn", "max_tracked_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"GuardLimits.{name} must be >= 1, got {getattr(self, name)}")


def score_params():  # type: ignore[no-untyped-def]
    """Gossipsub peer-scoring parameters (py-libp2p 0.8.1 `ScoreParams`; its defaults are all
    zero, so nobody is ever scored down). py-libp2p's score is linear in each counter (the
    spec squares P3/P4; 0.8.1 does not): score = P2 - 4 * invalid - max(0, penalty - 5).

    - P2 first deliveries: +1 each, capped at 20, decaying 1%/heartbeat: an honest relay's
      credit, so a few messages it forwards that we judge stale do not hurt it.
    - P4 invalid messages (our validator refused them): -4 each, decaying 5%/heartbeat.
    - P5 behaviour penalty (bad signatures 1 each, rate-limit overruns 0.1 each, messages
      sent while below the publish threshold 2 each, py-libp2p's own IHAVE/IWANT/GRAFT spam
      penalties): -1 per unit above 5, decaying 10%/heartbeat.
    - thresholds: no gossip to peers below -20, their messages dropped unread below -40,
      graylisted (and, by PeerGuard, blocked) below -80; PX accepted only from >= 0.
    A forwarder is blocked after ~10 invalid messages and ~20 more of anything, or ~85 bad
    signatures, in quick succession.
    """
    from libp2p.pubsub.score import ScoreParams, TopicScoreParams

    return ScoreParams(
        p2_first_message_deliveries=TopicScoreParams(weight=1.0, cap=20.0, decay=0.99),
        p4_invalid_messages=TopicScoreParams(weight=4.0, cap=1000.0, decay=0.95),
        p5_behavior_penalty_weight=1.0, p5_behavior_penalty_threshold=5.0,
        p5_behavior_penalty_decay=0.9,
        gossip_threshold=-20.0, publish_threshold=-40.0, graylist_threshold=-80.0,
        accept_px_threshold=0.0,
    )


LOG_BURST = 10          # decision lines per kind (blocked, over rate, refused, ...) ...
LOG_PERIOD_S = 60.0     # ... per this many seconds
BAD_SIGNATURE_PENALTY = 1.0
OVER_RATE_PENALTY = 0.1
BELOW_PUBLISH_PENALTY = 2.0   # a message sent while below the publish threshold


class TokenBucket:
    """`rate` tokens/s up to `burst`; starts full. `take(n)` spends n tokens if there are."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, n: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


class PeerGuard:
    """Rate limits, block list and connection refusals of one transport (see module doc).

    `block_peer(peer_id)` is called when a peer is blocked; it must only schedule work (it runs
    inside py-libp2p's message path), e.g. start a task that closes the peer's connections.
    """

    def __init__(self, limits: GuardLimits, *, topic: str,
                 block_peer: Callable[[str], None] = lambda _p: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.topic, self._block_peer, self._clock = limits, topic, block_peer, clock
        self._buckets: OrderedDict[str, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self._blocked: OrderedDict[str, float] = OrderedDict()    # peer -> blocked until (clock)
        self.scorer = None            # py-libp2p PeerScorer, set by open_transport
        self.pubsub = None            # py-libp2p Pubsub (its blacklist), set by open_transport
        # One line per offender and decision (deduplicated for LOG_PERIOD_S), and at most
        # LOG_BURST lines per decision kind per LOG_PERIOD_S over all offenders (fresh
        # identities are free to make), the rest counted in a "suppressed" line.
        self._kind_log = RateLimitedLog(log, burst=LOG_BURST, period_s=LOG_PERIOD_S, max_keys=16)
        self._logged: OrderedDict[str, float] = OrderedDict()
        self.dropped_over_rate = 0
        self.refused_connections = 0
        self.blocks = 0

    # ---- gossip -------------------------------------------------------------------------

    def admit_message(self, forwarder: str, size_bytes: int, pid=None) -> bool:  # type: ignore[no-untyped-def]
        """Charge one gossip message of `size_bytes` from neighbour `forwarder` (base58; `pid`:
        its libp2p ID if the caller has it) to its buckets: False (drop it, before any
        signature check) if blocked, over either rate, or below the publish threshold (then
        it costs a penalty: py-libp2p would drop it unread at no cost to the sender, so a
        peer could sit just above the graylist and keep sending)."""
        now = self._clock()
        if self.is_blocked(forwarder, now):
            return False
        buckets = self._buckets.get(forwarder)
        if buckets is None:
            lim = self.limits
            buckets = self._buckets[forwarder] = (
                TokenBucket(lim.gossip_msgs_per_s, lim.gossip_msgs_burst, now),
                TokenBucket(lim.gossip_bytes_per_s, lim.gossip_bytes_burst, now))
            if len(self._buckets) > self.limits.max_tracked_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(forwarder)
        msgs, size = buckets
        if msgs.take(1, now) and size.take(size_bytes, now):
            if self.scorer is None:
                return True
            try:
                pid = pid if pid is not None else _peer_id(forwarder)
                if self.scorer.score(pid, [self.topic]) >= self.scorer.params.publish_threshold:
                    return True
            except Exception:  # noqa: BLE001 - a scoring bug must not stop message handling
                return True
            self._penalize(forwarder, BELOW_PUBLISH_PENALTY)
            return False
        self.dropped_over_rate += 1
        self._decision("over rate", forwarder, "peer %s over the gossip rate limit (%g msg/s, "
                       "%g B/s): its messages are dropped", forwarder,
                       self.limits.gossip_msgs_per_s, self.limits.gossip_bytes_per_s)
        self._penalize(forwarder, OVER_RATE_PENALTY)
        return False

    def on_bad_signature(self, forwarder: str) -> None:
        """A message forwarded by `forwarder` failed the pubsub signature check."""
        self._penalize(forwarder, BAD_SIGNATURE_PENALTY)

    def judge(self, forwarder: str, pid=None) -> None:  # type: ignore[no-untyped-def]
        """After a message from `forwarder` was handled: block it if its score fell below the
        graylist threshold. `pid`: its libp2p ID, if the caller has it."""
        if self.scorer is None or forwarder in self._blocked:
            return
        try:
            pid = pid if pid is not None else _peer_id(forwarder)
            score = self.scorer.score(pid, [self.topic])
            threshold = self.scorer.params.graylist_threshold
        except Exception:  # noqa: BLE001 - a scoring bug must not stop message handling
            return
        if score < threshold:
            invalid = self.scorer.invalid_messages.get(pid, {}).get(self.topic, 0.0)
            self.block(forwarder, f"gossipsub score {score:.0f} < {threshold:.0f} "
                       f"(~{invalid:.0f} invalid messages, {self.dropped_over_rate} over rate in all)")

    def _penalize(self, forwarder: str, amount: float) -> None:
        if self.scorer is None:
            return
        try:
            pid = _peer_id(forwarder)
            self.scorer.penalize_behavior(pid, amount)
        except Exception:  # noqa: BLE001
            return
        self.judge(forwarder, pid)

    # ---- blocking -----------------------------------------------------------------------

    def block(self, peer_id: str, reason: str) -> None:
        """Block `peer_id` (base58) for limits.block_s seconds: its gossip is dropped, its
        connections closed (through `block_peer`) and refused. Logged once per decision."""
        until = self._clock() + self.limits.block_s
        self._blocked[peer_id] = until
        self._blocked.move_to_end(peer_id)
        while len(self._blocked) > self.limits.max_tracked_peers:
            self._unblock(next(iter(self._blocked)))
        self.blocks += 1
        if self.pubsub is not None:
            try:
                self.pubsub.blacklisted_peers.add(_peer_id(peer_id))
            except Exception:  # noqa: BLE001
                pass
        self._decision("blocked", peer_id, "peer %s blocked for %.0f s and disconnected: %s",
                       peer_id, self.limits.block_s, reason)
        self._block_peer(peer_id)

    def is_blocked(self, peer_id: str, now: float | None = None) -> bool:
        until = self._blocked.get(peer_id)
        if until is None:
            return False
        if (self._clock() if now is None else now) < until:
            return True
        self._unblock(peer_id)
        return False

    def blocked_peers(self) -> list[str]:
        """Peers (base58) blocked now."""
        now = self._clock()
        return [p for p, until in self._blocked.items() if until > now]

    def expire(self) -> None:
        """Lift the blocks that ran out (run every second or so)."""
        now = self._clock()
        for peer, until in list(self._blocked.items()):
            if until <= now:
                self._unblock(peer)

    def _unblock(self, peer_id: str) -> None:
        self._blocked.pop(peer_id, None)
        if self.pubsub is not None:
            try:
                self.pubsub.blacklisted_peers.discard(_peer_id(peer_id))
            except Exception:  # noqa: BLE001
                pass
        self._decision("unblocked", peer_id, "peer %s unblocked", peer_id, level=logging.INFO)

    # ---- connections and streams --------------------------------------------------------

    def connection_refusal(self, peer_id: str, ip: str | None, inbound: bool,
                           conns_total: int, conns_of_peer: int, conns_of_ip: int) -> str | None:
        """Why a new connection must be refused (None: accept it). Counts are of the
        connections open before this one (conns_of_peer: the peer's on the same path, direct
        or relayed; conns_of_ip: direct inbound ones from `ip`, None for a relayed one)."""
        lim = self.limits
        if self.is_blocked(peer_id):
            reason = "blocked"
        elif conns_total >= lim.max_connections:
            reason = f"{lim.max_connections} connections open"
        elif conns_of_peer >= lim.max_conns_per_peer:
            reason = f"{lim.max_conns_per_peer} connections to this peer open"
        elif inbound and ip is not None and conns_of_ip >= lim.max_conns_per_ip:
            reason = f"{lim.max_conns_per_ip} connections from {ip} open"
        else:
            return None
        self.refused_connections += 1
        self._decision("refused connection", peer_id, "%s connection %s peer %s refused: %s",
                       "inbound" if inbound else "outbound", "from" if inbound else "to",
                       peer_id, reason)
        return reason

    def stream_refused(self, peer_id: str) -> None:
        """Log (rate-limited) that a stream of `peer_id` over the per-connection cap was reset."""
        self._decision("streams reset", peer_id, "peer %s holds %d streams on one connection: "
                       "further ones reset", peer_id, self.limits.max_inbound_streams_per_conn)

    def _decision(self, kind: str, peer_id: str, msg: str, *args, level: int = logging.WARNING) -> None:
        now = self._clock()
        key = f"{kind} {peer_id}"
        seen = self._logged.get(key)
        if seen is not None and now - seen < LOG_PERIOD_S:
            return
        self._logged[key] = now
        self._logged.move_to_end(key)
        if len(self._logged) > self.limits.max_tracked_peers:
            self._logged.popitem(last=False)
        self._kind_log.log(level, kind, msg, *args)


def _peer_id(peer_id: str):  # type: ignore[no-untyped-def]
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id)
