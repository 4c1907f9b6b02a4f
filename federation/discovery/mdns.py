"""LanPeers: find swarm members on the same LAN with mDNS (libp2p mDNS discovery spec), using
py-libp2p 0.8.1's implementation (`libp2p.discovery.mdns`, on zeroconf), and dial them.

The service type is private to the swarm (`_p2p-<10 hex of SHA-256("bitswarm/2/swarm/" +
name)>._udp.local.`, the spec's private-network form; DNS-SD allows 15 bytes there), so nodes of other swarms on the LAN are
neither announced to nor dialed. zeroconf answers on its own threads; discovered peers cross
into trio through a bounded memory channel (trio.from_thread), and this task dials them.

Logger: "bitswarm.federation.discovery".
"""
from __future__ import annotations

import hashlib
import logging

import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.mdns import create_mdns_discovery

from .base import Dialer, DialError, Discovery

log = logging.getLogger("bitswarm.federation.discovery")

_PENDING = 64                     # discovered peers waiting to be dialed; more are dropped


def lan_fingerprint(swarm: str) -> str:
    """The swarm's private mDNS service-name part: 10 hex of SHA-256 of its rendezvous name."""
    return hashlib.sha256(b"bitswarm/2/swarm/" + swarm.encode()).hexdigest()[:10]


class LanPeers(Discovery):
    """swarm: the swarm name. The dialer must be a running Transport (`libp2p_host`,
    `listen_multiaddrs`). Announces our listen addresses; dials each member found once per
    announcement (StaticPeers-style redial is left to their next announcement)."""

    def __init__(self, swarm: str) -> None:
        self.swarm = swarm
        self.found: set[str] = set()

    async def run(self, dialer: Dialer) -> None:
        host = dialer.libp2p_host
        port = int(dialer.listen_multiaddrs[0].split("/tcp/")[1].split("/")[0])
        send, recv = trio.open_memory_channel(_PENDING)
        token = trio.lowlevel.current_trio_token()

        def on_peer(info) -> None:           # a zeroconf thread
            try:
                trio.from_thread.run_sync(send.send_nowait, info, trio_token=token)
            except (trio.WouldBlock, trio.RunFinishedError, trio.Cancelled):
                pass

        mdns = await trio.to_thread.run_sync(lambda: create_mdns_discovery(
            host.get_network(), port=port, listen_addrs=list(dialer.listen_multiaddrs),
            private_network_fingerprint=lan_fingerprint(self.swarm), host=host))
        peerDiscovery.register_peer_discovered_handler(on_peer)
        try:
            # MDNSDiscovery.start() also spawns a trio system task for stale-entry cleanup, which
            # needs the event loop, while zeroconf's registration blocks (probing): register on
            # a worker thread and skip that cleanup (we dial what we hear at once).
            await trio.to_thread.run_sync(mdns.broadcaster.register)
            log.info("mDNS: announcing on the LAN as a member of swarm %r", self.swarm)
            async for info in recv:
                pid = info.peer_id.to_base58()
                if pid == dialer.peer_id or pid in dialer.connected_peers():
                    continue
                self.found.add(pid)
                for addr in info.addrs:
                    full = str(addr) if "/p2p/" in str(addr) else f"{addr}/p2p/{pid}"
                    try:
                        await dialer.connect(full)
                        log.info("mDNS: connected to swarm member %s (%s)", pid, full)
                        break
                    except (DialError, ValueError) as e:
                        log.info("mDNS: dial %s failed: %s", full, e)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_peer)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(mdns.stop)


class AllOf(Discovery):
    """Runs several discovery mechanisms side by side."""

    def __init__(self, *parts: Discovery) -> None:
        self.parts = parts

    async def run(self, dialer: Dialer) -> None:
        async with trio.open_nursery() as nursery:
            for part in self.parts:
                nursery.start_soon(part.run, dialer)
