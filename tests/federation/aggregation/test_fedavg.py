"""FedAvg: weighted mean, permutation invariance (bit-exact), edge cases."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitswarm.federation.aggregation import Contribution, FedAvg, fedavg

SHAPES = {"layers.0.q_proj.lora_A": (4, 33), "layers.0.q_proj.lora_B": (33, 4)}


def _updates(n: int, seed: int = 0) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    return [Contribution(f"peer-{i:02d}", int(rng.integers(1, 10_000)),
                         {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()})
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_equals_weighted_mean(n):
    ups = _updates(n, seed=n)
    agg = fedavg(ups)
    weights = np.array([u.tokens for u in ups], np.float64)
    for k in SHAPES:
        stack = np.stack([u.delta[k].astype(np.float64) for u in ups])
        want = np.average(stack, axis=0, weights=weights)
        assert agg[k].dtype == np.float32 and agg[k].shape == SHAPES[k]
        np.testing.assert_allclose(agg[k], want, rtol=1e-6, atol=1e-7)


def test_single_sender_returns_its_delta():
    (u,) = _updates(1)
    agg = fedavg([u])
    for k in SHAPES:
        assert agg[k].tobytes() == u.delta[k].tobytes()


def test_permutation_invariant_bit_exact():
    ups = _updates(5, seed=9)
    ref = fedavg(ups)
    for perm in itertools.islice(itertools.permutations(ups), 1, 40):
        out = fedavg(list(perm))
        assert all(out[k].tobytes() == ref[k].tobytes() for k in SHAPES)


def test_zero_weight_peer_ignored_and_equal_weights():
    a, b = _updates(2, seed=3)
    agg = fedavg([a, Contribution(b.peer_id, 0, b.delta)])
    assert all(agg[k].tobytes() == a.delta[k].tobytes() for k in SHAPES)
    agg = fedavg([Contribution("x", 5, a.delta), Contribution("y", 5, b.delta)])
    for k in SHAPES:
        np.testing.assert_allclose(agg[k], (a.delta[k] + b.delta[k]) / 2, rtol=1e-6, atol=1e-7)


def test_errors():
    a, b = _updates(2)
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])
    with pytest.raises(ValueError, match="zero"):
        fedavg([Contribution("a", 0, a.delta), Contribution("b", 0, b.delta)])
    with pytest.raises(ValueError, match="tokens"):
        fedavg([Contribution("a", -1, a.delta), b])
    with pytest.raises(ValueError, match="tokens"):
        fedavg([Contribution("a", True, a.delta), b])
    with pytest.raises(ValueError, match="duplicate"):
        fedavg([a, Contribution(a.peer_id, 3, b.delta)])
    k0 = next(iter(SHAPES))
    with pytest.raises(ValueError, match="keys"):
        fedavg([a, Contribution(b.peer_id, 3, {k0: b.delta[k0]})])
    bad = dict(b.delta, **{k0: np.zeros((4, 32), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        fedavg([a, Contribution(b.peer_id, 3, bad)])


def test_fedavg_rule_is_the_pure_function():
    ups = _updates(4, seed=11)
    ref = fedavg(ups)
    out = FedAvg().aggregate(7, ups)
    assert all(out[k].tobytes() == ref[k].tobytes() for k in SHAPES)
