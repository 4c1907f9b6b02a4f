"""Fuzzing the payload stream protocol's framing (`/bitswarm/payload/1.0.0`: the request frame a
server reads, the status + length + chunks a fetcher reads) with hypothesis, bounded and seeded
(derandomized; failing examples kept in .hypothesis/).

The bytes come from an in-memory stream that hands them out in fuzzed chunk sizes (a real
peer's stream can split anywhere). On any input the readers return a frame within their bounds
or raise their own errors (FetchError, EOFError): never another exception, never a wait for
more than the input holds, never a buffer beyond `max_bytes`.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bitswarm.federation.transport import FetchError
from bitswarm.federation.transport.payload_protocol import (CHUNK_BYTES, MAX_REQUEST_BYTES,
                                                            STATUS_OK, read_request, read_response)

FUZZ = settings(max_examples=400, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
MAX_BYTES = 3 * CHUNK_BYTES + 100


class BytesStream:
    """`data` as a stream: each read(n) returns up to n bytes, at most the next chunk size."""

    def __init__(self, data: bytes, chunk_sizes: list[int]) -> None:
        self.data, self.sizes, self.reads = memoryview(data), chunk_sizes or [1 << 30], 0

    async def read(self, n: int) -> bytes:
        size = self.sizes[self.reads % len(self.sizes)]
        self.reads += 1
        out = bytes(self.data[:min(n, size)])
        self.data = self.data[len(out):]
        return out


def run(coro):  # type: ignore[no-untyped-def]
    """Drive a coroutine that never really waits (BytesStream.read returns at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the reader waited for something the input does not hold")


def response(payload: bytes, chunk: int = CHUNK_BYTES) -> bytes:
    body = b"".join(struct.pack(">I", len(payload[i:i + chunk])) + payload[i:i + chunk]
                    for i in range(0, len(payload), chunk))
    return struct.pack(">BQ", STATUS_OK, len(payload)) + body


VALID = [response(b""), response(b"abc"), response(bytes(range(256)) * 300, chunk=1000),
         response(b"x" * (CHUNK_BYTES + 7))]


@st.composite
def mutated(draw, valid: bytes):
    """A valid frame with a few byte flips, a cut, or an insertion (lengths included)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, min(len(data) - 1, 64)) if draw(st.booleans()) else
                 st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            data = data[:i]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


CHUNKS = st.lists(st.integers(1, 70_000), max_size=4)


def _response(data: bytes, chunks: list[int]) -> None:
    got: list[int] = []
    try:
        payload = run(read_response(BytesStream(data, chunks), max_bytes=MAX_BYTES, on_received=got.append))
    except (FetchError, EOFError):
        assert sum(got) <= MAX_BYTES
        return
    assert len(payload) <= MAX_BYTES and sum(got) == len(payload)
    assert len(payload) == struct.unpack(">Q", data[1:9])[0]


@FUZZ
@given(st.one_of(st.binary(max_size=2048), *(mutated(v) for v in VALID)), CHUNKS)
def test_response_framing(data: bytes, chunks: list[int]) -> None:
    _response(data, chunks)


@FUZZ
@given(st.one_of(st.binary(max_size=256),
                 mutated(struct.pack(">I", 40) + b"r" * 40),
                 mutated(struct.pack(">I", MAX_REQUEST_BYTES) + b"r" * MAX_REQUEST_BYTES)), CHUNKS)
def test_request_framing(data: bytes, chunks: list[int]) -> None:
    try:
        request = run(read_request(BytesStream(data, chunks)))
    except (FetchError, EOFError):
        return
    assert len(request) <= MAX_REQUEST_BYTES and request == data[4:4 + len(request)]


def test_valid_frames_decode_whatever_the_chunking() -> None:
    payload = bytes(range(256)) * 300
    for chunks in ([], [1], [3, 7000], [65536]):
        assert run(read_response(BytesStream(VALID[2], chunks), max_bytes=MAX_BYTES,
                                 on_received=lambda n: None)) == payload


@pytest.mark.parametrize("frame, reason", [
    (struct.pack(">BQ", STATUS_OK, 1 << 62), "oversize"),                 # announced, not read
    (struct.pack(">BQ", STATUS_OK, 10) + struct.pack(">I", 11) + b"x" * 11, "protocol"),
    (struct.pack(">BQ", STATUS_OK, 10) + struct.pack(">I", 0), "protocol"),
    (struct.pack(">BQ", 7, 0), "protocol"),
    (struct.pack(">BQ", 1, 0), "not_found"),
])
def test_bogus_lengths_and_statuses_are_refused_by_name(frame: bytes, reason: str) -> None:
    with pytest.raises(FetchError) as e:
        run(read_response(BytesStream(frame, []), max_bytes=MAX_BYTES, on_received=lambda n: None))
    assert e.value.reason == reason
