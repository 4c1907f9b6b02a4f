"""Bounds on payloads from peers, applied before anything is inflated or parsed.

The decompressed size is bounded from the expected shapes BEFORE decompressing (a zstd frame
may declare, or expand to, gigabytes), the zstd window is capped, and msgpack is parsed with
every length limit set. Failures raise CodecError.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping

import msgpack
import zstandard

from .base import CodecError

ZSTD_LEVEL = 3
# Level 3 uses a window of at most 2 MiB; refusing larger windows caps a decoder's memory.
MAX_WINDOW_BYTES = 1 << 23
_PER_TENSOR_OVERHEAD = 64                  # msgpack framing of one entry, besides name and data


def decompressed_bound(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Upper bound (bytes) on the msgpack container of any valid payload for these shapes.

    Every codec stays within 4 bytes/value (float32, the raw codec; int8 needs 1 + 4/16).
    """
    total = 256
    for name, shape in expected_shapes.items():
        total += _PER_TENSOR_OVERHEAD + len(name.encode()) + 9 * len(shape) + 4 * math.prod(shape)
    return total


def max_payload_bytes(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Upper bound (bytes) on a valid compressed payload: ZSTD_compressBound of the container."""
    bound = decompressed_bound(expected_shapes)
    return bound + (bound >> 8) + 1024


def compress(raw: bytes) -> bytes:
    """One zstd frame at ZSTD_LEVEL that declares its content size (receivers require it)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)


def bounded_decompress(payload: bytes, bound: int) -> bytes:
    """Inflate one zstd frame of at most `bound` bytes. Raises CodecError for bad zstd, an
    undeclared, over-bound or wrong content size, or trailing data."""
    # Our encoder always declares the content size: check it against the bound before
    # inflating anything, and afterwards use it to detect truncated frames (the stream reader
    # stops quietly at a truncated frame's end).
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise CodecError(f"bad zstd data: {e}") from None
    if declared < 0:
        raise CodecError("zstd frame does not declare its content size")
    if declared > bound:
        raise CodecError(f"declared decompressed size {declared} exceeds bound {bound} bytes "
                         "(decompression bomb or wrong shapes)")
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    chunks, total = [], 0
    try:
        # read_across_frames: trailing garbage after the frame fails instead of being ignored.
        with dctx.stream_reader(io.BytesIO(payload), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(1 << 20, bound + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > bound:
                    raise CodecError(f"decompressed payload exceeds bound {bound} bytes "
                                     "(decompression bomb or wrong shapes)")
    except zstandard.ZstdError as e:
        raise CodecError(f"bad zstd data: {e}") from None
    if total != declared:
        raise CodecError(f"decompressed {total} bytes != declared content size {declared} "
                         "(truncated or concatenated frames)")
    return b"".join(chunks)


def bounded_unpack(raw: bytes, bound: int, *, n_tensors: int) -> object:
    """Parse exactly one msgpack object from `raw` with every length capped. Raises CodecError."""
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=max(bound, 1), max_str_len=1024,
        max_bin_len=bound, max_array_len=max(n_tensors, 16), max_map_len=8, max_ext_len=0)
    try:
        unpacker.feed(raw)
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise CodecError("container is truncated") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CodecError(f"container is not valid msgpack: {e}") from None
    if unpacker.tell() != len(raw):
        raise CodecError(f"container has {len(raw) - unpacker.tell()} trailing bytes")
    return obj
