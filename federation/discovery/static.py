"""StaticPeers: dial a fixed list of multiaddrs (the node's `--peer`), and redial when the
connection drops, with backoff."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from .base import Dialer, DialError, Discovery

log = logging.getLogger("bitswarm.federation.discovery")

REDIAL_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # per peer, then stays at 30 s
CONNECTED_POLL_S = REDIAL_BACKOFF_S[-1] / 10               # how often a live connection is checked


class StaticPeers(Discovery):
    """addrs: multiaddrs ending /p2p/<peer-id>. A malformed one, or our own, is logged and
    skipped; the others are dialed concurrently, each redialed whenever disconnected.

    py-libp2p 0.8.1 quirk: once every address of a peer failed, its swarm refuses to dial that
    peer for 60 s (`_NegativePeerCache`), so a peer that starts listening after our first dial
    is reached up to about a minute later (unless it dials us).
    """

    def __init__(self, addrs: Sequence[str] = ()) -> None:
        self.addrs = list(addrs)

    async def run(self, dialer: Dialer) -> None:
        async with trio.open_nursery() as nursery:
            for addr in self.addrs:
                nursery.start_soon(self._keep_dialing, dialer, addr)

    @staticmethod
    async def _keep_dialing(dialer: Dialer, addr: str) -> None:
        # Peers start at different moments, and may restart: redial whenever disconnected.
        try:
            target = info_from_p2p_addr(Multiaddr(addr)).peer_id.to_base58()
        except Exception as e:  # multiaddr raises assorted types for garbage
            log.error("ignoring configured peer %r: %s", addr, e)
            return
        if target == dialer.peer_id:
            log.info("ignoring configured peer %s: that is us", addr)
            return
        attempt = 0
        while True:
            if target in dialer.connected_peers():
                attempt = 0
                await trio.sleep(CONNECTED_POLL_S)
                continue
            try:
                await dialer.connect(addr)
                log.info("connected to %s", addr)
                attempt = 0
                continue
            except (DialError, ValueError) as e:
                level = logging.WARNING if attempt < 3 else logging.DEBUG
                log.log(level, "dial attempt %d to %s failed: %s", attempt + 1, addr, e)
            await trio.sleep(REDIAL_BACKOFF_S[min(attempt, len(REDIAL_BACKOFF_S) - 1)])
            attempt += 1
