"""Network settings of one node."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .peer_guard import GuardLimits


@dataclass
class TransportConfig:
    """Network settings of one node."""

    listen: str = "/ip4/127.0.0.1/tcp/0"  # multiaddr to listen on; tcp/0 = any free port
    topic: str = "bitswarm"  # the one gossip topic
    # multiaddrs ending /p2p/<peer-id>: shorthand for open_transport(discovery=StaticPeers(peers))
    peers: list[str] = field(default_factory=list)
    heartbeat_s: float = 1.0  # GossipSub heartbeat (mesh upkeep, gossip emission), seconds
    dial_timeout_s: float = 10.0  # per dial attempt, seconds
    psk: str | None = None  # 64 hex chars: private network (pnet); None = public
    relay: bool = False  # also relay for others (circuit relay v2 HOP); see transport/nat.py
    # gossip rate, connection and stream limits, block time (peer_guard.py)
    limits: GuardLimits = field(default_factory=GuardLimits)

    def __post_init__(self) -> None:
        if not self.topic:
            raise ValueError("TransportConfig.topic must be non-empty")
        if not (math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0):
            raise ValueError(f"TransportConfig.heartbeat_s must be > 0, got {self.heartbeat_s}")
        if not (math.isfinite(self.dial_timeout_s) and self.dial_timeout_s > 0):
            raise ValueError(f"TransportConfig.dial_timeout_s must be > 0, got {self.dial_timeout_s}")
        if self.psk is not None:
            try:
                ok = len(bytes.fromhex(self.psk)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ValueError("TransportConfig.psk must be 64 hex characters (32 bytes)")
