"""Every workaround of py-libp2p 0.8.1 internals lives here, and only here.

Each patch names the upstream behaviour it fixes; tests/federation/test_libp2p_compat.py has one
test per patch that exercises the ORIGINAL function and fails once upstream changes, so the
patch can be dropped or rewritten at the next version bump.

Patches (applied once, by `apply()`; idempotent):

1. `Pubsub.stream_handler`: upstream catches StreamError/ParseError/IncompleteReadError only.
   A length-prefixed frame whose body is not a valid RPC protobuf raises
   `google.protobuf.message.DecodeError` from `continuously_read_stream`; it escapes the
   stream handler, the swarm's connection nursery and the host, and ends the process. One
   hostile peer, one frame. We catch every Exception there, log it, reset the stream and
   drop the peer from pubsub (what upstream does for the errors it knows).
2. `Pubsub.push_msg` (run as a pubsub task per received message): `signature_validator`
   re-raises when a message carries an undecodable `key` field and a non-identity `from`
   peer ID, which crashes the pubsub service. We catch, log and drop the message.
3. `NoiseTransportReadWriter.encrypt`: hook for the plaintext wire recorder
   (`wire_recorder.py`, enabled by BITSWARM_RECORD_WIRE); encrypt() sees every plaintext
   chunk the Noise session writes (yamux frames carrying gossip and our streams).
4. `BasicHost.get_addrs`: it strips "the" /p2p/ part of every announced address with
   `decapsulate(/p2p/<first p2p value>)`, which on a relayed address
   `<relay addr>/p2p/<relay>/p2p-circuit` cuts everything from the relay's ID on and announces
   the relay's IP with OUR peer ID (a wrong direct address; the circuit one is lost). We append
   the host's circuit addresses (`host._bitswarm_circuit_addrs`, set by transport/nat.py) after
   the original's result instead, each followed by /p2p/<our id>.
5. `AutoNATService._try_dial`: the dial-back uses `host.connect`, which returns at once when any
   connection to the peer exists. The requester always has one (it is asking over it), so every
   node was told "reachable". We dial the advertised address afresh (TCP + Noise handshake,
   proving the peer ID; bounded by AUTONAT_DIAL_TIMEOUT_S, at most AUTONAT_MAX_DIALS addresses)
   and close that connection.

6. `Yamux` receive windows: py-libp2p 0.8.1 subtracts each DATA frame from the stream's
   receive window and, when a peer sends past it, only logs "peer exceeded receive window"
   and keeps buffering (a peer ignoring flow control grows the node ~1:1, 1 GB in 30 s). We
   make every stream buffer check the frame against the window before it is buffered; a peer
   that exceeds it gets its whole connection closed, as go-yamux and hashicorp/yamux do
   (ErrRecvWindowExceeded ends the session). py-libp2p's window auto-tuning also grants up
   to 16 MiB per stream after a few small reads (it doubles the target on every read within
   4 RTT, which on a LAN is every read), so a stream whose reader took 8 bytes may legally
   hold 16 MiB, x 64 streams. We cap the window at YAMUX_MAX_WINDOW (4 MiB, still 80 MB/s per
   stream at 50 ms RTT) and a connection's buffered bytes over all its streams at
   YAMUX_MAX_CONN_BUFFER (8 MiB); a peer past either is closed like a window violator.
7. `SwarmConn._handle_muxed_stream`: py-libp2p caps outbound streams per connection (256)
   but accepts any number of inbound ones, each a task and a buffer. Over the transport's
   `max_inbound_streams_per_conn` (PeerGuard), a new inbound stream is reset at once.
8. `Swarm.add_conn`: the connection gate. Every new connection (after the Noise handshake,
   so the peer ID is proven) is checked against the transport's PeerGuard (blocked peers,
   total / per-peer / per-IP limits) and closed if refused. py-libp2p's own resource manager
   (rcmgr, on by default) allows 1000 connections and 10,000 streams with no per-peer or
   per-IP bound, far more than a laptop should hold for strangers.
9. `Pubsub.push_msg` also runs the transport's PeerGuard (see patch 2's wrapper): a message
   from a blocked or over-rate forwarder is dropped before its signature is checked; a bad
   signature (counted through the wrapped `signature_validator`, which py-libp2p calls with
   the message only) and a message our validator refused lower the forwarder's gossipsub
   score, and a forwarder below the graylist threshold is blocked.
10. Log lines py-libp2p writes per offending message (gossipsub's "Rate limit exceeded for
   peer", yamux's per-frame errors, a failed pubsub stream per stranger): at most 3 per kind
   per minute pass (a filter on those loggers), so a flooder cannot fill the log.
11. `maybe_consume_signed_record` (pubsub): py-libp2p attaches the sender's signed peer record
   to every pubsub RPC and parses and Ed25519-verifies it on every RPC received, ~9% of a
   32-member node's CPU. A record whose bytes equal the last one verified from the same peer
   is accepted without verifying again (same bytes, same verdict; the peerstore holds it).
12. yamux credit release: py-libp2p 0.8.1 sends a WINDOW_UPDATE frame after every read
   (`PY_YAMUX_RELEASE_ON_READ` defaults to 1), one encrypted write per gossip RPC read, ~11%
   of a busy node's CPU. We default it to 0: credit goes back once half the window is
   consumed, the go-yamux / hashicorp yamux rule (an explicit setting in the environment wins).
13. `env_to_send_in_RPC` (pubsub, gossipsub): every outbound pubsub RPC rebuilds the host's
   address set (`get_addrs`, multiaddr parsing) to check whether its cached signed peer record
   is still current, ~8% of a 32-member node's CPU. We reuse the answer for SPR_REUSE_S
   seconds per host (addresses change on a NAT or relay event, not per message; peers also
   learn them through identify).
14. `GossipSub._emit_idontwant_for_message`: py-libp2p sends an IDONTWANT RPC (with our signed
   peer record, ~200 bytes) to every mesh peer for every message it publishes or forwards,
   whatever its size; ~11% of a 32-member node's CPU, and more bytes than our small manifests.
   Gossipsub v1.2 meant IDONTWANT for large messages (go-libp2p: only above
   GossipSubIDontWantMessageThreshold, 1 KiB); we send it only for messages of at least
   IDONTWANT_MIN_BYTES (round records, secure-aggregation shares).
15. `PeerScorer.on_invalid_message`: py-libp2p's topic validators have one refusal (no
   libp2p IGNORE verdict), and every refusal scores the forwarder down. An honest peer that is
   a round behind forwards messages we no longer need; in a 32-member swarm under load that
   blocked 14 honest peers for 300 s. A validator that calls `ignore_current_message()` before
   refusing (the transport does, for our validator's IGNORE) refuses the message without the
   penalty, as go-libp2p's ValidationIgnore does.

Not a patch, a check (`ensure_tcp_port_free`): the TCP transport listens with SO_REUSEPORT
(for hole punching), so a second node on an occupied fixed port starts "fine" and the kernel
splits incoming connections between the two processes. We refuse an occupied port up front.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import socket
import time
from importlib.metadata import PackageNotFoundError, version

import trio

from .log_limit import RateLimitedLog

log = logging.getLogger("bitswarm.federation.libp2p_compat")
_LOG = RateLimitedLog(log, burst=5, period_s=60.0)   # peers choose how often these fire

SUPPORTED_LIBP2P_VERSION = "0.8.1"
_RESET_TIMEOUT_S = 2.0
AUTONAT_DIAL_TIMEOUT_S = 5.0
AUTONAT_MAX_DIALS = 4        # addresses tried per dial-back request (all carry the requester's IP)
GATE_CLOSE_TIMEOUT_S = 2.0   # closing a refused connection
DEFAULT_MAX_INBOUND_STREAMS = 64   # per connection, for hosts without a PeerGuard
YAMUX_MAX_WINDOW = 4 * 1024 * 1024        # receive window per stream, bytes (upstream: 16 MiB)
YAMUX_MAX_CONN_BUFFER = 8 * 1024 * 1024   # unread bytes per connection, all streams together

_applied = False
# Originals, kept for the tests that pin upstream behaviour.
ORIGINALS: dict[str, object] = {}


def installed_libp2p_version() -> str:
    """Version of the installed `libp2p` distribution ('' if metadata is missing)."""
    try:
        return version("libp2p")
    except PackageNotFoundError:
        return ""


def check_version() -> None:
    """Raise RuntimeError unless libp2p 0.8.1 is installed: the patches rely on its internals."""
    found = installed_libp2p_version()
    if found != SUPPORTED_LIBP2P_VERSION:
        msg = (
            f"bitswarm.federation needs libp2p=={SUPPORTED_LIBP2P_VERSION} (found {found or 'none'}):"
            " its hostile-peer guards patch that version's internals. Re-check every patch in"
            " federation/libp2p_compat.py (and its tests) before changing the pin."
        )
        log.critical(msg)
        raise RuntimeError(msg)


def apply() -> None:
    """Check the libp2p version, then install all patches once (idempotent).

    Raises:
        RuntimeError: the installed libp2p is not 0.8.1 (nothing is patched).
    """
    global _applied
    if _applied:
        return
    check_version()
    _guard_pubsub_stream_handler()
    _guard_pubsub_push_msg()
    _hook_noise_encrypt()
    _announce_circuit_addrs()
    _autonat_dial_back_afresh()
    _enforce_yamux_receive_window()
    _limit_inbound_streams()
    _gate_connections()
    _count_bad_signatures()
    _quiet_per_message_logs()
    _cache_sender_records()
    _reuse_local_record()
    _idontwant_for_large_messages_only()
    _ignored_messages_do_not_count()
    _batch_yamux_credit()
    _applied = True
    log.debug("libp2p %s compat patches applied", SUPPORTED_LIBP2P_VERSION)


def _guard_pubsub_stream_handler() -> None:
    from libp2p.pubsub.pubsub import Pubsub

    original = Pubsub.stream_handler
    ORIGINALS["Pubsub.stream_handler"] = original

    @functools.wraps(original)
    async def stream_handler(self, stream) -> None:  # type: ignore[no-untyped-def]
        try:
            await original(self, stream)
        except Exception as error:  # noqa: BLE001 - anything escaping here kills the process
            peer_id = _peer_of(stream)
            log.warning(
                "rejected pubsub stream from peer %s: %s: %s (stream reset, peer dropped from pubsub)",
                peer_id,
                type(error).__name__,
                error,
            )
            with trio.move_on_after(_RESET_TIMEOUT_S):
                try:
                    await stream.reset()
                except Exception as reset_error:  # noqa: BLE001 - stream may already be dead
                    log.debug("reset after rejected pubsub stream failed: %s", reset_error)
            if peer_id is not None:
                try:
                    self._handle_dead_peer(peer_id)
                except Exception as cleanup_error:  # noqa: BLE001
                    log.debug("dropping peer %s from pubsub failed: %s", peer_id, cleanup_error)

    Pubsub.stream_handler = stream_handler  # type: ignore[method-assign]


def _guard_pubsub_push_msg() -> None:
    from libp2p.pubsub.pubsub import Pubsub

    original = Pubsub.push_msg
    ORIGINALS["Pubsub.push_msg"] = original

    @functools.wraps(original)
    async def push_msg(self, msg_forwarder, msg) -> None:  # type: ignore[no-untyped-def]
        guard = getattr(self, "_bitswarm_guard", None)
        try:
            if guard is not None:                 # patch 9: before any signature check
                forwarder = msg_forwarder.to_base58()
                if not guard.admit_message(forwarder, len(msg.data), msg_forwarder):
                    return
                _FORWARDER.set((guard, forwarder))
            await original(self, msg_forwarder, msg)
            if guard is not None:
                guard.judge(forwarder, msg_forwarder)
        except Exception as error:  # noqa: BLE001 - a raising pubsub task crashes the service
            log.warning(
                "dropped pubsub message forwarded by %s: %s: %s", msg_forwarder, type(error).__name__, error
            )

    Pubsub.push_msg = push_msg  # type: ignore[method-assign]


def _hook_noise_encrypt() -> None:
    from libp2p.security.noise.io import NoiseTransportReadWriter

    from . import wire_recorder

    original = NoiseTransportReadWriter.encrypt
    ORIGINALS["NoiseTransportReadWriter.encrypt"] = original

    @functools.wraps(original)
    def encrypt(self, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
        ciphertext = original(self, data)
        recorder = wire_recorder.active()
        if recorder is not None:
            recorder.record(data, ciphertext)
        return ciphertext

    NoiseTransportReadWriter.encrypt = encrypt  # type: ignore[method-assign]


def _announce_circuit_addrs() -> None:
    from libp2p.host.basic_host import BasicHost
    from multiaddr import Multiaddr

    original = BasicHost.get_addrs
    ORIGINALS["BasicHost.get_addrs"] = original

    @functools.wraps(original)
    def get_addrs(self):  # type: ignore[no-untyped-def]
        addrs = original(self)
        circuits = getattr(self, "_bitswarm_circuit_addrs", ())
        if circuits:
            me = Multiaddr(f"/p2p/{self.get_id()!s}")
            addrs = addrs + [Multiaddr(str(c)).encapsulate(me) for c in circuits]
        return addrs

    BasicHost.get_addrs = get_addrs  # type: ignore[method-assign]


def _autonat_dial_back_afresh() -> None:
    from libp2p.host.autonat.autonat import AutoNATService
    from multiaddr import Multiaddr

    ORIGINALS["AutoNATService._try_dial"] = AutoNATService._try_dial

    async def _try_dial(self, peer_id, addrs):  # type: ignore[no-untyped-def]
        network = self.host.get_network()
        for raw in addrs[:AUTONAT_MAX_DIALS]:        # every one can cost a 5 s dial
            try:
                addr = Multiaddr(raw)
                transport = network.transport_manager.transport_for_dialing(addr)
                if transport is None or "/p2p-circuit" in str(addr):
                    continue
                with trio.fail_after(AUTONAT_DIAL_TIMEOUT_S):
                    conn = await transport.dial(addr)
                    try:
                        await network.upgrader.upgrade_security(conn, True, peer_id)
                    finally:
                        with trio.move_on_after(1.0):
                            await conn.close()
                return bytes(raw)
            except Exception as e:  # noqa: BLE001 - unreachable, refused, wrong peer: next one
                log.debug("AutoNAT dial-back to %s at %r failed: %s", peer_id, raw, e)
        return None

    AutoNATService._try_dial = _try_dial  # type: ignore[method-assign]


# ---- 6. yamux receive windows ------------------------------------------------------------


class YamuxWindowExceeded(Exception):
    """A peer sent more on a yamux stream than the receive window it was granted."""


class _WindowedBuffer(bytearray):
    """A yamux stream's receive buffer that refuses a frame larger than the stream's window.

    py-libp2p 0.8.1 calls `extend(frame)` before subtracting the frame from `recv_window`, in
    each of its three DATA paths (SYN, ACK, plain), so `recv_window` is still the credit the
    peer had when it sent the frame."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._conn = conn
        self._sid: int | None = None

    def extend(self, data) -> None:  # type: ignore[no-untyped-def, override]
        stream = self._conn.streams.get(self._sid)
        if stream is None:
            return super().extend(data)
        buffered = sum(map(len, self._conn.stream_buffers.values()))
        if len(data) > stream.recv_window or buffered + len(data) > YAMUX_MAX_CONN_BUFFER:
            peer = self._conn.peer_id
            _LOG.log(logging.WARNING, f"window {peer}", "peer %s exceeded the yamux receive window "
                     "on stream %d (%d bytes sent, %d granted, %d unread on the connection): "
                     "connection closed", peer, self._sid, len(data), stream.recv_window, buffered)
            # Shutting down makes handle_incoming stop after this frame (the raise is caught
            # in its DATA path; the wrapped handle_incoming then closes the connection).
            self._conn.event_shutting_down.set()
            raise YamuxWindowExceeded(f"stream {self._sid}: {len(data)} bytes > window {stream.recv_window}")
        super().extend(data)


class _WindowedBuffers(dict):
    """Yamux.stream_buffers whose every new buffer is a _WindowedBuffer."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._conn = conn

    def __setitem__(self, stream_id, buf) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(buf, _WindowedBuffer):
            wrapped = _WindowedBuffer(self._conn)
            wrapped += buf
            buf = wrapped
        buf._sid = stream_id
        super().__setitem__(stream_id, buf)


def _enforce_yamux_receive_window() -> None:
    import libp2p.stream_muxer.yamux.yamux as yamux_module
    from libp2p.stream_muxer.yamux.yamux import Yamux

    ORIGINALS["yamux.MAX_WINDOW_SIZE"] = yamux_module.MAX_WINDOW_SIZE
    yamux_module.MAX_WINDOW_SIZE = YAMUX_MAX_WINDOW     # read as a module global by auto-tuning

    original_init, original_incoming = Yamux.__init__, Yamux.handle_incoming
    ORIGINALS["Yamux.__init__"] = original_init
    ORIGINALS["Yamux.handle_incoming"] = original_incoming

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        self.stream_buffers = _WindowedBuffers(self)

    @functools.wraps(original_incoming)
    async def handle_incoming(self) -> None:  # type: ignore[no-untyped-def]
        await original_incoming(self)
        # Upstream's loop ends without closing the connection when its DATA path swallowed
        # the YamuxWindowExceeded raised above: close it here (upstream's own error cleanup).
        if self.event_shutting_down.is_set() and not self.event_closed.is_set():
            await self._cleanup_on_error()

    Yamux.__init__ = __init__  # type: ignore[method-assign]
    Yamux.handle_incoming = handle_incoming  # type: ignore[method-assign]


# ---- 7. inbound streams per connection --------------------------------------------------


def _limit_inbound_streams() -> None:
    from libp2p.network.connection.swarm_connection import SwarmConn

    original = SwarmConn._handle_muxed_stream
    ORIGINALS["SwarmConn._handle_muxed_stream"] = original

    @functools.wraps(original)
    async def _handle_muxed_stream(self, muxed_stream) -> None:  # type: ignore[no-untyped-def]
        guard = getattr(self.swarm, "_bitswarm_guard", None)
        cap = guard.limits.max_inbound_streams_per_conn if guard is not None else DEFAULT_MAX_INBOUND_STREAMS
        open_now = getattr(self, "_bitswarm_inbound", 0)
        if open_now >= cap:
            if guard is not None:
                guard.stream_refused(str(self.muxed_conn.peer_id))
            with trio.move_on_after(GATE_CLOSE_TIMEOUT_S):
                try:
                    await muxed_stream.reset()
                except Exception as e:  # noqa: BLE001 - the stream may be gone already
                    log.debug("resetting a stream over the cap failed: %s", e)
            return
        self._bitswarm_inbound = open_now + 1
        try:
            await original(self, muxed_stream)
        finally:
            self._bitswarm_inbound -= 1

    SwarmConn._handle_muxed_stream = _handle_muxed_stream  # type: ignore[method-assign]


# ---- 8. the connection gate --------------------------------------------------------------


def _is_relayed(muxed_conn) -> bool:  # type: ignore[no-untyped-def]
    """True for a circuit relay v2 connection (its raw connection is a stream over the relay)."""
    from libp2p.connection_types import ConnectionType
    try:
        return muxed_conn.get_connection_type() == ConnectionType.RELAYED
    except Exception:  # noqa: BLE001 - not every connection knows its type
        return False


def _remote_ip(muxed_conn) -> str | None:  # type: ignore[no-untyped-def]
    try:
        addr = muxed_conn.secured_conn.get_remote_address()
        return str(addr[0]) if addr else None
    except Exception:  # noqa: BLE001 - not every transport knows
        return None


def _gate_connections() -> None:
    from libp2p.network.swarm import Swarm, SwarmException
    from libp2p.rcmgr import Direction

    original = Swarm.add_conn
    ORIGINALS["Swarm.add_conn"] = original

    @functools.wraps(original)
    async def add_conn(self, muxed_conn, direction: str = "unknown"):  # type: ignore[no-untyped-def]
        guard = getattr(self, "_bitswarm_guard", None)
        if guard is None:
            return await original(self, muxed_conn, direction)
        peer = muxed_conn.peer_id
        existing = self.connections.get(peer, [])
        if any(c.muxed_conn is muxed_conn for c in existing):     # add_conn dedups
            return await original(self, muxed_conn, direction)
        # Connections admitted but still inside add_conn (it awaits before registering them)
        # count too, or a burst of handshakes finishing together would all pass.
        pending = self.__dict__.setdefault("_bitswarm_pending", {})
        relayed = _is_relayed(muxed_conn)
        # A relayed connection's socket is the relay's: it says nothing about the peer's IP.
        ip = None if relayed else _remote_ip(muxed_conn)
        inbound = direction == "inbound"
        live = [c for conns in self.connections.values() for c in conns]
        registered = {id(c.muxed_conn) for c in live}
        known = [(c.muxed_conn.peer_id, None if _is_relayed(c.muxed_conn) else _remote_ip(c.muxed_conn),
                  c.direction == Direction.INBOUND, _is_relayed(c.muxed_conn))
                 for c in live] + [v for k, v in pending.items() if k not in registered]
        from_ip = sum(1 for _p, i, inb, _r in known if inb and ip is not None and i == ip)
        # Per peer and path: two peers that dial each other's circuit address at once hold two
        # relayed connections, and the direct one a hole punch makes must still pass (counted
        # together, it was refused at every attempt: tests/federation/nat/test_nat_paths.py).
        of_peer = sum(1 for p, _i, _inb, r in known if p == peer and r == relayed)
        reason = guard.connection_refusal(str(peer), ip, inbound, len(known), of_peer, from_ip)
        if reason is None:
            pending[id(muxed_conn)] = (peer, ip, inbound, relayed)
            try:
                return await original(self, muxed_conn, direction)
            finally:
                pending.pop(id(muxed_conn), None)
        with trio.CancelScope(shield=True), trio.move_on_after(GATE_CLOSE_TIMEOUT_S):
            try:
                await muxed_conn.close()
            except Exception as e:  # noqa: BLE001
                log.debug("closing a refused connection failed: %s", e)
        if inbound:
            return None                   # the listener ignores add_conn's result
        raise SwarmException(f"connection to {peer} refused: {reason}")

    Swarm.add_conn = add_conn  # type: ignore[method-assign]


# ---- 9. bad signatures count against the forwarder --------------------------------------

# (guard, forwarder base58) of the push_msg task running now; trio gives each task its own
# context, so concurrent push_msg tasks do not see each other's value.
_FORWARDER: contextvars.ContextVar = contextvars.ContextVar("bitswarm_forwarder", default=None)


def _count_bad_signatures() -> None:
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.signature_validator
    ORIGINALS["pubsub.signature_validator"] = original

    @functools.wraps(original)
    def signature_validator(msg) -> bool:  # type: ignore[no-untyped-def]
        ok = original(msg)
        if not ok:
            current = _FORWARDER.get()
            if current is not None:
                current[0].on_bad_signature(current[1])
        return ok

    pubsub_module.signature_validator = signature_validator


# ---- 10. py-libp2p's own per-message log lines ------------------------------------------

# Lines py-libp2p 0.8.1 writes once per offending message or connection, at WARNING/ERROR,
# so a flooder chooses how fast they fill the log; keyed by their opening words.
_PER_MESSAGE_LOGS = {
    "libp2p.pubsub.gossipsub": ("Rate limit exceeded for peer",),
    "libp2p.stream_muxer.yamux.yamux": ("Error reading data for stream", "Error in handle_incoming"),
    "libp2p.host.basic_host": ("Failed to open stream to peer",),
}


class _RateLimitFilter(logging.Filter):
    """Passes at most `burst` records per key per `period_s`; the rest are dropped."""

    def __init__(self, prefixes: tuple[str, ...], burst: int = 3, period_s: float = 60.0) -> None:
        super().__init__()
        self.prefixes, self.burst, self.period_s = prefixes, burst, period_s
        self._windows: dict[str, list] = {}      # prefix -> [window start, records passed]

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        prefix = next((p for p in self.prefixes if text.startswith(p)), None)
        if prefix is None:
            return True
        now = time.monotonic()
        window = self._windows.setdefault(prefix, [now, 0])
        if now - window[0] >= self.period_s:
            window[:] = [now, 0]
        window[1] += 1
        return window[1] <= self.burst


def _quiet_per_message_logs() -> None:
    for name, prefixes in _PER_MESSAGE_LOGS.items():
        logging.getLogger(name).addFilter(_RateLimitFilter(prefixes))


SPR_REUSE_S = 2.0     # how long our own signed peer record is reused without re-checking


def _reuse_local_record() -> None:
    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.env_to_send_in_RPC
    ORIGINALS["pubsub.env_to_send_in_RPC"] = original

    @functools.wraps(original)
    def env_to_send(host) -> tuple[bytes, bool]:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        cached = getattr(host, "_bitswarm_spr", None)
        if cached is not None and now - cached[0] < SPR_REUSE_S:
            return cached[1], False
        envelope, created = original(host)
        host._bitswarm_spr = (now, envelope)
        return envelope, created

    pubsub_module.env_to_send_in_RPC = env_to_send
    gossipsub_module.env_to_send_in_RPC = env_to_send


IDONTWANT_MIN_BYTES = 1024     # go-libp2p's GossipSubIDontWantMessageThreshold
_PUBLISHING_BYTES: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "bitswarm_publishing_bytes", default=None)


def _idontwant_for_large_messages_only() -> None:
    from libp2p.pubsub.gossipsub import GossipSub

    publish, emit = GossipSub.publish, GossipSub._emit_idontwant_for_message
    ORIGINALS["GossipSub.publish"] = publish
    ORIGINALS["GossipSub._emit_idontwant_for_message"] = emit

    @functools.wraps(publish)
    async def publish_sized(self, msg_forwarder, pubsub_msg) -> None:  # type: ignore[no-untyped-def]
        token = _PUBLISHING_BYTES.set(len(pubsub_msg.data))
        try:
            await publish(self, msg_forwarder, pubsub_msg)
        finally:
            _PUBLISHING_BYTES.reset(token)

    @functools.wraps(emit)
    async def emit_if_large(self, msg_id, topic_ids) -> None:  # type: ignore[no-untyped-def]
        size = _PUBLISHING_BYTES.get()
        if size is not None and size < IDONTWANT_MIN_BYTES:
            return
        await emit(self, msg_id, topic_ids)

    GossipSub.publish = publish_sized  # type: ignore[method-assign]
    GossipSub._emit_idontwant_for_message = emit_if_large  # type: ignore[method-assign]


_IGNORED: contextvars.ContextVar[bool] = contextvars.ContextVar("bitswarm_ignored", default=False)


def ignore_current_message() -> None:
    """Called by a topic validator about to refuse the message it is judging: the refusal is
    an IGNORE (not relayed, not delivered, no score penalty for the forwarder; patch 15).
    Scoped to the pubsub task handling this one message."""
    _IGNORED.set(True)


def _ignored_messages_do_not_count() -> None:
    from libp2p.pubsub.score import PeerScorer

    original = PeerScorer.on_invalid_message
    ORIGINALS["PeerScorer.on_invalid_message"] = original

    @functools.wraps(original)
    def on_invalid_message(self, peer, topic) -> None:  # type: ignore[no-untyped-def]
        if _IGNORED.get():
            return
        original(self, peer, topic)

    PeerScorer.on_invalid_message = on_invalid_message  # type: ignore[method-assign]


def _batch_yamux_credit() -> None:
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")   # read by yamux at call time


SENDER_RECORD_CACHE = 4096     # peers whose last verified signed peer record is remembered


def _cache_sender_records() -> None:
    from collections import OrderedDict

    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.maybe_consume_signed_record
    ORIGINALS["pubsub.maybe_consume_signed_record"] = original
    verified: OrderedDict[object, bytes] = OrderedDict()       # peer ID -> record bytes

    @functools.wraps(original)
    def consume(msg, host, peer_id) -> bool:  # type: ignore[no-untyped-def]
        if not msg.HasField("senderRecord"):
            return original(msg, host, peer_id)
        record = bytes(msg.senderRecord)
        if verified.get(peer_id) == record:
            verified.move_to_end(peer_id)
            return True
        ok = original(msg, host, peer_id)
        if ok:
            verified[peer_id] = record
            verified.move_to_end(peer_id)
            while len(verified) > SENDER_RECORD_CACHE:
                verified.popitem(last=False)
        return ok

    # Both modules import the function by name: the RPC reader (pubsub) and the control
    # handler (gossipsub) each call it.
    pubsub_module.maybe_consume_signed_record = consume
    gossipsub_module.maybe_consume_signed_record = consume


def ensure_tcp_port_free(ip: str, port: int) -> None:
    """Raise OSError(EADDRINUSE) if something already listens on (ip, port); port 0 passes.

    A plain bind (SO_REUSEADDR only, which tolerates TIME_WAIT but not a live listener)
    fails against a SO_REUSEPORT listener, which is the conflict libp2p's listener hides.
    There is a small race until the host binds; it only matters for two nodes started at once.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"TCP port {ip}:{port} is already in use (another node?)") from e
            raise


def _peer_of(stream):  # type: ignore[no-untyped-def]
    try:
        return stream.muxed_conn.peer_id
    except Exception:  # noqa: BLE001
        return None
