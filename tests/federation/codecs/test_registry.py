"""Every registered codec, by wire name: round trip, determinism, size bound, hostile fields.

A new codec in `codecs.registry.CODECS` is checked here without a line of this file changing
(as hivemind's tests loop over every compression type).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.federation import codecs
from bitswarm.federation.codecs import CODECS, CodecError

WIRE_NAMES = sorted(CODECS)


def test_registry_is_keyed_by_wire_name():
    assert WIRE_NAMES == ["fp16-zstd/1", "int8-block-zstd/1", "raw-zstd/1",
                          "ternary-block-zstd/1", "topk-zstd/1"]
    assert sorted(codecs.CODEC_NAMES.values()) == WIRE_NAMES
    for name, cls in CODECS.items():
        assert issubclass(cls, codecs.Codec) and cls.wire_name == name
        assert codecs.codec_class(name) is cls
    assert codecs.codec_class("gzip") is None and codecs.codec_class(["x"]) is None


@pytest.mark.parametrize("name", WIRE_NAMES)
def test_every_codec_round_trips_within_the_bound(name, lora_shapes, random_delta):
    shapes = {**lora_shapes(n_layers=1, D=40, r=3), "odd.bias": (7,)}
    delta = random_delta(shapes, np.random.default_rng(0))
    delta["odd.bias"][:] = 0                                     # an all-zero tensor too
    codec = CODECS[name]()
    payload, decoded = codecs.encode_update(delta, codec=codec)
    assert payload == codecs.encode_update(dict(reversed(delta.items())), codec=name)[0]
    assert len(payload) <= codecs.max_payload_bytes(shapes)
    raw = codecs.bounded.bounded_decompress(payload, codecs.decompressed_bound(shapes))
    assert len(raw) <= codecs.decompressed_bound(shapes)
    got = codecs.decode_update(payload, expected_shapes=shapes,
                               max_bytes=codecs.max_payload_bytes(shapes), codec=name)
    for k in shapes:
        assert got[k].dtype == np.float32 and got[k].shape == shapes[k]
        assert got[k].tobytes() == decoded[k].tobytes()
        # A codec with a per-value bound keeps it (this catches a codec decoding to the wrong
        # tensor or scale); every codec's output at least points the way x does (cosine > 0.3:
        # a wrong tensor gives ~0; stochastic ternary ~0.7, top-k 3% of a Gaussian ~0.4).
        bound = CODECS[name].max_rel_error
        if bound is not None:
            np.testing.assert_allclose(got[k], delta[k], rtol=0,
                                       atol=bound * float(np.abs(delta[k]).max()) + 1e-30)
        x, y = delta[k].reshape(-1).astype(np.float64), got[k].reshape(-1).astype(np.float64)
        if np.any(x):
            assert x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) > 0.3
    other = next((n for n in WIRE_NAMES if n != name), None)
    if other is not None:
        with pytest.raises(CodecError, match="announced"):
            codecs.decode_update(payload, expected_shapes=shapes, max_bytes=len(payload),
                                 codec=other)


@pytest.mark.parametrize("name", WIRE_NAMES)
@pytest.mark.parametrize("junk", [None, 7, "x", [], [b""] * 4, [b"\x00" * 4096] * 4])
def test_every_codec_refuses_junk_fields_with_codec_error(name, junk, container, pack, decode):
    c = container(codec=name)
    n = CODECS[name].tensor_fields
    fields = junk if isinstance(junk, list) else [junk] * n
    c["tensors"][0] = c["tensors"][0][:2] + fields[:n] + [None] * (n - len(fields[:n]))
    with pytest.raises(CodecError):
        decode(pack(c))
