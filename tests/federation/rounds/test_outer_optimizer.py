"""DiLoCo's outer Nesterov step (aggregation/outer.py) on its own and inside the round
protocol: the momentum is global state every node holds bit for bit, a late joiner receives
it by state sync, and peers with another outer step are not mixed in.

The network is memory_net's in-memory transport (a test double of the transport only; see
test_coordinator.py), on trio's MockClock.
"""
from __future__ import annotations

import numpy as np
import pytest
import trio

from bitswarm.federation.aggregation import MOMENTUM_PREFIX, FedAvg, NesterovOuter
from bitswarm.federation.codecs import RawCodec
from bitswarm.simulations.memory_net import MemoryNetwork

from .test_coordinator import SHAPES, delta_for, exchange_all, make_coord, run_mock


def test_nesterov_step_matches_sgd_nesterov_and_reduces_to_the_plain_step():
    rng = np.random.default_rng(0)
    g = {"w": rng.standard_normal(5).astype(np.float32)}
    state = {"w": rng.standard_normal(5).astype(np.float32),
             MOMENTUM_PREFIX + "w": rng.standard_normal(5).astype(np.float32)}
    out = NesterovOuter(lr=0.7, momentum=0.9).step(state, g)
    # torch.optim.SGD(nesterov=True) on the pseudo-gradient d = -g, in float64:
    d, buf = -g["w"].astype(np.float64), -state[MOMENTUM_PREFIX + "w"].astype(np.float64)
    buf = 0.9 * buf + d
    want = state["w"] - 0.7 * (d + 0.9 * buf)
    np.testing.assert_allclose(out["w"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[MOMENTUM_PREFIX + "w"], -buf, rtol=1e-6)
    plain = NesterovOuter(lr=1.0, momentum=0.0).step(state, g)
    assert plain["w"].tobytes() == (state["w"] + g["w"]).tobytes()
    for bad in [dict(lr=0), dict(lr=float("nan")), dict(momentum=1.0), dict(momentum=-0.1)]:
        with pytest.raises(ValueError, match="outer"):
            NesterovOuter(**bad)


def test_a_swarm_with_an_outer_optimizer_agrees_on_adapter_and_momentum():
    outer = NesterovOuter(lr=0.7, momentum=0.9)

    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, outer=outer, codec=RawCodec()) for _ in range(3)]
        odd = make_coord(net, min_peers=3, round_timeout_s=5.0)      # no outer step
        async with trio.open_nursery() as n:
            for c in [*coords, odd]:
                await n.start(c.run)
            m = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
            g = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
            for rnd in range(3):
                res = await exchange_all([*coords, odd], rnd)
                assert all(len(r.contributors) == 3 for r in res[:3])   # odd one not mixed in
                assert len({c.adapter_sha256 for c in coords}) == 1
                # The same recursion in float64 from the plain FedAvg of the deltas sent.
                tokens = [100, 101, 102]
                deltas = [delta_for(1000 * rnd + i) for i in range(3)]
                for k in SHAPES:
                    agg = sum(t * d[k].astype(np.float64) for t, d in zip(tokens, deltas)) / 303
                    m[k] = 0.9 * m[k] + agg
                    g[k] = g[k] + 0.7 * (agg + 0.9 * m[k])
            for k in SHAPES:
                np.testing.assert_allclose(coords[0].adapter[k], g[k], rtol=1e-4, atol=1e-7)
                np.testing.assert_allclose(coords[0].state[MOMENTUM_PREFIX + k], m[k],
                                           rtol=1e-4, atol=1e-7)
            assert any("does not match" in r or "rule" in r for _, r in res[0].rejected)
            late = make_coord(net, outer=outer, min_peers=3)
            await n.start(late.run)
            await trio.sleep(2.5)                        # one republish of the records
            sync = await late.catch_up()
            assert sync is not None and late.adapter_sha256 == coords[0].adapter_sha256
            assert all(late.state[k].tobytes() == coords[0].state[k].tobytes()
                       for k in coords[0].state)
            res = await exchange_all([*coords, late], 3)
            assert len({c.adapter_sha256 for c in [*coords, late]}) == 1
            n.cancel_scope.cancel()
    run_mock(main)


def test_fedavg_rule_name_carries_the_outer_step():
    net = MemoryNetwork()
    assert make_coord(net).rule_name == "fedavg"
    c = make_coord(net, outer=NesterovOuter(0.5, 0.8), aggregation=FedAvg())
    assert c.rule_name == "fedavg+nesterov(lr=0.5,mu=0.8)"
    with pytest.raises(ValueError, match="outer"):
        make_coord(net, outer="diloco")
    dp = make_coord(net, outer=NesterovOuter(0.5, 0.8), dp=(0.05, 1.0))
    assert dp.rule_name == "fedavg+nesterov(lr=0.5,mu=0.8)+dp(c=0.05,s=1)"
    with pytest.raises(ValueError, match="dp must be"):
        make_coord(net, dp=(0.0, 1.0))


def test_peers_with_other_dp_settings_are_not_aggregated():
    """DP-FedAvg is a swarm setting: an update without the swarm's noise never counts."""
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, dp=(0.05, 1.0), round_timeout_s=5.0) for _ in range(2)]
        other = make_coord(net, dp=(0.05, 0.5), round_timeout_s=5.0)
        async with trio.open_nursery() as n:
            for c in [*coords, other]:
                await n.start(c.run)
            res = await exchange_all([*coords, other], 0)
            assert [len(r.contributors) for r in res] == [2, 2, 1]
            assert any("rule" in reason for _, reason in res[0].rejected)
            n.cancel_scope.cancel()
    run_mock(main)
