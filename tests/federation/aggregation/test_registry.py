"""Every registered aggregation rule: the contract the round relies on.

Bit-identical for any arrival order, keys/shapes/float32 kept, a lone contributor's delta
returned unchanged, and equal deltas aggregated to themselves. A new rule in
`aggregation.registry.AGGREGATION_RULES` is checked here without a line of this file changing.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitswarm.federation.aggregation import AGGREGATION_RULES, AggregationRule, Contribution

SHAPES = {"layers.0.v_proj.lora_A": (3, 17), "layers.0.v_proj.lora_B": (17, 3)}
NAMES = sorted(AGGREGATION_RULES)


def _contributions(n: int, seed: int) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    return [Contribution(f"peer-{i}", int(rng.integers(1, 1000)),
                         {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()})
            for i in range(n)]


def test_registry_is_keyed_by_rule_name():
    assert NAMES == ["bounded-fedavg", "centered-clipping", "fedavg", "median", "multi-krum",
                     "trimmed-mean"]
    for name, cls in AGGREGATION_RULES.items():
        assert issubclass(cls, AggregationRule) and cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_is_order_invariant_to_the_bit(name):
    rule = AGGREGATION_RULES[name]()
    ups = _contributions(5, seed=1)
    ref = rule.aggregate(3, ups)
    assert set(ref) == set(SHAPES)
    for k, s in SHAPES.items():
        assert ref[k].dtype == np.float32 and ref[k].shape == s and np.isfinite(ref[k]).all()
    for perm in itertools.islice(itertools.permutations(ups), 1, 30):
        out = rule.aggregate(3, list(perm))
        assert all(out[k].tobytes() == ref[k].tobytes() for k in SHAPES)


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_returns_a_lone_or_unanimous_delta(name):
    rule = AGGREGATION_RULES[name]()
    (alone,) = _contributions(1, seed=2)
    out = rule.aggregate(0, [alone])
    assert all(out[k].tobytes() == alone.delta[k].tobytes() for k in SHAPES)
    same = [Contribution(f"p{i}", 10 * (i + 1), alone.delta) for i in range(4)]
    out = rule.aggregate(0, same)
    for k in SHAPES:
        np.testing.assert_allclose(out[k], alone.delta[k], rtol=1e-6, atol=0)
