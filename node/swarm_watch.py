"""What a running node saw of its swarm: a log line per peer connected / disconnected (at most
20 a minute of each) and per
peer joining the swarm's gossipsub topic, and the facts behind `node start`'s network verdict
(exit code 3, node/cli.py): was any peer ever met, did any join the swarm, did any update count.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from bitswarm.federation.log_limit import RateLimitedLog

log = logging.getLogger("bitswarm.node")
# A connection flood (fresh identities are free) must not write a line per connection: at
# most 20 per kind a minute, the suppressed count reported when lines resume.
_CONN_LOG = RateLimitedLog(log, burst=20, period_s=60.0)

NO_PEER_WARN_S = 30.0   # without any peer this long, say so (again every 10 minutes)
POLL_S = 1.0     # how often the connection and topic tables are read, status.json written (s)


@dataclass
class SwarmWatch:
    """Accumulates over the node's life; `poll` reads the transport, `add_round` a RoundResult."""

    self_id: str
    status: Any = None                                    # node/status.StatusFile, kept current
    peers: set[str] = field(default_factory=set)          # connected now
    members: set[str] = field(default_factory=set)        # subscribed to our topic now
    ever_connected: set[str] = field(default_factory=set)
    ever_members: set[str] = field(default_factory=set)
    peer_updates: int = 0                                 # peers' updates aggregated, all rounds
    peer_records: int = 0                                 # rounds closed by a peer's record
    peers_agreeing: int = 0                               # peers holding our final adapter
    rejections: dict[str, int] = field(default_factory=dict)   # reason -> count

    def poll(self, transport) -> None:
        now, members = set(transport.connected_peers()), set(transport.topic_peers())
        for p in sorted(now - self.peers):
            _CONN_LOG.log(logging.INFO, "connected", "peer connected: %s (%d connected)", p,
                          len(now))
        for p in sorted(self.peers - now):
            _CONN_LOG.log(logging.INFO, "disconnected", "peer disconnected: %s (%d connected)",
                          p, len(now))
        for p in sorted(members - self.members):
            log.info("peer %s joined the swarm (%d member(s) seen now)", p, len(members))
        self.peers, self.members = now, members
        self.ever_connected |= now
        self.ever_members |= members

    def add_round(self, result) -> None:
        self.peer_updates += sum(1 for p in result.contributors if p != self.self_id)
        self.peer_records += result.proposer != self.self_id
        for _peer, reason in result.rejected:
            key = reason.split(":")[0][:80]
            self.rejections[key] = self.rejections.get(key, 0) + 1

    async def run(self, transport, progress, dialed: list[str] = (), *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Poll every POLL_S seconds until cancelled; refreshes the progress bar's countdown and
        status.json; warns while no peer has been met (the dials go on meanwhile)."""
        task_status.started()
        warn_at = trio.current_time() + NO_PEER_WARN_S
        while True:
            self.poll(transport)
            if not self.ever_connected and trio.current_time() >= warn_at:
                warn_at += 600.0
                how = (f"dialing {', '.join(dialed)} (failures above)" if dialed else
                       f"no --peer given; peers can dial us at {', '.join(transport.listen_multiaddrs)}")
                log.warning("no peer connected after %.0f s: %s; still trying", NO_PEER_WARN_S, how)
            progress.tick(len(self.peers), transport.bytes_received, transport.bytes_sent)
            if self.status is not None:
                self.status.update(peers=sorted(self.peers), swarm_members=sorted(self.members),
                                   peer_paths=transport.peer_paths(),
                                   reachability=transport.reachability,
                                   bytes_in=transport.bytes_received, bytes_out=transport.bytes_sent)
                self.status.write()
            await trio.sleep(POLL_S)

    def failure(self, *, swarm: str, dialed: list[str], min_peers: int) -> str | None:
        """Why the network goal failed, or None: only when updates from peers were wanted
        (min_peers > 0) and the node never federated: no peer update counted, no peer's round
        record was adopted, and no peer holds our final adapter."""
        if min_peers == 0 or self.peer_updates or self.peer_records or self.peers_agreeing:
            return None
        if not self.ever_connected:
            how = (f"dialed {', '.join(dialed)}" if dialed else "no --peer given and no peer dialed us")
            return (f"no peer ever connected ({how}); check that the peers run and their "
                    f"multiaddrs are right")
        if not self.ever_members:
            return (f"connected to {len(self.ever_connected)} peer(s) but none joined swarm "
                    f"{swarm!r}: swarm name mismatch suspected (check --swarm on both sides)")
        if self.rejections:
            why = "; ".join(f"{r} (x{n})" for r, n in sorted(self.rejections.items()))
            return (f"every update from the swarm's {len(self.ever_members)} peer(s) was rejected: "
                    f"{why}; check that all nodes use the same --model, --rank, --alpha, "
                    f"--targets and --freeze-a")
        return (f"{len(self.ever_members)} peer(s) joined swarm {swarm!r} but no update of "
                f"theirs arrived before --round-timeout in any round")
