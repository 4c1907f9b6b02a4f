"""The payload stream protocol `/bitswarm/payload/1.0.0`: one request, one chunked response.

Payloads (tens of MB) move over this protocol, not gossip: gossip drops anything above 1 MiB
silently and py-libp2p's request_response fails above ~6.5 MB.

Wire format (all integers big-endian):
    request  = u32 length (<= 4096) + request bytes
    response = u8 status + u64 total length + chunks, each u32 length (1..65536) + bytes,
               until `total` bytes have been sent; then the server closes the stream.
    status: 0 OK, 1 NOT_FOUND (total = 0), 2 ERROR (provider failed; total = 0).

Every read and write has a timeout; a stream handler never raises (it would end the process).
Logger: "bitswarm.federation.transport".
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from ..log_limit import RateLimitedLog
from .errors import FetchError

log = logging.getLogger("bitswarm.federation.transport")
_LOG = RateLimitedLog(log)     # peers choose how often these fire

PAYLOAD_PROTOCOL_ID = TProtocol("/bitswarm/payload/1.0.0")
MAX_REQUEST_BYTES = 4096
CHUNK_BYTES = 64 * 1024
STATUS_OK, STATUS_NOT_FOUND, STATUS_ERROR = 0, 1, 2
_U32 = struct.Struct(">I")
_RESPONSE_HEADER = struct.Struct(">BQ")

SERVE_CONCURRENCY = 8  # payload requests served at once; more wait (bounds memory and CPU)
SERVE_IO_TIMEOUT_S = 10.0  # per read/write while serving: a stalled client is dropped
CLOSE_TIMEOUT_S = 1.0

Provider = Callable[[bytes], bytes | None]


async def fetch_payload(host: IHost, peer_id: str, request: bytes, *, max_bytes: int,
                        timeout_s: float, on_received: Callable[[int], None]) -> bytes:
    """Fetch one payload from `peer_id` (base58) through `host`; `on_received(n)` counts each
    chunk's n bytes. Arguments, limits and errors: see `Transport.fetch`."""
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
            stream = await host.new_stream(target, [PAYLOAD_PROTOCOL_ID])
            await stream.write(_U32.pack(len(request)) + request)
            data = await read_response(stream, max_bytes=max_bytes, on_received=on_received,
                                       what=f"peer {peer_id}, request {request[:64]!r}")
            done = True
            return data
    except trio.TooSlowError:
        raise FetchError("timeout", f"fetch from {peer_id} exceeded {timeout_s} s") from None
    except FetchError:
        raise
    except Exception as e:  # libp2p raises many types for dial/stream failures
        raise FetchError("connection", f"fetch from {peer_id} failed: {type(e).__name__}: {e}") from e
    finally:
        if stream is not None:
            await _close_stream(stream, reset=not done)


class PayloadServer:
    """Answers payload requests from `provider(request) -> payload bytes or None` (None
    until set), SERVE_CONCURRENCY at a time; `on_sent(n)` counts each chunk's n bytes."""

    def __init__(self, on_sent: Callable[[int], None]) -> None:
        self.provider: Provider | None = None
        self._on_sent = on_sent
        self._serve_slots = trio.Semaphore(SERVE_CONCURRENCY)

    async def handle(self, stream: INetStream) -> None:
        """Stream handler of PAYLOAD_PROTOCOL_ID."""
        # A libp2p stream handler must never raise: it would kill the whole process.
        peer = _peer_str(stream)
        try:
            with trio.fail_after(SERVE_IO_TIMEOUT_S):
                try:
                    request = await read_request(stream)
                except FetchError as e:
                    _LOG.log(logging.WARNING, "oversized payload request", "payload request from "
                             "%s refused: %s", peer, e)
                    await _close_stream(stream, reset=True)
                    return
            async with self._serve_slots:
                payload, status = self._lookup(request, peer)
                with trio.fail_after(SERVE_IO_TIMEOUT_S):
                    await stream.write(_RESPONSE_HEADER.pack(status, len(payload)))
                view = memoryview(payload)
                for start in range(0, len(view), CHUNK_BYTES):
                    chunk = view[start : start + CHUNK_BYTES]
                    with trio.fail_after(SERVE_IO_TIMEOUT_S):  # per chunk: slow readers are fine, dead ones not
                        await stream.write(_U32.pack(len(chunk)) + chunk)
                    self._on_sent(len(chunk))
            await _close_stream(stream, reset=False)
        except Exception as e:  # noqa: BLE001 - see above
            _LOG.log(logging.INFO, f"serving aborted: {type(e).__name__}",
                     "serving payload to %s aborted: %s: %s", peer, type(e).__name__, e)
            await _close_stream(stream, reset=True)

    def _lookup(self, request: bytes, peer: str) -> tuple[bytes, int]:
        if self.provider is None:
            return b"", STATUS_NOT_FOUND
        try:
            payload = self.provider(request)
        except Exception:  # noqa: BLE001 - a provider bug must not kill the node
            log.exception("payload provider failed for request %r from %s", request[:64], peer)
            return b"", STATUS_ERROR
        if payload is None:
            return b"", STATUS_NOT_FOUND
        return bytes(payload), STATUS_OK


# ---- framing (any object with `async read(n) -> bytes`, b"" at end of stream) -----------


async def read_request(stream) -> bytes:  # type: ignore[no-untyped-def]
    """Read one request frame (u32 length + bytes) -> the request (<= MAX_REQUEST_BYTES).

    Raises:
        FetchError('oversize'): the announced length exceeds MAX_REQUEST_BYTES (nothing more
            is read).
        EOFError: the stream ended inside the frame.
    """
    (n,) = _U32.unpack(await _read_exactly(stream, 4))
    if n > MAX_REQUEST_BYTES:
        raise FetchError("oversize", f"request of {n} bytes exceeds {MAX_REQUEST_BYTES}")
    return await _read_exactly(stream, n)


async def read_response(stream, *, max_bytes: int, on_received: Callable[[int], None],  # type: ignore[no-untyped-def]
                        what: str = "peer") -> bytes:
    """Read one response (status, u64 total, chunks) -> the payload, `total` bytes.

    Memory is bounded by `max_bytes` whatever the peer announces: an oversized total is
    refused before any chunk is read, and each chunk length is checked against what is left.
    `on_received(n)` is called per chunk of n bytes; `what` names the peer in errors.

    Raises:
        FetchError: 'not_found' / 'remote_error' (status 1 / 2), 'protocol' (unknown status,
            a chunk length of 0, over CHUNK_BYTES or past `total`), 'oversize' (total >
            max_bytes).
        EOFError: the stream ended early.
    """
    status, total = _RESPONSE_HEADER.unpack(await _read_exactly(stream, _RESPONSE_HEADER.size))
    if status == STATUS_NOT_FOUND:
        raise FetchError("not_found", f"{what}: no such payload")
    if status == STATUS_ERROR:
        raise FetchError("remote_error", f"{what}: the peer failed to produce the payload")
    if status != STATUS_OK:
        raise FetchError("protocol", f"{what}: unknown status byte {status}")
    if total > max_bytes:
        raise FetchError("oversize", f"payload of {total} bytes exceeds max_bytes={max_bytes}")
    data = bytearray()
    while len(data) < total:
        (n,) = _U32.unpack(await _read_exactly(stream, 4))
        if not 0 < n <= min(CHUNK_BYTES, total - len(data)):
            raise FetchError("protocol", f"bad chunk length {n} ({len(data)}/{total} received)")
        data += await _read_exactly(stream, n)
        on_received(n)
    return bytes(data)


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
