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
