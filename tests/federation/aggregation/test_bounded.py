"""BoundedFedAvg against a plain NumPy computation on fixed inputs, and the attacks it bounds."""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.federation.aggregation import BoundedFedAvg, Contribution, bound_contributions, fedavg

K = ("a", "b")


def _c(pid, tokens, a, b):
    return Contribution(pid, tokens, {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float32)})


def test_matches_a_plain_numpy_reference():
    ups = [_c("p1", 100, [3.0, 4.0], [0.0]),        # norm 5
           _c("p2", 120, [0.0, 0.0], [6.0]),        # norm 6
           _c("p3", 10**12, [3e12, 4e12], [0.0]),   # scaled x1e12, huge token claim
           _c("p4", 90, [1.0, 0.0], [0.0])]         # norm 1
    norms = np.array([5.0, 6.0, 5e12, 1.0])
    bound = 3.0 * np.sort(norms)[(4 - 1) // 2]      # lower median 5 -> 15
    tok_cap = int(2.0 * np.sort([100, 120, 10**12, 90])[1])   # 2 x 100
    vecs = [np.array([3, 4, 0.0]), np.array([0, 0, 6.0]), np.array([3e12, 4e12, 0]), np.array([1, 0, 0.0])]
    vecs = [v * min(1.0, bound / n) for v, n in zip(vecs, norms)]
    toks = np.array([100, 120, min(10**12, tok_cap), 90], np.float64)
    want = sum(t * v for t, v in zip(toks, vecs)) / toks.sum()
    got = BoundedFedAvg().aggregate(0, ups)
    np.testing.assert_allclose(np.concatenate([got["a"], got["b"]]), want, rtol=1e-6)
    b = {u.peer_id: u for u in bound_contributions(ups)}
    assert b["p3"].tokens == 200 and abs(np.linalg.norm(np.r_[b["p3"].delta["a"], b["p3"].delta["b"]]) - 15) < 1e-4
    assert b["p1"].delta["a"] is ups[0].delta["a"]          # within bounds: untouched


def test_honest_updates_pass_unchanged_and_fedavg_is_recovered():
    rng = np.random.default_rng(0)
    ups = [_c(f"p{i}", 100 + i, rng.standard_normal(5), rng.standard_normal(3)) for i in range(5)]
    got, plain = BoundedFedAvg().aggregate(1, ups), fedavg(ups)
    assert all(got[k].tobytes() == plain[k].tobytes() for k in K)


def test_one_attacker_of_three_moves_the_aggregate_little():
    honest = [_c("h1", 100, [1.0, 0.0], [0.0]), _c("h2", 100, [0.9, 0.1], [0.0])]
    for attack in (_c("x", 100, [1e12, -1e12], [1e12]), _c("x", 10**12, [-1.0, 0.0], [0.0])):
        out = BoundedFedAvg().aggregate(0, [*honest, attack])
        assert np.linalg.norm(np.r_[out["a"], out["b"]]) < 3.0          # not 1e12
        assert np.isfinite(out["a"]).all()


def test_a_zero_token_claim_does_not_zero_the_honest_weight():
    out = BoundedFedAvg().aggregate(0, [_c("h", 100, [1.0, 2.0], [3.0]), _c("x", 0, [9.0, 9.0], [9.0])])
    np.testing.assert_array_equal(out["a"], [1.0, 2.0])       # x has no weight, h keeps its own


def test_bad_factors_are_refused():
    with pytest.raises(ValueError):
        bound_contributions([_c("p", 1, [1.0], [1.0])], norm_factor=0)
    with pytest.raises(ValueError):
        bound_contributions([])
