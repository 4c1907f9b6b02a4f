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

Not a patch, a check (`ensure_tcp_port_free`): the TCP transport listens with SO_REUSEPORT
(for hole punching), so a second node on an occupied fixed port starts "fine" and the kernel
splits incoming connections between the two processes. We refuse an occupied port up front.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
from importlib.metadata import PackageNotFoundError, version

import trio

log = logging.getLogger("bitswarm.federation.libp2p_compat")

SUPPORTED_LIBP2P_VERSION = "0.8.1"
_RESET_TIMEOUT_S = 2.0
AUTONAT_DIAL_TIMEOUT_S = 5.0
AUTONAT_MAX_DIALS = 4        # addresses tried per dial-back request (all carry the requester's IP)

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
        try:
            await original(self, msg_forwarder, msg)
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
