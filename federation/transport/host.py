"""The running transport: a libp2p host (TCP, Noise only, Yamux only), GossipSub on one topic,
the payload protocol, and the discovery that dials peers.

Every task runs in the nursery of `open_transport`; every network wait has a timeout.
Logger: "bitswarm.federation.transport".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p import new_host
from multiaddr import Multiaddr
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from bitswarm.federation import libp2p_compat, wire_recorder
from bitswarm.federation.discovery import Discovery, StaticPeers
from bitswarm.federation.identity import peer_id_of

from .config import TransportConfig
from .errors import ConnectError, TransportError
from .nat import NatTraversal, is_circuit
from .payload_protocol import PAYLOAD_PROTOCOL_ID, PayloadServer, fetch_payload
from .peer_guard import PeerGuard, score_params

log = logging.getLogger("bitswarm.federation.transport")

MAX_GOSSIP_BYTES = 256 * 1024  # py-libp2p drops gossip > 1 MiB silently; stay far below


class _Ignore:
    """The gossip validator's third verdict (libp2p's ValidationIgnore): refuse, no penalty.
    Falsy, so code that treats verdicts as booleans still refuses."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "IGNORE"


IGNORE = _Ignore()
MESSAGE_BUFFER = 256  # gossip messages held for the consumer before new ones are dropped
PUBLISH_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 5.0


@dataclass
class GossipMessage:
    """One gossip message from another peer. `from_peer` is the signed author (base58 peer
    ID), not the neighbour that forwarded it."""

    from_peer: str
    data: bytes


class Transport:
    """A running node's network endpoint. Create with `open_transport`, not directly."""

    peer_id: str
    listen_multiaddrs: list[str]
    bytes_sent: int  # gossip published + payload bytes served (app level, no framing)
    bytes_received: int  # gossip received + payload bytes fetched

    def __init__(
        self,
        key_pair: KeyPair,
        config: TransportConfig,
        host: IHost,
        pubsub: Pubsub,
        router: GossipSub,
        nursery: trio.Nursery,
        nat: NatTraversal | None = None,
        guard: PeerGuard | None = None,
    ) -> None:
        self.peer_id = peer_id_of(key_pair)
        self.config = config
        self.listen_multiaddrs = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self._id = ID.from_base58(self.peer_id)
        self._host = host
        self._pubsub = pubsub
        self._router = router
        self._nursery = nursery
        self._nat = nat
        self.guard = guard if guard is not None else PeerGuard(config.limits, topic=config.topic)
        self._payload_server = PayloadServer(on_sent=self._count_sent)
        self._msg_send, self._msg_recv = trio.open_memory_channel[GossipMessage](MESSAGE_BUFFER)
        self._dropped_messages = 0
        self._gossip_validator: Callable[[str, bytes], bool] | None = None

    # ---- gossip -------------------------------------------------------------------------

    async def publish(self, data: bytes) -> None:
        """Gossip `data` (<= 256 KiB) on the topic. Delivery is best effort.

        Note: GossipSub drops messages above 10/s per topic per forwarder, own publishes
        included, without an error.

        Raises:
            ValueError: len(data) > MAX_GOSSIP_BYTES (262144).
            TransportError: publishing took longer than PUBLISH_TIMEOUT_S.
        """
        data = bytes(data)
        if len(data) > MAX_GOSSIP_BYTES:
            raise ValueError(
                f"gossip message of {len(data)} bytes exceeds {MAX_GOSSIP_BYTES}; fetch large payloads instead"
            )
        try:
            with trio.fail_after(PUBLISH_TIMEOUT_S):
                await self._pubsub.publish(self.config.topic, data)
        except trio.TooSlowError:
            raise TransportError(f"publish took longer than {PUBLISH_TIMEOUT_S} s") from None
        self.bytes_sent += len(data)

    def messages(self) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Gossip from other peers (our own publishes are not echoed), in arrival order.

        One channel per transport, meant for one consumer. Buffer: MESSAGE_BUFFER messages;
        when it is full, newly arriving messages are dropped (and counted in a warning).
        """
        return self._msg_recv

    def topic_peers(self) -> list[str]:
        """Peers (base58) known to be subscribed to our topic."""
        return [p.to_base58() for p in self._pubsub.peer_topics.get(self.config.topic, ())]

    # ---- payloads -----------------------------------------------------------------------

    def set_payload_provider(self, fn: Callable[[bytes], bytes | None]) -> None:
        """Serve fetch requests with `fn(request) -> payload bytes, or None if unknown`.

        `fn` runs on the event loop: it must be fast (look up prepared bytes; do no training,
        compression or disk scans in it) or it stalls every connection. An exception in `fn`
        is logged and answered with status ERROR.
        """
        self._payload_server.provider = fn

    async def fetch(self, peer_id: str, request: bytes, *, max_bytes: int, timeout_s: float) -> bytes:
        """Fetch one payload from `peer_id` (base58) over `/bitswarm/payload/1.0.0`.

        `max_bytes`: largest payload accepted (bytes); `timeout_s`: deadline for the whole
        fetch (dial, request, every read), seconds.

        Raises:
            ValueError: request longer than 4096 bytes, bad peer ID, max_bytes < 0 or timeout_s <= 0.
            FetchError: reason 'timeout', 'not_found', 'oversize' (announced size > max_bytes),
                'connection' (dial/stream failed or closed early), 'protocol' (malformed
                response) or 'remote_error' (the peer's provider failed).
        """
        return await fetch_payload(self._host, peer_id, request, max_bytes=max_bytes,
                                   timeout_s=timeout_s, on_received=self._count_received)

    def blocked_peers(self) -> list[str]:
        """Peers (base58) blocked now for misbehaving (peer_guard.py)."""
        return self.guard.blocked_peers()

    def _disconnect_soon(self, peer_id: str) -> None:
        self._nursery.start_soon(self._disconnect, peer_id)

    async def _disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(DISCONNECT_TIMEOUT_S):
            try:
                await self._host.disconnect(ID.from_base58(peer_id))
            except Exception as e:  # noqa: BLE001 - it may be gone already
                log.debug("disconnecting %s failed: %s", peer_id, e)

    async def _expire_blocks(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.guard.expire()

    def _count_received(self, n: int) -> None:
        self.bytes_received += n

    def _count_sent(self, n: int) -> None:
        self.bytes_sent += n

    # ---- peers --------------------------------------------------------------------------

    @property
    def libp2p_host(self) -> IHost:
        """The py-libp2p host (for discovery protocols that speak libp2p themselves)."""
        return self._host

    def peer_paths(self) -> dict[str, str]:
        """Base58 peer ID -> 'direct' or 'relayed' (circuit relay v2), per connected peer; a peer
        reached both ways (during a hole punch's grace period) counts as direct."""
        return dict(self._nat._current_paths()) if self._nat is not None else {}

    @property
    def reachability(self) -> str:
        """AutoNAT's verdict on this node: 'public', 'private' or 'unknown'."""
        return self._nat.reachability if self._nat is not None else "unknown"

    @property
    def circuit_addrs(self) -> list[str]:
        """Our relayed addresses (…/p2p-circuit/p2p/<us>), one per relay holding a reservation."""
        return [a for a in map(str, self._host.get_addrs()) if is_circuit(a)]

    def connected_peers(self) -> list[str]:
        """Base58 IDs of peers with an open connection."""
        return [p.to_base58() for p, conns in list(self._host.get_network().connections.items()) if conns]

    async def connect(self, multiaddr: str) -> None:
        """Dial `multiaddr` (must end /p2p/<peer-id>) within config.dial_timeout_s seconds.
        A relayed address (<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>) is dialed through
        that relay (circuit relay v2); DCUtR then tries to make the connection direct.

        A no-op if already connected. py-libp2p spends a fixed ~250 ms per dial.

        Raises:
            ValueError: malformed multiaddr or missing /p2p/ part.
            ConnectError: dial failed or timed out.
        """
        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as e:
            raise ValueError(f"bad peer multiaddr {multiaddr!r}: {e}") from e
        if info.peer_id == self._id:
            raise ValueError(f"refusing to dial ourselves: {multiaddr}")
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                if not is_circuit(multiaddr):
                    await self._host.connect(info)
                elif self._host.get_network().get_connections(info.peer_id):
                    return
                elif self._nat is None:
                    raise ConnectError(f"cannot dial relayed address {multiaddr}: no relay transport")
                else:
                    await self._nat.dial_circuit(multiaddr)
        except ConnectError:
            raise
        except trio.TooSlowError:
            raise ConnectError(f"dial {multiaddr} timed out after {self.config.dial_timeout_s} s") from None
        except Exception as e:
            raise ConnectError(f"dial {multiaddr} failed: {type(e).__name__}: {e}") from e

    async def wait_for_topic_peers(self, n: int, timeout_s: float) -> list[str]:
        """Wait until >= `n` peers are subscribed to our topic; returns them.

        Raises:
            trio.TooSlowError: not reached within `timeout_s` seconds.
        """
        with trio.fail_after(timeout_s):
            while len(peers := self.topic_peers()) < n:
                await trio.sleep(0.05)
            return peers

    async def _pump_messages(self, subscription) -> None:  # type: ignore[no-untyped-def]
        while True:
            msg = await subscription.get()
            if msg.from_id == self._id.to_bytes():
                continue  # py-libp2p hands the publisher its own message back
            try:
                author = ID(msg.from_id).to_base58()
            except Exception:  # noqa: BLE001 - StrictSign checked it, but never die on input
                continue
            self.bytes_received += len(msg.data)
            try:
                self._msg_send.send_nowait(GossipMessage(from_peer=author, data=bytes(msg.data)))
            except trio.ClosedResourceError:
                # Shutting down: the transport closed the channel while a message that
                # subscription.get() had already returned was on its way (a 32-node run's node
                # exited 1 here after a successful job).
                return
            except trio.WouldBlock:
                self._dropped_messages += 1
                if self._dropped_messages in (1, 10, 100) or self._dropped_messages % 1000 == 0:
                    log.warning("gossip consumer too slow: %d messages dropped so far", self._dropped_messages)

    def set_gossip_validator(self, fn: Callable[[str, bytes], bool] | None) -> None:
        """Also require `fn(author peer ID base58, data)` for a gossip message to be delivered
        AND relayed to the mesh (gossipsub drops what its topic validator refuses), so a node
        never forwards what it would not accept. Runs on the event loop for every message: keep
        it fast; an exception in it counts as a refusal. A refusal lowers the forwarder's
        gossipsub score; returning IGNORE refuses without that (a message honest peers may
        still send, e.g. one we no longer need)."""
        self._gossip_validator = fn

    def _validate(self, forwarder: ID, msg) -> bool:  # type: ignore[no-untyped-def]
        # A raising validator kills the process: never let anything escape.
        try:
            if len(msg.data) > MAX_GOSSIP_BYTES:
                return False
            if self._gossip_validator is None or msg.from_id == self._id.to_bytes():
                return True
            verdict = self._gossip_validator(ID(msg.from_id).to_base58(), bytes(msg.data))
            if verdict is IGNORE:
                libp2p_compat.ignore_current_message()
                return False
            return bool(verdict)
        except Exception:  # noqa: BLE001
            return False


def security_options(key_pair: KeyPair) -> dict:
    """`sec_opt` for new_host with Noise only (plain new_host also accepts secio/plaintext)."""
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    }


def muxer_options() -> dict:
    """`muxer_opt` for new_host with Yamux only."""
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


@asynccontextmanager
async def open_transport(key_pair: KeyPair, config: TransportConfig, *,
                         discovery: Discovery | None = None) -> AsyncIterator[Transport]:
    """Start a libp2p host for `key_pair`, listening on `config.listen` and subscribed to
    `config.topic`; yields the Transport once both hold. `discovery` (default:
    StaticPeers(config.peers)) runs in the transport's nursery meanwhile, dialing the peers it
    finds (failures logged, retried with backoff). Leaving the block stops everything.

    Raises:
        RuntimeError: installed libp2p is not 0.8.1 (see libp2p_compat).
        ValueError: bad listen multiaddr; both `discovery` and `config.peers` given.
        OSError: listen address unusable, or the BITSWARM_RECORD_WIRE file cannot be opened.
    """
    if discovery is not None and config.peers:
        raise ValueError("give peers either in TransportConfig.peers or through discovery, not both")
    discovery = discovery if discovery is not None else StaticPeers(config.peers)
    libp2p_compat.apply()
    wire_recorder.active()  # open the record file now, so a bad path fails here, not mid-write
    try:
        listen = Multiaddr(config.listen)
        names = [p.name for p in listen.protocols()]
        ip = listen.value_for_protocol("ip4" if "ip4" in names else "ip6")
        port = int(listen.value_for_protocol("tcp"))
    except Exception as e:
        raise ValueError(f"bad listen multiaddr {config.listen!r} (need /ip4|ip6/<addr>/tcp/<port>): {e}") from e
    libp2p_compat.ensure_tcp_port_free(ip, port)

    host = new_host(
        key_pair=key_pair,
        sec_opt=security_options(key_pair),
        muxer_opt=muxer_options(),
        listen_addrs=[listen],
        psk=config.psk,
    )
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=config.heartbeat_s,  # type: ignore[arg-type]  # float works
        # Adaptive gossip raises the heartbeat to 30-60 s when "network health" is low,
        # which is always the case in a handful of peers: keep our interval.
        adaptive_gossip_enabled=False,
        score_params=score_params(),          # py-libp2p's defaults are all zero
        # Its own sliding 1 s limit (default 10/s, penalty 5 per message over) would bind
        # before our token bucket and punish honest relays' bursts: let ours decide.
        max_messages_per_topic_per_second=config.limits.gossip_msgs_burst,
    )
    pubsub = Pubsub(host, router, max_inbound_rpc_size=2 * MAX_GOSSIP_BYTES)
    # The hooks in libp2p_compat (patches 7-9) find the guard on the swarm and on pubsub.
    guard = PeerGuard(config.limits, topic=config.topic)
    guard.scorer, guard.pubsub = router.scorer, pubsub
    host.get_network()._bitswarm_guard = guard  # type: ignore[attr-defined]
    pubsub._bitswarm_guard = guard  # type: ignore[attr-defined]

    # An error raised in the caller's block is held here and re-raised after shutdown: libp2p's
    # own context managers cancel their nurseries while unwinding, and a Cancelled raised during
    # that cleanup would replace the caller's exception and then be absorbed by the cancelled
    # scope, so `raise ValueError` inside `async with open_transport(...)` would vanish.
    caller_error: BaseException | None = None
    nat = NatTraversal(host, relay=config.relay)
    async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
        async with background_trio_service(pubsub), background_trio_service(router):
            with trio.fail_after(10):
                await pubsub.wait_until_ready()
            await nursery.start(nat.run)
            transport = Transport(key_pair, config, host, pubsub, router, nursery, nat, guard)
            guard._block_peer = transport._disconnect_soon
            pubsub.set_topic_validator(config.topic, transport._validate, False)
            subscription = await pubsub.subscribe(config.topic)
            host.set_stream_handler(PAYLOAD_PROTOCOL_ID, transport._payload_server.handle)
            transport.listen_multiaddrs = [str(a) for a in host.get_addrs()]
            nursery.start_soon(transport._pump_messages, subscription)
            nursery.start_soon(discovery.run, transport)
            nursery.start_soon(transport._expire_blocks)
            log.info("transport %s listening on %s", transport.peer_id, transport.listen_multiaddrs)
            try:
                yield transport
            except BaseException as e:  # noqa: BLE001 - re-raised below, after shutdown
                caller_error = e
            finally:
                nursery.cancel_scope.cancel()
                transport._msg_send.close()
    if caller_error is not None:
        raise caller_error
