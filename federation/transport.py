"""libp2p transport for a bitswarm node: gossip on one topic plus a bulk payload protocol.

Stack: TCP, Noise only (py-libp2p's default also accepts secio and PLAINTEXT), Yamux only,
GossipSub (StrictSign) with a ~1 s heartbeat. Gossip carries small signed messages; payloads
(tens of MB) move over our own stream protocol `/bitswarm/payload/1.0.0`, because gossip drops
anything above 1 MiB silently and request_response fails above ~6.5 MB.

Payload protocol (all integers big-endian):
    request  = u32 length (<= 4096) + request bytes
    response = u8 status + u64 total length + chunks, each u32 length (1..65536) + bytes,
               until `total` bytes have been sent; then the server closes the stream.
    status: 0 OK, 1 NOT_FOUND (total = 0), 2 ERROR (provider failed; total = 0).

Every task runs in the nursery of `open_transport`; every network wait has a timeout.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from libp2p import new_host
from multiaddr import Multiaddr
from libp2p.abc import IHost, INetStream
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

from . import libp2p_compat, wire_recorder
from .discovery import DialError, Discovery, StaticPeers
from .identity import peer_id_of

log = logging.getLogger("bitswarm.federation.transport")

PAYLOAD_PROTOCOL_ID = TProtocol("/bitswarm/payload/1.0.0")
MAX_GOSSIP_BYTES = 256 * 1024  # py-libp2p drops gossip > 1 MiB silently; stay far below
MAX_REQUEST_BYTES = 4096
CHUNK_BYTES = 64 * 1024
STATUS_OK, STATUS_NOT_FOUND, STATUS_ERROR = 0, 1, 2
_U32 = struct.Struct(">I")
_RESPONSE_HEADER = struct.Struct(">BQ")

MESSAGE_BUFFER = 256  # gossip messages held for the consumer before new ones are dropped
SERVE_CONCURRENCY = 8  # payload requests served at once; more wait (bounds memory and CPU)
SERVE_IO_TIMEOUT_S = 10.0  # per read/write while serving: a stalled client is dropped
PUBLISH_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0


class TransportError(Exception):
    """Base class of transport errors."""


class FetchError(TransportError):
    """A payload fetch failed. `reason` is one of: timeout, not_found, oversize, connection,
    protocol, remote_error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class ConnectError(TransportError, DialError):
    """Dialing a peer failed or timed out."""


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
        self._provider: Callable[[bytes], bytes | None] | None = None
        self._serve_slots = trio.Semaphore(SERVE_CONCURRENCY)
        self._msg_send, self._msg_recv = trio.open_memory_channel[GossipMessage](MESSAGE_BUFFER)
        self._dropped_messages = 0

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
        self._provider = fn

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
        request = bytes(request)
        if len(request) > MAX_REQUEST_BYTES:
            raise ValueError(f"fetch request of {len(request)} bytes exceeds {MAX_REQUEST_BYTES}")
        if max_bytes < 0 or not timeout_s > 0:
            raise ValueError(f"need max_bytes >= 0 and timeout_s > 0, got {max_bytes}, {timeout_s}")
        target = _parse_peer_id(peer_id)
        stream: INetStream | None = None
        done = False
        try:
            with trio.fail_after(timeout_s):
                stream = await self._host.new_stream(target, [PAYLOAD_PROTOCOL_ID])
                await stream.write(_U32.pack(len(request)) + request)
                status, total = _RESPONSE_HEADER.unpack(await _read_exactly(stream, _RESPONSE_HEADER.size))
                if status == STATUS_NOT_FOUND:
                    raise FetchError("not_found", f"peer {peer_id} has no payload for request {request[:64]!r}")
                if status == STATUS_ERROR:
                    raise FetchError("remote_error", f"peer {peer_id} failed to produce the payload")
                if status != STATUS_OK:
                    raise FetchError("protocol", f"unknown status byte {status}")
                if total > max_bytes:
                    raise FetchError("oversize", f"payload of {total} bytes exceeds max_bytes={max_bytes}")
                data = bytearray()
                while len(data) < total:
                    (n,) = _U32.unpack(await _read_exactly(stream, 4))
                    if not 0 < n <= min(CHUNK_BYTES, total - len(data)):
                        raise FetchError("protocol", f"bad chunk length {n} ({len(data)}/{total} received)")
                    data += await _read_exactly(stream, n)
                    self.bytes_received += n
                done = True
                return bytes(data)
        except trio.TooSlowError:
            raise FetchError("timeout", f"fetch from {peer_id} exceeded {timeout_s} s") from None
        except FetchError:
            raise
        except Exception as e:  # libp2p raises many types for dial/stream failures
            raise FetchError("connection", f"fetch from {peer_id} failed: {type(e).__name__}: {e}") from e
        finally:
            if stream is not None:
                await _close_stream(stream, reset=not done)

    async def _serve_payload(self, stream: INetStream) -> None:
        # A libp2p stream handler must never raise: it would kill the whole process.
        peer = _peer_str(stream)
        try:
            with trio.fail_after(SERVE_IO_TIMEOUT_S):
                (n,) = _U32.unpack(await _read_exactly(stream, 4))
                if n > MAX_REQUEST_BYTES:
                    log.warning("payload request of %d bytes from %s refused (max %d)", n, peer, MAX_REQUEST_BYTES)
                    await _close_stream(stream, reset=True)
                    return
                request = await _read_exactly(stream, n)
            async with self._serve_slots:
                payload, status = self._lookup(request, peer)
                with trio.fail_after(SERVE_IO_TIMEOUT_S):
                    await stream.write(_RESPONSE_HEADER.pack(status, len(payload)))
                view = memoryview(payload)
                for start in range(0, len(view), CHUNK_BYTES):
                    chunk = view[start : start + CHUNK_BYTES]
                    with trio.fail_after(SERVE_IO_TIMEOUT_S):  # per chunk: slow readers are fine, dead ones not
                        await stream.write(_U32.pack(len(chunk)) + chunk)
                    self.bytes_sent += len(chunk)
            await _close_stream(stream, reset=False)
        except Exception as e:  # noqa: BLE001 - see above
            log.info("serving payload to %s aborted: %s: %s", peer, type(e).__name__, e)
            await _close_stream(stream, reset=True)

    def _lookup(self, request: bytes, peer: str) -> tuple[bytes, int]:
        if self._provider is None:
            return b"", STATUS_NOT_FOUND
        try:
            payload = self._provider(request)
        except Exception:  # noqa: BLE001 - a provider bug must not kill the node
            log.exception("payload provider failed for request %r from %s", request[:64], peer)
            return b"", STATUS_ERROR
        if payload is None:
            return b"", STATUS_NOT_FOUND
        return bytes(payload), STATUS_OK

    # ---- peers --------------------------------------------------------------------------

    def connected_peers(self) -> list[str]:
        """Base58 IDs of peers with an open connection."""
        return [p.to_base58() for p, conns in list(self._host.get_network().connections.items()) if conns]

    async def connect(self, multiaddr: str) -> None:
        """Dial `multiaddr` (must end /p2p/<peer-id>) within config.dial_timeout_s seconds.

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
                await self._host.connect(info)
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
            except trio.WouldBlock:
                self._dropped_messages += 1
                if self._dropped_messages in (1, 10, 100) or self._dropped_messages % 1000 == 0:
                    log.warning("gossip consumer too slow: %d messages dropped so far", self._dropped_messages)

    def _validate(self, forwarder: ID, msg) -> bool:  # type: ignore[no-untyped-def]
        # A raising validator kills the process: never let anything escape.
        try:
            return len(msg.data) <= MAX_GOSSIP_BYTES
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
    )
    pubsub = Pubsub(host, router, max_inbound_rpc_size=2 * MAX_GOSSIP_BYTES)

    # An error raised in the caller's block is held here and re-raised after shutdown: libp2p's
    # own context managers cancel their nurseries while unwinding, and a Cancelled raised during
    # that cleanup would replace the caller's exception and then be absorbed by the cancelled
    # scope, so `raise ValueError` inside `async with open_transport(...)` would vanish.
    caller_error: BaseException | None = None
    async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
        async with background_trio_service(pubsub), background_trio_service(router):
            with trio.fail_after(10):
                await pubsub.wait_until_ready()
            transport = Transport(key_pair, config, host, pubsub, router, nursery)
            pubsub.set_topic_validator(config.topic, transport._validate, False)
            subscription = await pubsub.subscribe(config.topic)
            host.set_stream_handler(PAYLOAD_PROTOCOL_ID, transport._serve_payload)
            transport.listen_multiaddrs = [str(a) for a in host.get_addrs()]
            nursery.start_soon(transport._pump_messages, subscription)
            nursery.start_soon(discovery.run, transport)
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


# ---- helpers ----------------------------------------------------------------------------


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    """Read exactly n bytes; the caller's cancel scope bounds the time. Raises EOFError."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream closed after {len(buf)}/{n} bytes")
        buf += chunk
    return bytes(buf)


async def _close_stream(stream: INetStream, *, reset: bool) -> None:
    # Shielded: cleanup must run even when we got here through cancellation.
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception as e:  # noqa: BLE001 - the stream may already be gone
            log.debug("closing stream failed: %s", e)


def _parse_peer_id(peer_id: str) -> ID:
    try:
        pid = ID.from_base58(peer_id)
        if not pid.to_bytes():
            raise ValueError("empty")
        return pid
    except Exception as e:
        raise ValueError(f"bad peer ID {peer_id!r}: {e}") from e


def _peer_str(stream: INetStream) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:  # noqa: BLE001
        return "?"
