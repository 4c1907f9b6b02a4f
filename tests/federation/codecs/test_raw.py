"""raw-zstd/1: lossless; hostile NaN data and a codec other than the announced one."""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.federation import codecs
from bitswarm.federation.codecs import INT8_CODEC, RAW_CODEC, CodecError


def test_raw_is_lossless(shapes, random_delta, decode):
    delta = random_delta(shapes, np.random.default_rng(1))
    payload, _ = codecs.encode_update(delta, codec=RAW_CODEC)
    got = decode(payload)
    assert all(np.array_equal(got[k], delta[k]) for k in delta)


def test_hostile_raw_nan_and_codec_mismatch(shapes, random_delta, container, pack, decode):
    delta = random_delta(shapes, np.random.default_rng(5))
    payload, _ = codecs.encode_update(delta, codec=RAW_CODEC)
    with pytest.raises(CodecError, match="announced"):
        decode(payload, codec=INT8_CODEC)
    c = container(delta, codec=RAW_CODEC)
    data = np.frombuffer(c["tensors"][2][2], "<f4").copy()
    data[5] = np.nan
    c["tensors"][2][2] = data.tobytes()
    with pytest.raises(CodecError, match="non-finite"):
        decode(pack(c))
