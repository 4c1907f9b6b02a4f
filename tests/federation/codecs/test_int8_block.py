"""int8-block-zstd/1: error bound per block, compression ratio, hostile int8 fields."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bitswarm.federation import codecs
from bitswarm.federation.codecs import RAW_CODEC, CodecError


def test_int8_error_bound_per_block():
    rng = np.random.default_rng(0)
    # Awkward sizes: not multiples of the block, tiny, and an all-zero tensor.
    delta = {"a": rng.standard_normal((3, 300)).astype(np.float32) * 5,
             "b": rng.standard_normal(7).astype(np.float32),
             "c": np.zeros((2, 256), np.float32)}
    payload, decoded = codecs.encode_update(delta)
    for name, x in delta.items():
        flat, dec = x.reshape(-1), decoded[name].reshape(-1)
        for start in range(0, flat.size, codecs.DEFAULT_BLOCK):
            blk = flat[start:start + codecs.DEFAULT_BLOCK]
            scale = np.abs(blk).max() / np.float32(127)
            err = np.abs(blk - dec[start:start + codecs.DEFAULT_BLOCK])
            # scale/2 from rounding, plus float32 rounding of x/scale and of q*scale.
            assert err.max() <= scale * (0.5 + 1e-5) + 1e-30, (name, start)
    np.testing.assert_array_equal(decoded["c"], 0)


def test_compression_ratio_realistic_lora_delta(lora_shapes, random_delta):
    """4 layers, r = 8, q/k/v/o at D = 256 (65,536 parameters)."""
    shapes = lora_shapes(n_layers=4, D=256, r=8)
    rng = np.random.default_rng(3)
    delta = random_delta(shapes, rng)
    raw_bytes = sum(v.nbytes for v in delta.values())
    int8_payload, decoded = codecs.encode_update(delta)
    lossless, _ = codecs.encode_update(delta, codec=RAW_CODEC)
    rel_err = math.sqrt(sum(float(((delta[k] - decoded[k]) ** 2).sum()) for k in delta) /
                        sum(float((delta[k] ** 2).sum()) for k in delta))
    print(f"\nLoRA delta {len(shapes)} tensors, {raw_bytes // 4} params: float32 {raw_bytes} B; "
          f"raw-zstd/1 {len(lossless)} B ({raw_bytes / len(lossless):.2f}x); "
          f"int8-block-zstd/1 {len(int8_payload)} B ({raw_bytes / len(int8_payload):.2f}x), "
          f"relative L2 error {rel_err:.2e}")
    assert raw_bytes / len(int8_payload) > 3.5
    assert rel_err < 0.01
    assert len(int8_payload) <= codecs.max_payload_bytes(shapes)


def test_block_size_bounds():
    for bad in (codecs.int8_block.MIN_BLOCK - 1, codecs.int8_block.MAX_BLOCK + 1, 256.0):
        with pytest.raises(ValueError, match="block"):
            codecs.Int8BlockCodec(block=bad)
    delta = {"a": np.linspace(-1, 1, 100, dtype=np.float32)}
    payload, decoded = codecs.encode_update(delta, codec=codecs.Int8BlockCodec(block=16))
    got = codecs.decode_update(payload, expected_shapes={"a": (100,)}, max_bytes=10**6)
    assert got["a"].tobytes() == decoded["a"].tobytes()


def _set_scale(c, i, value):
    scales = np.frombuffer(c["tensors"][i][3], "<f4").copy()
    scales[0] = value
    c["tensors"][i][3] = scales.tobytes()


def _mutations():
    def nan_scale(c): _set_scale(c, 0, np.nan)
    def inf_scale(c): _set_scale(c, 1, np.inf)
    def neg_scale(c): _set_scale(c, 1, -1.0)
    def huge_scale(c): _set_scale(c, 0, 3e38)         # finite scale, but q * scale overflows
    def q_min(c): c["tensors"][0][2] = b"\x80" + c["tensors"][0][2][1:]
    def wrong_shape(c): c["tensors"][0][1] = [c["tensors"][0][1][1], c["tensors"][0][1][0]]
    def short_q(c): c["tensors"][0][2] = c["tensors"][0][2][:-1]
    def extra_key(c): c["tensors"].append(["zzz.extra", [1], b"\x00", b"\x00" * 4])
    def missing_key(c): c["tensors"].pop()
    def renamed(c): c["tensors"][0][0] = "layers.0.x_proj.lora_A"
    def duplicate(c): c["tensors"][1] = c["tensors"][0]
    def extra_field(c): c["extra"] = 1
    def bad_block(c): c["block"] = 3
    def bad_codec(c): c["codec"] = "int4/1"
    def float_dim(c): c["tensors"][0][1] = [float(d) for d in c["tensors"][0][1]]
    return [(f, m) for f, m in [
        (nan_scale, "non-finite"), (inf_scale, "non-finite"), (neg_scale, "negative"),
        (huge_scale, "non-finite values"), (q_min, "-127"), (wrong_shape, "shape"),
        (short_q, "bytes"), (extra_key, "names"), (missing_key, "names"), (renamed, "names"),
        (duplicate, "names"), (extra_field, "keys"), (bad_block, "block"), (bad_codec, "codec"),
        (float_dim, "shape")]]


@pytest.mark.parametrize("mutate, match", _mutations(), ids=lambda x: getattr(x, "__name__", x))
def test_hostile_int8_containers(mutate, match, container, pack, decode):
    c = container()
    mutate(c)
    with pytest.raises(CodecError, match=match):
        decode(pack(c))
