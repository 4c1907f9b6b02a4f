"""The robust rules against NumPy references on fixed inputs, and against attackers.

Fixed inputs: one tensor "w" of shape (1, 5) per peer, values chosen by hand, so each
reference is a few lines of plain NumPy written independently of the rule's code.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.federation.aggregation import (AGGREGATION_RULES, Contribution, centered_clipping,
                                             coordinate_median, fedavg, multi_krum, trimmed_mean)

ROWS = np.array([[1.0, 2.0, 3.0, 4.0, 5.0],
                 [2.0, 1.0, 0.0, 4.0, 6.0],
                 [1.5, 2.5, 3.5, 3.0, 5.5],
                 [100.0, -50.0, 7.0, 4.0, 5.0],      # an attacker in coordinates 0 and 1
                 [1.2, 2.2, 2.9, 4.1, 4.9]], np.float32)


def _ups(rows=ROWS, tokens=None):
    return [Contribution(f"p{i}", (tokens or [10] * len(rows))[i], {"w": r[None, :].copy()})
            for i, r in enumerate(rows)]


def test_median_matches_numpy():
    out = coordinate_median(_ups())["w"][0]
    np.testing.assert_array_equal(out, np.median(ROWS.astype(np.float64), axis=0).astype(np.float32))
    np.testing.assert_array_equal(out, [1.5, 2.0, 3.0, 4.0, 5.0])


def test_trimmed_mean_matches_numpy():
    out = trimmed_mean(_ups(), beta=0.2)["w"][0]              # floor(0.2 * 5) = 1 each side
    want = np.sort(ROWS.astype(np.float64), axis=0)[1:4].mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(out, want)
    assert abs(out[0] - np.mean([1.2, 1.5, 2.0])) < 1e-6


def test_multi_krum_drops_the_outlier_and_matches_a_brute_force_reference():
    agg, chosen = multi_krum(_ups())                          # n = 5: f = 1, m = 4
    assert chosen == ["p0", "p1", "p2", "p4"]
    x = ROWS.astype(np.float64)
    scores = []
    for i in range(5):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(5) if j != i)
        scores.append(sum(d[:5 - 1 - 2]))                     # n - f - 2 nearest
    keep = sorted(np.argsort(scores, kind="stable")[:4])
    np.testing.assert_allclose(agg["w"][0], x[keep].mean(axis=0), rtol=1e-6)


def test_centered_clipping_matches_the_paper_iteration():
    x = ROWS.astype(np.float64)
    v = np.median(x, axis=0)
    tau = sorted(np.linalg.norm(x - v, axis=1))[2]
    for _ in range(3):
        v = v + sum((xi - v) * min(1.0, tau / np.linalg.norm(xi - v)) if np.linalg.norm(xi - v) > 0
                    else (xi - v) for xi in x) / len(x)
    np.testing.assert_allclose(centered_clipping(_ups())["w"][0], v.astype(np.float32), rtol=1e-6)


def test_token_claims_do_not_move_the_robust_rules():
    honest = _ups()
    claims = _ups(tokens=[10, 10, 10, 10**12, 10])
    for name in ("median", "trimmed-mean", "multi-krum", "centered-clipping"):
        rule = AGGREGATION_RULES[name]()
        assert rule.aggregate(0, claims)["w"].tobytes() == rule.aggregate(0, honest)["w"].tobytes()


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "multi-krum", "centered-clipping"])
@pytest.mark.parametrize("attack", ["scaled-1e6", "sign-flip-x10", "constant-direction"])
def test_20_percent_attackers_stay_near_the_honest_mean(name, attack):
    """8 honest updates around a common direction plus 2 attackers: each robust rule's
    aggregate stays within half the honest spread of the honest mean; FedAvg's does not.
    (Bounded FedAvg only bounds an attacker's weight, to 3x the median norm: it is not here.)"""
    rng = np.random.default_rng(5)
    d = 64
    center = rng.standard_normal(d)
    honest = [center + 0.3 * rng.standard_normal(d) for _ in range(8)]
    mean = np.mean(honest, axis=0)
    bad = {"scaled-1e6": [1e6 * rng.standard_normal(d) for _ in range(2)],
           "sign-flip-x10": [-10 * mean, -10 * mean],
           "constant-direction": [np.full(d, 50.0), np.full(d, 50.0)]}[attack]
    ups = [Contribution(f"h{i}", 100, {"w": v.astype(np.float32)[None, :]}) for i, v in enumerate(honest)]
    ups += [Contribution(f"x{i}", 100, {"w": v.astype(np.float32)[None, :]}) for i, v in enumerate(bad)]
    spread = np.mean([np.linalg.norm(h - mean) for h in honest])
    err = np.linalg.norm(AGGREGATION_RULES[name]().aggregate(0, ups)["w"][0] - mean)
    assert err < 0.5 * spread, (name, attack, err, spread)
    assert np.linalg.norm(fedavg(ups)["w"][0] - mean) > 2 * spread      # the attack is real


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(_ups(), beta=0.5)
    with pytest.raises(ValueError, match="2f"):
        multi_krum(_ups(), f=2)
    with pytest.raises(ValueError, match="non-finite"):
        coordinate_median(_ups(np.array([[np.nan, 0, 0, 0, 0]], np.float32)))
