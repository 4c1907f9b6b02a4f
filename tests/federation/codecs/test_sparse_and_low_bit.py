"""fp16, ternary and top-k codecs: their formats, hostile fields, sizes and error feedback."""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.federation import codecs
from bitswarm.federation.codecs import (CodecError, ErrorFeedback, Fp16Codec, TernaryBlockCodec,
                                        TopKCodec, make_codec)
from bitswarm.federation.codecs.ternary import pack_trits, unpack_trits
from bitswarm.federation.codecs.topk import decode_varints, encode_varints, kept


def test_fp16_clamps_instead_of_overflowing():
    x = np.array([1e6, -1e6, 1.0, 3e-8], np.float32)
    (data,), dec = Fp16Codec().encode_tensor(x)
    assert np.isfinite(dec).all() and dec[0] == 65504 and dec[1] == -65504 and dec[2] == 1.0
    assert Fp16Codec().decode_tensor("t", [data], 4).tobytes() == dec.tobytes()


def test_trit_packing_round_trips_and_refuses_bytes_above_242():
    q = np.random.default_rng(0).integers(-1, 2, 1003).astype(np.int8)
    packed = pack_trits(q)
    assert len(packed) == 201
    assert (unpack_trits(np.frombuffer(packed, np.uint8), 1003) == q).all()
    codec = TernaryBlockCodec(16)
    fields, _ = codec.encode_tensor(np.ones(10, np.float32))
    with pytest.raises(CodecError, match="243"):
        codec.decode_tensor("t", [b"\xf3" + fields[0][1:], fields[1]], 10)


def test_ternary_is_unbiased_within_the_scale_and_values_are_plus_minus_scale():
    x = np.random.default_rng(1).uniform(-1, 1, 256).astype(np.float32)
    codec = TernaryBlockCodec(256)
    _, dec = codec.encode_tensor(x)
    s = codec.spread * np.abs(x).mean()
    assert set(np.unique(np.round(dec / s, 5))) <= {-1.0, 0.0, 1.0}
    # Unbiased where |x| <= s: the mean over many independently seeded encodings tends to x.
    inside = np.abs(x) <= s
    mean = np.mean([codec.encode_tensor(x + np.float32(i * 1e-7))[1] for i in range(400)], axis=0)
    np.testing.assert_allclose(mean[inside], x[inside], atol=0.12)


def test_topk_keeps_the_largest_values_and_their_positions():
    x = np.zeros(1000, np.float32)
    x[[3, 500, 999]] = [-5, 4, 3]
    x[100:110] = 0.1
    codec = TopKCodec(3000)                       # 3 of 1000
    fields, dec = codec.encode_tensor(x)
    assert np.flatnonzero(dec).tolist() == [3, 500, 999] and dec[3] == -5
    assert codec.decode_tensor("t", fields, 1000).tobytes() == dec.tobytes()
    assert kept(1000, 3000) == 3 and kept(10, 1) == 1 and kept(10, 10**6) == 10


@pytest.mark.parametrize("values", [[0], [127, 128, 16383, 16384], [2**35 - 1, 5, 0]])
def test_varints_round_trip(values):
    v = np.array(values, np.uint64)
    data = encode_varints(v)
    assert decode_varints(data, len(values), "t").tolist() == values


@pytest.mark.parametrize("gaps,reason", [
    (b"\x01\x01", "exactly 1"),                     # two varints where one is expected
    (b"\x81", "exactly 1"),                         # unterminated
    (b"\xff\xff\xff\xff\xff\x01", "gaps must be 1 varints"),   # more bytes than 5 x k
    (b"\x90\x4e", "out of range"),                  # index 10000 of 1000 values
])
def test_topk_refuses_hostile_gaps(gaps, reason):
    with pytest.raises(CodecError, match=reason):
        TopKCodec(1000).decode_tensor("t", [gaps, b"\x00\x3c"], 1000)


def test_topk_refuses_an_overlong_varint():
    with pytest.raises(CodecError, match="longer than 5"):
        TopKCodec(2000).decode_tensor("t", [b"\xff\xff\xff\xff\xff\x01\x00", b"\0" * 4], 1000)


def test_make_codec_names_and_errors():
    assert isinstance(make_codec("ternary"), TernaryBlockCodec)
    assert make_codec("top-k", topk_fraction=0.01).ppm == 10_000
    with pytest.raises(ValueError, match="choose from fp32, fp16, int8, ternary, top-k"):
        make_codec("gzip")
    with pytest.raises(ValueError, match="fraction"):
        make_codec("top-k", topk_fraction=0)


@pytest.mark.parametrize("name,max_ratio", [("fp16", 0.55), ("int8", 0.3), ("ternary", 1 / 15),
                                            ("top-k", 1 / 20)])
def test_payload_size_against_float32(name, max_ratio, lora_shapes, random_delta):
    shapes = lora_shapes(n_layers=2, D=256, r=8)
    delta = random_delta(shapes, np.random.default_rng(2))
    payload, _ = codecs.encode_update(delta, codec=make_codec(name))
    fp32 = 4 * sum(v.size for v in delta.values())
    assert len(payload) <= max_ratio * fp32


@pytest.mark.parametrize("name", ["fp16", "int8", "ternary", "top-k"])
def test_error_feedback_delivers_what_each_codec_dropped(name, lora_shapes, random_delta):
    """EF-SGD's invariant: sum of decoded = sum of true deltas - residual, and the residual
    stays bounded (it does not grow with the rounds), so nothing is lost for good."""
    shapes = lora_shapes(n_layers=1, D=64, r=4)
    rng = np.random.default_rng(3)
    ef = ErrorFeedback(make_codec(name, topk_fraction=0.1 if name == "top-k" else None))
    true_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    sent_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    norms = []
    for _ in range(60):
        delta = random_delta(shapes, rng)
        _, decoded = ef.compress(delta)
        for k in shapes:
            true_sum[k] += delta[k]
            sent_sum[k] += decoded[k]
        norms.append(np.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2))
                                 for r in ef.residual.values())))
    for k in shapes:
        np.testing.assert_allclose(sent_sum[k] + ef.residual[k], true_sum[k], atol=1e-3)
    one = np.sqrt(sum(float(np.sum(v ** 2)) for v in random_delta(shapes, rng).values()))
    assert max(norms[30:]) < 12 * one and max(norms[30:]) < 2 * max(norms[:30]) + 1e-9


def test_a_wider_ternary_scale_clamps_less_and_compresses_better(lora_shapes, random_delta):
    """spread 2 (the default) against plain absmean (spread 1): fewer values clamped to +-s,
    half the trits zero, so zstd's entropy coding makes the payload smaller."""
    delta = random_delta(lora_shapes(n_layers=2, D=256, r=8), np.random.default_rng(5))
    x = np.concatenate([v.reshape(-1) for v in delta.values()])
    for spread, clamped_max in ((1, 0.5), (2, 0.15)):
        s = spread * np.abs(x).mean()
        assert np.mean(np.abs(x) > s) < clamped_max
    sizes = {sp: len(codecs.encode_update(delta, codec=TernaryBlockCodec(spread=sp))[0])
             for sp in (1, 2)}
    fp32 = 4 * x.size
    assert TernaryBlockCodec().spread == 2
    assert sizes[2] < sizes[1] and sizes[2] <= fp32 / 18.5
    with pytest.raises(ValueError, match="spread"):
        TernaryBlockCodec(spread=0)
