"""SwarmDHT: join a swarm by name through the libp2p Kademlia DHT (py-libp2p's KadDHT).

Every node runs a DHT server on its libp2p host. It dials its bootstrap addresses (any
reachable bitswarm node, member of the swarm or not) and keeps them dialed, adds every
connected peer to its routing table, announces itself as a provider of the swarm's rendezvous
key, and looks up the key's other providers, dialing up to `target_peers` of them, which is
enough for a gossipsub mesh (degree 6). Provider records expire, so the announcement and the
lookup repeat: every `fast_s` seconds while no member is connected, every `refresh_s` after.

Rendezvous key: the sha2-256 multihash of b"bitswarm/2/swarm/" + the swarm name (UTF-8), so
names never collide with other DHT users' keys and the name itself is not published.

Source: libp2p Kademlia DHT spec (provider records, ADD_PROVIDER / GET_PROVIDERS); py-libp2p
0.8.1 `libp2p.kad_dht.KadDHT`. Logger: "bitswarm.federation.discovery".
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.tools.anyio_service import background_trio_service

from .base import Dialer, DialError, Discovery
from .static import StaticPeers

log = logging.getLogger("bitswarm.federation.discovery")

# py-libp2p 0.8.1's DHT logs a warning each time a peer closes a DHT stream it had open
# (normal when a peer leaves): keep it out of the node's log.
logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)

QUERY_TIMEOUT_S = 15.0          # one provide or find_providers, seconds
SATURATED_REFRESH_S = 300.0     # round period once target_peers members are connected, seconds
NEIGHBOUR_TIMEOUT_S = 5.0       # one direct ADD_PROVIDER + GET_PROVIDERS with a peer, seconds


def rendezvous_key(swarm: str) -> str:
    """Hex of the sha2-256 multihash (0x12 0x20 + digest) of the swarm's rendezvous name."""
    return (b"\x12\x20" + hashlib.sha256(b"bitswarm/2/swarm/" + swarm.encode()).digest()).hex()


class SwarmDHT(Discovery):
    """bootstrap: multiaddrs ending /p2p/<peer-id> (dialed and redialed like StaticPeers);
    swarm: the swarm name; target_peers: members to keep connected; fast_s / refresh_s:
    announce-and-look-up period, seconds, before and after the first member is connected.

    The dialer must be a running Transport (it needs `libp2p_host`, the py-libp2p host).
    """

    def __init__(self, bootstrap: Sequence[str], swarm: str, *, target_peers: int = 8,
                 fast_s: float = 3.0, refresh_s: float = 30.0) -> None:
        self.bootstrap = list(bootstrap)
        self.key = rendezvous_key(swarm)
        self.target_peers = target_peers
        self.fast_s, self.refresh_s = fast_s, refresh_s
        self.found: set[str] = set()            # members found through provider records
        self._rng = random.Random()

    async def run(self, dialer: Dialer) -> None:
        host = dialer.libp2p_host
        dht = KadDHT(host, DHTMode.SERVER)
        async with background_trio_service(dht), trio.open_nursery() as nursery:
            nursery.start_soon(StaticPeers(self.bootstrap).run, dialer)
            while True:
                await self._round(dialer, dht, host)
                await trio.sleep(self.wait_s(len(self.found & set(dialer.connected_peers()))))

    def wait_s(self, members_connected: int) -> float:
        """Seconds until the next round: fast_s until a member is connected, refresh_s while
        fewer than target_peers are, then SATURATED_REFRESH_S (only the provider record needs
        renewing then; every round opens streams to up to target_peers neighbours, which in
        a 32-member swarm on 2 cores was a measurable share of the CPU)."""
        if members_connected == 0:
            return self.fast_s
        if members_connected < self.target_peers:
            return self.refresh_s
        return max(self.refresh_s, SATURATED_REFRESH_S)

    async def _round(self, dialer: Dialer, dht: KadDHT, host) -> None:
        """Routing table upkeep, one announcement, one lookup, dials; failures are logged."""
        for peer in list(host.get_network().connections):
            try:
                await dht.add_peer(peer)
            except Exception as e:  # noqa: BLE001 - a peer without the DHT protocol, etc.
                log.debug("DHT: cannot add %s to the routing table: %s", peer, e)
        if dht.get_routing_table_size() == 0:
            return                               # nobody to ask yet (bootstrap still dialing)
        await self._dial_members(dialer, await self._ask_neighbours(dht, host))
        providers = []
        try:
            with trio.fail_after(QUERY_TIMEOUT_S):
                await dht.provide(self.key)
                providers = await dht.find_providers(self.key, count=4 * self.target_peers)
        except trio.TooSlowError:
            # Expected where members sit behind NATs: the walk dials their private addresses.
            log.info("DHT: provider walk timed out after %.0f s; retrying", QUERY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - py-libp2p raises assorted errors mid-query
            log.warning("DHT: provider lookup failed: %s: %s", type(e).__name__, e)
        await self._dial_members(dialer, providers)

    async def _ask_neighbours(self, dht: KadDHT, host) -> list:
        """Announce ourselves to, and ask for providers, every directly connected DHT peer, one
        RPC each (NEIGHBOUR_TIMEOUT_S). The iterative walk after it dials the k closest peers
        it hears of, which for members behind NATs are private addresses that time out; a
        bootstrap node we are connected to answers at once. py-libp2p 0.8.1 also answers
        `find_providers` from the local store alone once it holds any record (our own, after
        `provide`), so the walk by itself never finds the others.
        Uses ProviderStore._send_add_provider / _get_providers_from_peer_with_closers (0.8.1)."""
        store = dht.provider_store
        key = bytes.fromhex(self.key)
        found: list = []

        async def one(peer) -> None:
            try:
                with trio.fail_after(NEIGHBOUR_TIMEOUT_S):
                    await store._send_add_provider(peer, key)
                    providers, _ = await store._get_providers_from_peer_with_closers(peer, key)
                    found.extend(providers)
            except Exception as e:  # noqa: BLE001 - timeout, no DHT protocol, reset
                log.debug("DHT: provider exchange with %s failed: %s", peer, e)

        direct = [peer for peer, conns in list(host.get_network().connections.items())
                  if conns and all("/p2p-circuit" not in str(a) for c in conns
                                   for a in c.get_transport_addresses())]
        async with trio.open_nursery() as nursery:
            # target_peers of them, at random: each answers with the providers it knows, so a
            # sample finds the members as well as asking all (two RPCs each) would.
            for peer in self._rng.sample(direct, min(len(direct), self.target_peers)):
                nursery.start_soon(one, peer)
        return found

    async def _dial_members(self, dialer: Dialer, providers: list) -> None:
        connected = set(dialer.connected_peers())
        for info in providers:
            pid = info.peer_id.to_base58()
            if pid == dialer.peer_id:
                continue
            self.found.add(pid)
            if pid in connected or len(connected & self.found) >= self.target_peers:
                continue
            # A member announces a relayed address (…/p2p/<relay>/p2p-circuit) only when AutoNAT
            # found it unreachable: dial that first (its other addresses are private ones that
            # would time out); DCUtR then tries to make the connection direct.
            for addr in sorted(info.addrs, key=lambda a: "/p2p-circuit" not in str(a)):
                full = str(addr) if str(addr).endswith(f"/p2p/{pid}") else f"{addr}/p2p/{pid}"
                try:
                    await dialer.connect(full)
                    log.info("DHT: connected to swarm member %s (%s)", pid, full)
                    connected.add(pid)
                    break
                except (DialError, ValueError) as e:
                    log.info("DHT: dial %s failed: %s", full, e)
