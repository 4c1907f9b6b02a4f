"""DP noise per node: local DP adds the full sigma; with secure aggregation each member adds its
share, so the smallest sum ever revealed (t members) carries sigma x C in all."""
from __future__ import annotations

import math
from types import SimpleNamespace

from bitswarm.federation.rounds.secure import threshold
from bitswarm.node.runtime import member_noise


def test_local_dp_adds_the_full_noise():
    cfg = SimpleNamespace(dp_noise=1.2, secure_aggregation=False, min_peers=7)
    assert member_noise(cfg) == 1.2


def test_distributed_dp_splits_the_noise_over_the_threshold():
    for peers in (2, 4, 7, 15):
        cfg = SimpleNamespace(dp_noise=1.2, secure_aggregation=True, min_peers=peers)
        t = threshold(peers + 1)
        share = member_noise(cfg)
        assert math.isclose(share * math.sqrt(t), 1.2)       # t shares sum to sigma's variance
        assert share < 1.2 and t <= peers + 1


def test_a_revealed_sum_must_hold_the_shares_the_noise_was_split_over():
    """secure_min_sum (what the node passes to its RoundCoordinator): the t member_noise divides
    sigma by, with noise and secure aggregation; 0 (the Shamir threshold alone) otherwise."""
    from bitswarm.node.runtime import secure_min_sum
    for peers in (2, 7, 15):
        cfg = SimpleNamespace(dp_noise=1.2, secure_aggregation=True, min_peers=peers)
        t = secure_min_sum(cfg)
        assert t == threshold(peers + 1)
        assert math.isclose(member_noise(cfg) ** 2 * t, 1.2 ** 2)   # t shares: sigma^2 in all
    assert secure_min_sum(SimpleNamespace(dp_noise=0.0, secure_aggregation=True, min_peers=7)) == 0
    assert secure_min_sum(SimpleNamespace(dp_noise=1.0, secure_aggregation=False, min_peers=7)) == 0
