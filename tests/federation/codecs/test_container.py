"""The shared payload container: bit-identical decoding, determinism, bounds, hostile bytes."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zstandard

from bitswarm.federation import codecs
from bitswarm.federation.codecs import INT8_CODEC, RAW_CODEC, CodecError


def test_decoded_is_bit_identical_to_receiver(shapes, random_delta, decode):
    rng = np.random.default_rng(1)
    delta = random_delta(shapes, rng)
    for codec in (INT8_CODEC, RAW_CODEC):
        payload, decoded = codecs.encode_update(delta, codec=codec)
        received = decode(payload, codec=codec)
        assert set(received) == set(delta)
        for k in delta:
            assert received[k].dtype == np.float32 and received[k].shape == delta[k].shape
            assert received[k].tobytes() == decoded[k].tobytes()
    # deterministic: the same delta gives the same bytes
    assert codecs.encode_update(delta)[0] == codecs.encode_update(dict(reversed(delta.items())))[0]


def test_decompression_bomb_rejected_without_inflating(decode):
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))  # 64 MiB of zeros
    assert len(bomb) < 64 * 1024
    with pytest.raises(CodecError, match="bomb"):
        decode(bomb)
    # Same without a declared content size (streamed frame).
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    streamed = cobj.compress(b"\x00" * (16 << 20)) + cobj.flush()
    with pytest.raises(CodecError, match="content size"):
        decode(streamed)


def test_truncated_garbage_trailing_and_oversize(shapes, random_delta, pack, decode):
    payload, _ = codecs.encode_update(random_delta(shapes, np.random.default_rng(6)))
    for bad, match in [(payload[:-7], "zstd|content size"),
                       (payload[: len(payload) // 2], "zstd|content size"),
                       (b"not zstd at all", "zstd"), (payload + b"garbage", "zstd"),
                       (payload + payload, "content size|trailing"),
                       (pack(msgpack.packb([1, 2])[:-1]), "msgpack|map|truncated"), (b"", "zstd")]:
        with pytest.raises(CodecError, match=match):
            decode(bad)
    with pytest.raises(CodecError, match="limit"):
        codecs.decode_update(payload, expected_shapes=shapes, max_bytes=len(payload) - 1)


@pytest.mark.parametrize("name", [["int8-block-zstd/1"], {"a": 1}, None, 7])
def test_unhashable_or_foreign_codec_field_is_a_codec_error(name, container, pack, decode):
    c = container()
    c["codec"] = name
    with pytest.raises(CodecError, match="known 'codec'"):
        decode(pack(c))


def test_encode_refuses_nonfinite_and_unknown_codec():
    with pytest.raises(ValueError, match="non-finite"):
        codecs.encode_update({"a": np.array([1.0, np.inf], np.float32)})
    with pytest.raises(ValueError, match="codec"):
        codecs.encode_update({"a": np.ones(3, np.float32)}, codec="gzip")
