"""The discovery seam: how a node finds peers to connect to, apart from what it does with them.

As hivemind keeps `Matchmaking` apart from averaging (`DecentralizedAverager(dht=...)`), the
round never knows how peers were found: a Discovery only dials, through the `Dialer` it is
given (the running Transport), and gossip and payload fetches use whatever connections exist.
`open_transport(..., discovery=...)` runs it in the transport's nursery until the transport
closes.

A new mechanism (mDNS, rendezvous, ...) is one subclass in its own module, its test with real
hosts on 127.0.0.1, and the line of the node's runtime that constructs it (today
`SwarmDHT(peers + bootstrap, swarm)`, kademlia.py). A mechanism that speaks libp2p protocols
itself uses `Dialer.libp2p_host`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class DialError(Exception):
    """Dialing a peer failed or timed out (the transport's ConnectError is one)."""


class Dialer(Protocol):
    """What a Discovery may use of the transport."""

    peer_id: str                              # our own base58 peer ID
    libp2p_host: object                       # the py-libp2p IHost (for protocols like the DHT)
    listen_multiaddrs: list[str]              # where we listen (…/p2p/<our peer ID>)

    def connected_peers(self) -> list[str]:
        """Base58 IDs of peers with an open connection."""

    async def connect(self, multiaddr: str) -> None:
        """Dial `multiaddr` (ending /p2p/<peer-id>) within the transport's dial timeout.
        Raises ValueError (malformed, or ourselves) or DialError."""


class Discovery(ABC):
    """Finds peers and keeps us connected to them."""

    @abstractmethod
    async def run(self, dialer: Dialer) -> None:
        """Discover and dial until cancelled; never raises for a peer's failure (log it, retry
        with backoff). Every wait is bounded (the dialer bounds each dial)."""
