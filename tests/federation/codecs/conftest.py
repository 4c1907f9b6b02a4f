"""Fixtures of the codec tests: LoRA-like shapes and deltas, and container surgery."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zstandard

from bitswarm.federation import codecs
from bitswarm.federation.codecs import INT8_CODEC


def _lora_shapes(n_layers: int = 4, D: int = 256, r: int = 8,
                 modules=("q_proj", "k_proj", "v_proj", "o_proj")) -> dict[str, tuple[int, int]]:
    """Shapes of a LoRA state: lora_A (r, in), lora_B (out, r); square D x D projections."""
    shapes = {}
    for layer in range(n_layers):
        for m in modules:
            shapes[f"layers.{layer}.{m}.lora_A"] = (r, D)
            shapes[f"layers.{layer}.{m}.lora_B"] = (D, r)
    return shapes


def _random_delta(shapes, rng, scale=1e-3) -> dict[str, np.ndarray]:
    """A delta like one round of AdamW on LoRA: small, roughly Gaussian, some heavy tails."""
    return {k: (rng.standard_normal(s) * scale * rng.uniform(0.5, 2)).astype(np.float32)
            for k, s in shapes.items()}


@pytest.fixture
def lora_shapes():
    """lora_shapes(n_layers=4, D=256, r=8, modules=q/k/v/o) -> name -> shape."""
    return _lora_shapes


@pytest.fixture
def random_delta():
    """random_delta(shapes, rng, scale=1e-3) -> name -> float32 array."""
    return _random_delta


@pytest.fixture
def shapes():
    """One layer, D = 64, r = 4: small enough for hostile-container loops."""
    return _lora_shapes(n_layers=1, D=64, r=4)


@pytest.fixture
def decode(shapes):
    """decode(payload, **kw): decode_update against `shapes` and their payload bound."""
    bound = codecs.max_payload_bytes(shapes)
    return lambda payload, **kw: codecs.decode_update(payload, expected_shapes=shapes,
                                                      max_bytes=bound, **kw)


@pytest.fixture
def container(shapes):
    """container(delta=None, codec=INT8_CODEC): the decoded msgpack map of a valid payload."""
    def make(delta=None, codec=INT8_CODEC):
        delta = delta or _random_delta(shapes, np.random.default_rng(4))
        payload, _ = codecs.encode_update(delta, codec=codec)
        return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload), raw=False)
    return make


@pytest.fixture
def pack():
    """pack(obj): a payload holding any msgpack object (to build hostile containers)."""
    return lambda obj: zstandard.ZstdCompressor().compress(msgpack.packb(obj, use_bin_type=True))
