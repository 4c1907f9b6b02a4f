"""Payload codecs for LoRA deltas, and error feedback for the lossy one.

A delta is `dict[str, np.ndarray]` of float32, e.g. "layers.3.q_proj.lora_A" (r, in) and
"layers.3.q_proj.lora_B" (out, r). A payload is a zstandard frame holding one msgpack map:

    "int8-block-zstd/1": {"codec", "block": int, "tensors": [[name, shape, q, scales], ...]}
        Each tensor is flattened and cut into blocks of `block` values (the last one may be
        short). Per block: scale = absmax / 127 (float32), q = round(x / scale) clamped to
        [-127, 127] (int8; round half to even), decoded x' = q * scale, so |x - x'| <= scale / 2.
        q: int8 bytes (n); scales: little-endian float32 bytes (ceil(n / block)). Absmax-scaled
        blocks as in GGML's Q8_0 and LLM.int8 (Dettmers et al. 2022), with 256-value blocks.
    "raw-zstd/1": {"codec", "tensors": [[name, shape, data], ...]}, data = float32 LE, lossless.

Names are sorted so equal deltas give equal bytes. `encode_update` returns the decoded delta
too, produced by the same code a receiver runs, so sender and receivers agree bit for bit.

Decoding trusts nothing: the compressed size is capped, the decompressed size is bounded from
`expected_shapes` BEFORE decompressing (a zstd frame may declare, or expand to, gigabytes),
then every field, key, shape, byte length and value is checked. Failures raise CodecError.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping

import msgpack
import numpy as np
import zstandard

INT8_CODEC = "int8-block-zstd/1"
RAW_CODEC = "raw-zstd/1"
CODECS = (INT8_CODEC, RAW_CODEC)

DEFAULT_BLOCK = 256
MIN_BLOCK, MAX_BLOCK = 16, 1 << 16
ZSTD_LEVEL = 3
# Level 3 uses a window of at most 2 MiB; refusing larger windows caps a decoder's memory.
MAX_WINDOW_BYTES = 1 << 23
_PER_TENSOR_OVERHEAD = 64                  # msgpack framing of one entry, besides name and data


class CodecError(ValueError):
    """A payload failed to decode or validate; the message names the cause."""


Delta = dict[str, np.ndarray]


def decompressed_bound(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Upper bound (bytes) on the msgpack container of any valid payload for these shapes.

    float32 data (4 bytes/value) dominates both codecs: int8 needs 1 + 4/MIN_BLOCK bytes/value.
    """
    total = 256
    for name, shape in expected_shapes.items():
        total += _PER_TENSOR_OVERHEAD + len(name.encode()) + 9 * len(shape) + 4 * math.prod(shape)
    return total


def max_payload_bytes(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Upper bound (bytes) on a valid compressed payload: ZSTD_compressBound of the container."""
    bound = decompressed_bound(expected_shapes)
    return bound + (bound >> 8) + 1024


def encode_update(delta: Mapping[str, np.ndarray], *, codec: str = INT8_CODEC,
                  block: int = DEFAULT_BLOCK) -> tuple[bytes, Delta]:
    """Encode `delta` (name -> float32 array, any shape) with `codec`.

    Returns (payload bytes, decoded delta): decoded is bit-identical to what `decode_update`
    gives a receiver. Raises ValueError for an unknown codec, a bad block size, an empty delta,
    or non-finite values (a local bug, not a peer's).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {CODECS}")
    if not MIN_BLOCK <= block <= MAX_BLOCK:
        raise ValueError(f"block must be in [{MIN_BLOCK}, {MAX_BLOCK}], got {block}")
    if not delta:
        raise ValueError("cannot encode an empty delta")
    tensors, decoded = [], {}
    for name in sorted(delta):
        x = np.ascontiguousarray(delta[name], dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"delta[{name!r}] has non-finite values")
        shape = list(x.shape)
        if codec == INT8_CODEC:
            q, scales = _quantize(x.reshape(-1), block)
            tensors.append([name, shape, q.tobytes(), scales.astype("<f4").tobytes()])
            decoded[name] = _dequantize(q, scales, block).reshape(x.shape)
        else:
            tensors.append([name, shape, x.astype("<f4").tobytes()])
            decoded[name] = x.copy()
    container = {"codec": codec, "tensors": tensors}
    if codec == INT8_CODEC:
        container["block"] = block
    raw = msgpack.packb(container, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)
    return payload, decoded


def decode_update(payload: bytes, *, expected_shapes: Mapping[str, tuple[int, ...]],
                  max_bytes: int, codec: str | None = None) -> Delta:
    """Decode a payload into name -> float32 array with exactly `expected_shapes`.

    `max_bytes` caps the compressed payload; `codec`, if given (from the manifest), must match
    the container's. Raises CodecError for: oversize payload, bad zstd, decompressed size over
    `decompressed_bound(expected_shapes)`, malformed msgpack, unknown codec, unknown / missing /
    duplicate / unsorted keys, wrong shapes or byte lengths, q = -128, negative or non-finite
    scales, non-finite values.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise CodecError(f"payload is {len(payload)} bytes > limit {max_bytes}")
    bound = decompressed_bound(expected_shapes)
    raw = _bounded_decompress(bytes(payload), bound)
    obj = _unpack(raw, bound, n_tensors=len(expected_shapes))
    if not isinstance(obj, dict) or obj.get("codec") not in CODECS:
        raise CodecError("container is not a map with a known 'codec'")
    got_codec = obj["codec"]
    if codec is not None and got_codec != codec:
        raise CodecError(f"container codec {got_codec!r} != announced {codec!r}")
    want_keys = {"codec", "tensors", "block"} if got_codec == INT8_CODEC else {"codec", "tensors"}
    if set(obj) != want_keys:
        raise CodecError(f"container keys {sorted(map(str, obj))} != {sorted(want_keys)}")
    block = obj.get("block")
    if got_codec == INT8_CODEC and (type(block) is not int or not MIN_BLOCK <= block <= MAX_BLOCK):
        raise CodecError(f"bad block size {block!r}")
    tensors = obj["tensors"]
    if not isinstance(tensors, list):
        raise CodecError("'tensors' is not a list")
    names = [t[0] if isinstance(t, list) and t else None for t in tensors]
    if names != sorted(expected_shapes) or len(set(names)) != len(names):
        got, want = set(map(str, names)), set(expected_shapes)
        raise CodecError(f"tensor names differ: unknown {sorted(got - want)[:4]}, "
                         f"missing {sorted(want - got)[:4]} (or unsorted/duplicate)")
    out: Delta = {}
    for entry in tensors:
        name = entry[0]
        want_shape = tuple(expected_shapes[name])
        n_fields = 4 if got_codec == INT8_CODEC else 3
        if len(entry) != n_fields:
            raise CodecError(f"{name}: entry has {len(entry)} fields, expected {n_fields}")
        shape = entry[1]
        if not isinstance(shape, list) or tuple(shape) != want_shape or \
                any(type(d) is not int for d in shape):
            raise CodecError(f"{name}: shape {shape!r} != expected {list(want_shape)}")
        n = math.prod(want_shape)
        if got_codec == INT8_CODEC:
            q_bytes, s_bytes = entry[2], entry[3]
            n_blocks = -(-n // block)
            if type(q_bytes) is not bytes or len(q_bytes) != n:
                raise CodecError(f"{name}: q must be {n} bytes")
            if type(s_bytes) is not bytes or len(s_bytes) != 4 * n_blocks:
                raise CodecError(f"{name}: scales must be {4 * n_blocks} bytes")
            q = np.frombuffer(q_bytes, dtype=np.int8)
            scales = np.frombuffer(s_bytes, dtype="<f4").astype(np.float32)
            if not (np.isfinite(scales).all() and (scales >= 0).all()):
                raise CodecError(f"{name}: negative or non-finite scales")
            if (q == -128).any():
                raise CodecError(f"{name}: q outside [-127, 127]")
            x = _dequantize(q, scales, block).reshape(want_shape)
        else:
            data = entry[2]
            if type(data) is not bytes or len(data) != 4 * n:
                raise CodecError(f"{name}: data must be {4 * n} bytes")
            x = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(want_shape)
        if not np.isfinite(x).all():
            raise CodecError(f"{name}: non-finite values")
        out[name] = x
    return out


class ErrorFeedback:
    """Error-feedback compression (EF-SGD, Karimireddy et al. 2019, arXiv:1901.09847, Alg. 2).

    Keeps the residual e (what compression dropped so far, float32, same keys/shapes as the
    delta). compress(delta): p = delta + e; send C(p); e = p - decode(C(p)). The sum of decoded
    deltas over rounds then equals the sum of true deltas minus the current e, and |e| stays
    below half a quantization step per value instead of accumulating.
    """

    def __init__(self, *, codec: str = INT8_CODEC, block: int = DEFAULT_BLOCK) -> None:
        self.codec, self.block = codec, block
        self.residual: Delta = {}

    def compress(self, delta: Mapping[str, np.ndarray]) -> tuple[bytes, Delta]:
        """Encode delta + residual; returns (payload, decoded) like `encode_update`.

        Raises ValueError if keys/shapes differ from the previous call's, or on non-finite input.
        """
        if self.residual and (set(delta) != set(self.residual) or any(
                np.shape(delta[k]) != self.residual[k].shape for k in delta)):
            raise ValueError("delta keys/shapes differ from the error-feedback residual's")
        corrected = {k: np.asarray(v, dtype=np.float32) + self.residual.get(k, np.float32(0))
                     for k, v in delta.items()}
        payload, decoded = encode_update(corrected, codec=self.codec, block=self.block)
        self.residual = {k: corrected[k] - decoded[k] for k in corrected}
        return payload, decoded

    def reset(self) -> None:
        """Drop the residual (e.g. when the LoRA state is reset or reloaded)."""
        self.residual = {}


# --- helpers -------------------------------------------------------------------------------

def _quantize(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """x float32 (n,) -> q int8 (n,), scales float32 (ceil(n / block),)."""
    n = x.size
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[:n] = x
    blocks = padded.reshape(n_blocks, block)                        # (nb, block)
    scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)  # (nb,)
    ratio = np.zeros_like(blocks)
    np.divide(blocks, scales[:, None], out=ratio, where=scales[:, None] > 0)  # all-zero block -> 0
    q = np.clip(np.rint(ratio), -127, 127).astype(np.int8).reshape(-1)[:n]
    return q, scales


def _dequantize(q: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """q int8 (n,), scales float32 (nb,) -> float32 (n,); one float32 multiply per value."""
    n = q.size
    idx = np.arange(n) // block
    with np.errstate(over="ignore"):  # hostile scales may overflow; the caller checks isfinite
        return q.astype(np.float32) * scales[idx]


def _bounded_decompress(payload: bytes, bound: int) -> bytes:
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


def _unpack(raw: bytes, bound: int, *, n_tensors: int) -> object:
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
