"""Payload codecs: int8 error bound, error feedback, compression ratio, hostile payloads."""
from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zstandard

from bitswarm.federation import codecs
from bitswarm.federation.codecs import INT8_CODEC, RAW_CODEC, CodecError, ErrorFeedback


def lora_shapes(n_layers: int = 4, D: int = 256, r: int = 8,
                modules=("q_proj", "k_proj", "v_proj", "o_proj")) -> dict[str, tuple[int, int]]:
    """Shapes of a LoRA state: lora_A (r, in), lora_B (out, r); square D x D projections."""
    shapes = {}
    for layer in range(n_layers):
        for m in modules:
            shapes[f"layers.{layer}.{m}.lora_A"] = (r, D)
            shapes[f"layers.{layer}.{m}.lora_B"] = (D, r)
    return shapes


def random_delta(shapes, rng, scale=1e-3) -> dict[str, np.ndarray]:
    """A delta like one round of AdamW on LoRA: small, roughly Gaussian, some heavy tails."""
    return {k: (rng.standard_normal(s) * scale * rng.uniform(0.5, 2)).astype(np.float32)
            for k, s in shapes.items()}


SHAPES = lora_shapes(n_layers=1, D=64, r=4)
BOUND = codecs.max_payload_bytes(SHAPES)


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


def test_decoded_is_bit_identical_to_receiver():
    rng = np.random.default_rng(1)
    delta = random_delta(SHAPES, rng)
    for codec in (INT8_CODEC, RAW_CODEC):
        payload, decoded = codecs.encode_update(delta, codec=codec)
        received = codecs.decode_update(payload, expected_shapes=SHAPES, max_bytes=BOUND,
                                        codec=codec)
        assert set(received) == set(delta)
        for k in delta:
            assert received[k].dtype == np.float32 and received[k].shape == delta[k].shape
            assert received[k].tobytes() == decoded[k].tobytes()
    # raw is lossless
    payload, _ = codecs.encode_update(delta, codec=RAW_CODEC)
    got = codecs.decode_update(payload, expected_shapes=SHAPES, max_bytes=BOUND)
    assert all(np.array_equal(got[k], delta[k]) for k in delta)
    # deterministic: the same delta gives the same bytes
    assert codecs.encode_update(delta)[0] == codecs.encode_update(dict(reversed(delta.items())))[0]


def test_error_feedback_sum_tracks_true_sum():
    rng = np.random.default_rng(2)
    ef, plain_err = ErrorFeedback(), []
    true_sum = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
    ef_sum = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
    plain_sum = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
    residual_norms, ef_errs = [], []
    # A persistent small bias per coordinate: plain int8 rounds it away the same way every
    # round, so its error grows linearly; error feedback carries it forward.
    bias = {k: rng.standard_normal(s) * 1e-4 for k, s in SHAPES.items()}
    for _ in range(200):
        delta = {k: (bias[k] + rng.standard_normal(s) * 1e-4 * (k.endswith("B") * 30 + 1))
                 .astype(np.float32) for k, s in SHAPES.items()}
        _, dec = ef.compress(delta)
        _, plain = codecs.encode_update(delta)
        for k in delta:
            true_sum[k] += delta[k]
            ef_sum[k] += dec[k]
            plain_sum[k] += plain[k]
        # Invariant of EF: sum(decoded) = sum(true) - residual (up to float rounding).
        ef_errs.append(max(np.abs(true_sum[k] - ef_sum[k] - ef.residual[k]).max() for k in delta))
        residual_norms.append(math.sqrt(sum(float((e.astype(np.float64) ** 2).sum())
                                            for e in ef.residual.values())))
        plain_err.append(math.sqrt(sum(float(((true_sum[k] - plain_sum[k]) ** 2).sum())
                                       for k in delta)))
    ef_err = math.sqrt(sum(float(((true_sum[k] - ef_sum[k]) ** 2).sum()) for k in SHAPES))
    print(f"\nafter 200 rounds: |sum true - sum decoded| EF {ef_err:.3e}, plain int8 "
          f"{plain_err[-1]:.3e}; residual norm first/last {residual_norms[0]:.3e}/"
          f"{residual_norms[-1]:.3e}")
    assert max(ef_errs) < 1e-6                                  # the EF identity holds
    assert max(residual_norms[100:]) < 3 * max(residual_norms[:20])  # bounded, not growing
    assert ef_err < plain_err[-1] / 5                           # and it beats plain rounding


def test_error_feedback_rejects_key_change():
    ef = ErrorFeedback()
    ef.compress({"a": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="residual"):
        ef.compress({"b": np.ones((2, 2), np.float32)})
    ef.reset()
    ef.compress({"b": np.ones((2, 2), np.float32)})


def test_compression_ratio_realistic_lora_delta():
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


# --- hostile payloads ----------------------------------------------------------------------

def _container(delta=None, codec=INT8_CODEC):
    delta = delta or random_delta(SHAPES, np.random.default_rng(4))
    payload, _ = codecs.encode_update(delta, codec=codec)
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload), raw=False)


def _pack(obj) -> bytes:
    return zstandard.ZstdCompressor().compress(msgpack.packb(obj, use_bin_type=True))


def _decode(payload, **kw):
    return codecs.decode_update(payload, expected_shapes=SHAPES, max_bytes=BOUND, **kw)


def test_decompression_bomb_rejected_without_inflating():
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))  # 64 MiB of zeros
    assert len(bomb) < 64 * 1024
    with pytest.raises(CodecError, match="bomb"):
        _decode(bomb)
    # Same without a declared content size (streamed frame).
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    streamed = cobj.compress(b"\x00" * (16 << 20)) + cobj.flush()
    with pytest.raises(CodecError, match="content size"):
        _decode(streamed)


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
def test_hostile_int8_containers(mutate, match):
    c = _container()
    mutate(c)
    with pytest.raises(CodecError, match=match):
        _decode(_pack(c))


def test_hostile_raw_nan_and_codec_mismatch():
    delta = random_delta(SHAPES, np.random.default_rng(5))
    payload, _ = codecs.encode_update(delta, codec=RAW_CODEC)
    with pytest.raises(CodecError, match="announced"):
        _decode(payload, codec=INT8_CODEC)
    c = _container(delta, codec=RAW_CODEC)
    data = np.frombuffer(c["tensors"][2][2], "<f4").copy()
    data[5] = np.nan
    c["tensors"][2][2] = data.tobytes()
    with pytest.raises(CodecError, match="non-finite"):
        _decode(_pack(c))


def test_truncated_garbage_trailing_and_oversize():
    payload, _ = codecs.encode_update(random_delta(SHAPES, np.random.default_rng(6)))
    for bad, match in [(payload[:-7], "zstd|content size"),
                       (payload[: len(payload) // 2], "zstd|content size"),
                       (b"not zstd at all", "zstd"), (payload + b"garbage", "zstd"),
                       (payload + payload, "content size|trailing"),
                       (_pack(msgpack.packb([1, 2])[:-1]), "msgpack|map|truncated"), (b"", "zstd")]:
        with pytest.raises(CodecError, match=match):
            _decode(bad)
    with pytest.raises(CodecError, match="limit"):
        codecs.decode_update(payload, expected_shapes=SHAPES, max_bytes=len(payload) - 1)


def test_encode_refuses_nonfinite_and_unknown_codec():
    with pytest.raises(ValueError, match="non-finite"):
        codecs.encode_update({"a": np.array([1.0, np.inf], np.float32)})
    with pytest.raises(ValueError, match="codec"):
        codecs.encode_update({"a": np.ones(3, np.float32)}, codec="gzip")
