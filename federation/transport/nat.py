"""NAT traversal of one host: circuit relay v2, AutoNAT, DCUtR hole punching.

What runs on every node (py-libp2p 0.8.1's own implementations, in the transport's nursery):

- `CircuitV2Protocol` (libp2p.relay.circuit_v2.protocol): the STOP side (accept a connection
  relayed to us); with `relay=True` also the HOP side (relay for others: `--relay`).
- `CircuitV2Transport` (….transport): reservations at relays and dials of /p2p-circuit addresses.
- `AutoNATService` (libp2p.host.autonat): answers dial-back requests, and asks directly
  connected peers to dial us back; its verdict (public / private / unknown) is `reachability`.
- `DCUtRProtocol` (….dcutr): every 2 s it tries to upgrade each relayed connection to a direct
  one (TCP simultaneous open from our listen port to the peer's observed address), 3 times per
  peer. We make one side of each pair drive it (the lower peer ID: two sessions at once
  collide), drop its stale "already direct" entries, and while the peer stays relayed re-arm
  the 3 attempts with exponential backoff.

A node that AutoNAT finds private reserves a slot at every directly connected peer that offers
the HOP protocol, and then announces `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<us>` besides
its own addresses (identify, DHT provider records), so peers that cannot reach it dial it
through the relay. Specs: libp2p circuit-v2.md, DCUtR.md, autonat-v1 (github.com/libp2p/specs).

Logger: "bitswarm.federation.transport".
"""
from __future__ import annotations

import logging
import socket
from typing import Any

import trio
from libp2p.host.autonat import AutoNATService, AutoNATStatus
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import (MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol,
                                           _local_tcp_listen_addrs)
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..log_limit import RateLimitedLog

log = logging.getLogger("bitswarm.federation.transport")
_PATH_LOG = RateLimitedLog(log, burst=10, period_s=60.0)

# py-libp2p's relay, DCUtR and AutoNAT log every failed attempt at ERROR/WARNING (a hole punch
# that cannot succeed is expected behind a symmetric NAT): we log the outcome ourselves.
for _name in ("libp2p.relay.circuit_v2.dcutr", "libp2p.relay.circuit_v2.transport",
              "libp2p.relay.circuit_v2.protocol", "libp2p.host.autonat.autonat"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

POLL_S = 1.0                 # how often peers, relays and paths are looked at, seconds
AUTONAT_TIMEOUT_S = 10.0     # one dial-back request, seconds
AUTONAT_RECHECK_S = 120.0    # re-ask after a verdict, seconds
RESERVE_TIMEOUT_S = 10.0     # one reservation (stream open + RESERVE + answer), seconds
DCUTR_DIAL_TIMEOUT_S = 3      # one direct dial attempt of DCUtR (unilateral or punch), seconds
NOT_RELAY_RECHECK_S = 60.0   # a peer without HOP is asked again after this long, seconds
# py-libp2p's DCUtR stops after 3 attempts per connection (the spec's "retry twice"): a busy or
# briefly lossy moment would keep the peer relayed for good. We re-arm it after this long,
# doubling up to PUNCH_RETRY_MAX_S (behind a symmetric NAT the punch can never pass).
PUNCH_RETRY_S = 10.0
PUNCH_RETRY_MAX_S = 300.0
# Of two peers the lower peer ID drives DCUtR (_LoggedDCUtR); the other waits this long for it.
PUNCH_DEFER_S = 20.0
# Limits of a --relay node: a circuit lives at most 1 h and carries at most 1 GiB (py-libp2p's
# defaults); more reservations than its default 4, since every NATed member holds one.
RELAY_LIMITS = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=16, max_reservations=64)

DIRECT, RELAYED = "direct", "relayed"


def is_circuit(addr: str | Multiaddr) -> bool:
    """True if `addr` is a relayed (/p2p-circuit) multiaddr."""
    return "/p2p-circuit" in str(addr)


def connection_path(conn: Any) -> str:
    """'relayed' if a py-libp2p connection runs through a relay, else 'direct'."""
    try:
        addrs = conn.get_transport_addresses() or []
    except Exception:  # noqa: BLE001 - a closing connection may fail here
        addrs = []
    return RELAYED if addrs and all(is_circuit(a) for a in addrs) else DIRECT


class NatTraversal:
    """The NAT-traversal services of one libp2p host. `relay`: also relay for others (HOP).

    Create before the host runs, start with `nursery.start(nat.run)` once it listens. The
    announced circuit addresses live on the host (`libp2p_compat` makes `host.get_addrs()`
    append them), so identify and the DHT carry them.
    """

    def __init__(self, host: Any, *, relay: bool) -> None:
        self.host = host
        self.relay = relay
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if relay else RelayRole(0))
        self.protocol = CircuitV2Protocol(host, limits=RELAY_LIMITS, allow_hop=relay)
        self.circuit = CircuitV2Transport(host, self.protocol, RelayConfig(roles=roles,
                                                                           limits=RELAY_LIMITS))
        # dial_timeout: the unilateral direct dial DCUtR tries first waits this long before
        # punching (a NAT drops its SYN silently); 0.8.1 defaults to 10 s.
        self.dcutr = _LoggedDCUtR(host, dial_timeout=DCUTR_DIAL_TIMEOUT_S)
        # Every node answers dial-backs; one verdict decides (a swarm often has one public node).
        self.autonat = AutoNATService(host, serve=True, confirmations=1)
        self.reservations: dict[str, str] = {}      # relay peer ID -> our circuit multiaddr
        self.paths: dict[str, str] = {}             # peer ID -> 'direct' | 'relayed'
        self._not_relay: dict[str, float] = {}      # peer ID -> when it was found without HOP
        self._asked: dict[str, float] = {}          # peer ID -> when we asked it for a dial-back
        self._punch_spent: dict[str, list] = {}     # peer ID -> [when attempts ran out, re-arms]
        host._bitswarm_circuit_addrs = []           # read by the get_addrs patch (libp2p_compat)

    @property
    def reachability(self) -> str:
        """AutoNAT's verdict: 'public', 'private' or 'unknown'."""
        return {AutoNATStatus.PUBLIC: "public", AutoNATStatus.PRIVATE: "private"}.get(
            self.autonat.get_status(), "unknown")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run relay, DCUtR and AutoNAT until cancelled; every network wait is bounded."""
        async with background_trio_service(self.protocol), background_trio_service(self.dcutr), \
                trio.open_nursery() as nursery:
            task_status.started()
            log.info("NAT traversal on%s: circuit relay v2, AutoNAT, DCUtR",
                     " (relaying for others: --relay)" if self.relay else "")
            while True:
                self._watch_paths()
                for peer in self._direct_peers():
                    if self._due(self._asked, peer, AUTONAT_RECHECK_S if
                                 self.reachability != "unknown" else AUTONAT_TIMEOUT_S):
                        self._asked[peer] = trio.current_time()   # one request at a time
                        nursery.start_soon(self._ask_dial_back, peer)
                if self.reachability == "private":
                    for peer in self._direct_peers():
                        if peer not in self.reservations and self._due(self._not_relay, peer,
                                                                       NOT_RELAY_RECHECK_S):
                            await self._reserve(peer, nursery)
                self._drop_lost_relays()
                self._rearm_hole_punch()
                await trio.sleep(POLL_S)

    # ---- dialing ------------------------------------------------------------------------

    async def dial_circuit(self, addr: str) -> None:
        """Connect through a relay: `addr` = <relay multiaddr>/p2p/<relay>/p2p-circuit/p2p/<peer>.
        The caller bounds the wait. Raises what py-libp2p raises (ConnectionError, ...)."""
        await self.circuit.dial(Multiaddr(addr))

    # ---- AutoNAT ------------------------------------------------------------------------

    async def _ask_dial_back(self, peer: str) -> None:
        pid = ID.from_base58(peer)
        protocols = _protocols(self.host, pid)
        if not protocols:
            self._asked.pop(peer, None)
            return                      # identify not done yet: ask at the next poll
        if AUTONAT_PROTOCOL_ID not in protocols:
            return
        before = self.reachability
        addrs = [a.to_bytes() for a in self.host.get_addrs() if not is_circuit(a)]
        try:
            status, _ = await self.autonat.query_server(pid, addrs, timeout=AUTONAT_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - timeout, reset, protocol error: no verdict
            log.debug("AutoNAT: dial-back request to %s failed: %s", peer, e)
            return
        self.autonat.update_status()
        log.debug("AutoNAT: %s answered status %d", peer, status)
        if self.reachability != before:
            log.info("AutoNAT: this node is %s (dial-back by %s)", self.reachability, peer)

    # ---- relays -------------------------------------------------------------------------

    async def _reserve(self, peer: str, nursery: trio.Nursery) -> None:
        pid = ID.from_base58(peer)
        protocols = _protocols(self.host, pid)
        if not protocols:
            return                      # identify not done yet: look again at the next poll
        if HOP_PROTOCOL_ID not in protocols:
            self._not_relay[peer] = trio.current_time()
            return
        relay_addr = next((a for c in self.host.get_network().get_connections(pid)
                           if connection_path(c) == DIRECT
                           for a in c.get_transport_addresses() if not is_circuit(a)), None)
        if relay_addr is None:
            return
        try:
            with trio.fail_after(RESERVE_TIMEOUT_S):
                stream = await self.host.new_stream(pid, [HOP_PROTOCOL_ID])
                ok = await self.circuit.reserve(stream, pid, nursery)
                with trio.move_on_after(1.0):
                    await stream.close()
        except Exception as e:  # noqa: BLE001 - timeout, refused, reset
            log.info("relay %s: reservation failed: %s: %s", peer, type(e).__name__, e)
            self._not_relay[peer] = trio.current_time()
            return
        if not ok:
            log.info("relay %s refused a reservation", peer)
            self._not_relay[peer] = trio.current_time()
            return
        addr = f"{relay_addr}/p2p/{peer}/p2p-circuit"
        self.reservations[peer] = addr
        self.host._bitswarm_circuit_addrs = [Multiaddr(a) for a in self.reservations.values()]
        log.info("relay %s: reserved; announcing %s/p2p/%s", peer, addr, self.host.get_id())

    def _drop_lost_relays(self) -> None:
        connected = set(self._direct_peers())
        for peer in [p for p in self.reservations if p not in connected]:
            log.info("relay %s: disconnected; no longer announcing %s", peer, self.reservations[peer])
            del self.reservations[peer]
            self.host._bitswarm_circuit_addrs = [Multiaddr(a) for a in self.reservations.values()]

    # ---- paths --------------------------------------------------------------------------

    def _direct_peers(self) -> list[str]:
        return [p for p, path in self._current_paths().items() if path == DIRECT]

    def _current_paths(self) -> dict[str, str]:
        paths = {}
        for pid, conns in list(self.host.get_network().connections.items()):
            kinds = {connection_path(c) for c in conns}
            if kinds:
                paths[pid.to_base58()] = DIRECT if DIRECT in kinds else RELAYED
        return paths

    def _watch_paths(self) -> None:
        """Log each peer's path when it changes (a hole punch turns 'relayed' into 'direct')."""
        now = self._current_paths()
        for peer, path in now.items():
            old = self.paths.get(peer)
            if old != path:
                how = " (hole punch: upgraded from relayed)" if old == RELAYED else ""
                if path == DIRECT and not how:      # strangers choose how often: rate-limited
                    _PATH_LOG.log(logging.INFO, "direct path", "peer %s: connection is %s", peer, path)
                else:
                    log.info("peer %s: connection is %s%s", peer, path, how)
        self.paths = now

    def _rearm_hole_punch(self) -> None:
        """Keep DCUtR trying for a peer we reach only through a relay.

        py-libp2p 0.8.1's DCUtR skips a peer for good once (a) its 3 attempts are spent, or
        (b) the peer is in its direct-connection cache, which is cleared only when the peer
        disconnects entirely: a punched connection that dies while the relayed one lives leaves
        a stale entry, and the responder side then refuses every new session. (b) is dropped
        at once; (a) is re-armed after PUNCH_RETRY_S, doubling per re-arm to PUNCH_RETRY_MAX_S.
        """
        dcutr = self.dcutr
        relayed = {p for p, path in self._current_paths().items() if path == RELAYED}
        for peer in [p for p in self._punch_spent if p not in relayed]:
            del self._punch_spent[peer]                 # direct now, or gone: start afresh
        for pid in [p for p in dcutr._direct_connections if p.to_base58() in relayed]:
            dcutr._direct_connections.discard(pid)
            _PATH_LOG.log(logging.INFO, "punch stale", "peer %s: hole punch: the direct "
                          "connection is gone; punching again", pid)
        now = trio.current_time()
        attempts = dcutr._hole_punch_attempts           # peer ID -> attempts made
        for pid, n in list(attempts.items()):
            peer = pid.to_base58()
            if n < MAX_HOLE_PUNCH_ATTEMPTS or peer not in relayed:
                continue
            st = self._punch_spent.setdefault(peer, [now, 0])
            wait = min(PUNCH_RETRY_S * 2 ** st[1], PUNCH_RETRY_MAX_S)
            if now - st[0] >= wait:
                st[:] = [now, st[1] + 1]
                attempts.pop(pid, None)
                _PATH_LOG.log(logging.INFO, "punch retry", "peer %s: hole punch: %d attempt(s) "
                              "gave no direct connection; trying again (retry %d)", peer, n, st[1])

    @staticmethod
    def _due(last: dict[str, float], peer: str, every_s: float) -> bool:
        t = last.get(peer)
        return t is None or trio.current_time() - t >= every_s


class _LoggedDCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR with one initiator per pair of peers, logging when a hole punch starts
    and how it ends (its own log lines are muted above).

    py-libp2p drives a session from both ends every 2 s. Two nodes that met through the relay at
    the same moment then open two sessions at once, and their simultaneous opens use the same
    TCP 4-tuple (listen port to listen port) and collide; their 2 s loops stay in phase, so
    every later attempt collides too (seen in tests/federation/nat: minutes without a punch).
    Here the peer with the lower peer ID drives; the other answers, and drives itself only
    after PUNCH_DEFER_S without a session from the peer (one that never initiates).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heard: dict[ID, float] = {}     # peer -> first deferral or last inbound session
        self._announced: list[str] = []       # the addresses our last CONNECT told a peer to dial

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        if self.host.get_id().to_bytes() > peer_id.to_bytes():
            now = trio.current_time()
            if now - self._heard.setdefault(peer_id, now) < PUNCH_DEFER_S:
                return False                  # the peer drives; no attempt is spent
        return await super().initiate_hole_punch(peer_id)

    async def _handle_dcutr_stream(self, stream: Any) -> None:
        peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", None)
        if peer is not None:                  # the deferral counts from a session's start..
            self._heard[peer] = trio.current_time()
        try:
            await super()._handle_dcutr_stream(stream)
        finally:
            if peer is not None:              # ..and from its end (a punch takes up to ~21 s)
                self._heard[peer] = trio.current_time()

    def on_peer_disconnected(self, peer_id: ID) -> None:
        self._heard.pop(peer_id, None)
        super().on_peer_disconnected(peer_id)

    async def _get_observed_addrs(self) -> list[bytes]:
        out = await super()._get_observed_addrs()
        self._announced = [str(a) for a in self._decode_observed_addrs(list(out))]
        return out

    async def _perform_hole_punch(self, peer_id, addrs, as_responder=False):  # type: ignore[no-untyped-def]
        # Everything a failed punch needs to be explained from the two logs: who drove, what each
        # side dials and from which source, and what it told the peer to dial.
        source = next(((ip, port) for _f, ip, port in _local_tcp_listen_addrs(self.host)), None)
        log.info("peer %s: hole punch: dialing %s from %s (%s; we announced %s)", peer_id,
                 ", ".join(map(str, addrs)) or "nothing",
                 "%s:%d" % source if source else "an ephemeral port",
                 "we drive" if as_responder else "the peer drives",
                 ", ".join(self._announced) or "nothing")
        if source is not None and (why := _source_bind_error(source)):
            # py-libp2p then dials from an ephemeral port, which no NAT mapping predicts.
            log.info("peer %s: hole punch: cannot dial from the listen port %s:%d (%s)",
                     peer_id, *source, why)
        ok = await super()._perform_hole_punch(peer_id, addrs, as_responder)
        log.info("peer %s: hole punch %s", peer_id, "succeeded" if ok else
                 "failed; the connection stays relayed")
        return ok


def _source_bind_error(source: tuple[str, int]) -> str | None:
    """Why a socket with py-libp2p's hole-punch flags cannot bind `source` (ip, port), or None.
    The same bind py-libp2p makes before a punch dial, whose failure it logs only at DEBUG."""
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(source)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
    return None


def _protocols(host: Any, pid: ID) -> list[str]:
    try:
        return list(host.get_peerstore().get_protocols(pid))
    except Exception:  # noqa: BLE001 - identify not finished yet: unknown peer
        return []
