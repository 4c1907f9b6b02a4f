"""Secure-aggregation rounds (rounds/secure.py) over an in-memory network on trio's MockClock.

MemoryNetwork is a TEST DOUBLE OF THE TRANSPORT only: the coordinator, the secure round, the
crypto core, wire formats and records all run for real. A dropout is a node whose transport
goes dark right after it gossiped its encrypted shares (the cohort is fixed; its masked
input never leaves): fault injection in the network, not a mock of the protocol.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import trio
import trio.testing

from bitswarm.federation.aggregation import CoordinateMedian, FedAvg
from bitswarm.federation.round_record import decode_record
from bitswarm.federation.rounds import RoundCoordinator
from bitswarm.federation.rounds.secure import RoundAbandoned, quantizer_range, threshold
from bitswarm.federation.secagg import Quantizer
from bitswarm.federation.secagg.messages import (MASKED_CODEC, SECAGG_MAGIC, decode_masked,
                                                 decode_message)
from bitswarm.federation.wire import MANIFEST_MAGIC, decode_manifest
from bitswarm.kernels.config import LoRAConfig
from bitswarm.simulations.memory_net import MemoryNetwork

SWARM = "secagg-swarm"
BASE = hashlib.sha256(b"base model").hexdigest()
LORA = LoRAConfig(rank=4, alpha=8.0)
SHAPES = {f"layers.{i}.{m}.lora_{ab}": ((4, 32) if ab == "A" else (32, 4))
          for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB"}
CLIP = 1.0
N_VALUES = sum(int(np.prod(s)) for s in SHAPES.values())


async def inline(fn):
    return fn()


def make(net: MemoryNetwork, n_others: int, **over) -> RoundCoordinator:
    transport, kp = net.add()
    kw = dict(swarm=SWARM, base_model=BASE, lora=LORA, expected_shapes=SHAPES,
              min_peers=n_others, round_timeout_s=30.0, fetch_timeout_s=5.0,
              republish_interval_s=2.0, run_blocking=inline, aggregation=FedAvg(),
              dp=(CLIP, 0.0), secure_aggregation=True)
    kw.update(over)
    return RoundCoordinator(transport, kp, **kw)


def delta_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {k: (rng.standard_normal(s) * 1e-2).astype(np.float32) for k, s in SHAPES.items()}
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()))
    return {k: v * np.float32(min(1.0, 0.9 * CLIP / norm)) for k, v in d.items()}   # clipped


def fedavg_of(deltas: list[dict], tokens: list[int]) -> dict[str, np.ndarray]:
    w = np.array(tokens, np.float64) / sum(tokens)
    return {k: sum(wi * d[k].astype(np.float64) for wi, d in zip(w, deltas)) for k in SHAPES}


def run_mock(fn):
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def go_dark_after_shares(net: MemoryNetwork, coord: RoundCoordinator, dead: trio.Event) -> None:
    """The node's link dies right after its shares message is out: it left the cohort after
    the cohort was fixed (Bonawitz et al.'s dropout before the masked-input step)."""
    t = coord.transport
    publish = t.publish

    async def dying_publish(data: bytes) -> None:
        if dead.is_set():
            await trio.lowlevel.checkpoint()
            return
        await publish(data)
        if bytes(data[:4]) == SECAGG_MAGIC and decode_message(data).kind == "shares":
            net.remove(t.peer_id)
            dead.set()

    t.publish = dying_publish


async def run_round(net, coords, rnd, tokens, dropouts=()):
    """Exchange round `rnd` on every node; nodes in `dropouts` (indices) go dark after their
    shares. Returns (results by index, None for dropouts / abandoned, exceptions)."""
    results, errors = {}, {}

    async def one(i):
        d = delta_for(100 * rnd + i)
        if i in dropouts:
            dead = trio.Event()
            go_dark_after_shares(net, coords[i], dead)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as n:
                    async def stop():
                        await dead.wait()
                        scope.cancel()
                    n.start_soon(stop)
                    await coords[i].exchange(rnd, d, tokens[i])
            return
        try:
            results[i] = await coords[i].exchange(rnd, d, tokens[i])
        except RoundAbandoned as e:
            errors[i] = e

    async with trio.open_nursery() as n:
        for i in range(len(coords)):
            n.start_soon(one, i)
    return results, errors


def test_threshold_is_a_majority_of_at_least_three():
    assert [threshold(n) for n in (3, 4, 5, 6, 8, 16)] == [3, 3, 3, 4, 5, 9]


def test_secure_rounds_equal_plain_fedavg_within_the_quantization_step():
    async def main():
        net = MemoryNetwork()
        coords = [make(net, 3) for _ in range(4)]
        tokens = [100, 200, 300, 400]
        assert all(c.rule_name == "fedavg+dp(c=1,s=0)+secagg" for c in coords)
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            for rnd in range(2):
                base = {k: v.copy() for k, v in coords[0].adapter.items()}
                res, err = await run_round(net, coords, rnd, tokens)
                assert not err
                ids = sorted(c.peer_id for c in coords)
                want = fedavg_of([delta_for(100 * rnd + i) for i in range(4)], tokens)
                step = Quantizer(quantizer_range(CLIP, 0.0)).step
                for r in res.values():
                    assert r.contributors == ids and r.included and r.rejected == []
                    assert r.adapter_sha256 == res[0].adapter_sha256          # same bits
                    for k in SHAPES:
                        assert r.aggregate[k].dtype == np.float32
                        # 4 members' rounding (half a step each) over the full weight, plus
                        # float32 rounding of the result.
                        np.testing.assert_allclose(r.aggregate[k], want[k],
                                                   atol=4 * 0.5 * step + 1e-8, rtol=1e-6)
                        np.testing.assert_array_equal(
                            r.adapter[k], (base[k] + r.aggregate[k]).astype(np.float32))
                # The record names the masked payloads, not plain ones.
                record = decode_record(coords[0]._served.records[rnd])
                assert [m.codec for m in record.updates] == [MASKED_CODEC] * 4
                assert record.rule.endswith("+secagg")
            n.cancel_scope.cancel()
    run_mock(main)


def test_what_a_peer_receives_reveals_nothing_of_an_update():
    async def main():
        net = MemoryNetwork()
        coords = [make(net, 2) for _ in range(3)]
        tokens = [100, 100, 100]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            res, err = await run_round(net, coords, 0, tokens)
            assert not err and len(res) == 3
            n.cancel_scope.cancel()
        target = coords[0]
        plain = delta_for(0)
        flat = np.concatenate([plain[k].astype(np.float64).ravel() for k in sorted(SHAPES)])
        q = Quantizer(quantizer_range(CLIP, 0.0)).encode(flat, 1 / 3)
        # Everything node 0 gossiped, and its served masked payload (what any peer fetched).
        gossip = [d for s, d in net.published if s == target.peer_id]
        manifests = [decode_manifest(d) for d in gossip if d[:4] == MANIFEST_MAGIC]
        assert [m.codec for m in manifests] == [MASKED_CODEC] * len(manifests)
        payload = target._served.payloads[(0, manifests[0].payload_sha256)]
        cohort, y = decode_masked(payload, N_VALUES)
        assert len(cohort) == 3
        # Neither the float32 update nor its fixed-point form appears in any byte sent.
        for blob in gossip + [payload]:
            for k in SHAPES:
                assert plain[k].tobytes()[:64] not in blob
            assert q.tobytes()[:64] not in blob
        # The masked vector looks uniform mod 2^32 and is uncorrelated with the input.
        u = y.astype(np.float64) / 2**32
        assert abs(u.mean() - 0.5) < 0.03 and abs(u.var() - 1 / 12) < 0.01
        assert abs(np.corrcoef(y.astype(np.float64), q.view(np.int32))[0, 1]) < 0.1
        hist = np.bincount(np.frombuffer(y.tobytes(), np.uint8), minlength=256)
        chi2 = float(((hist - hist.mean()) ** 2 / hist.mean()).sum())
        assert chi2 < 400                    # 255 d.o.f.: uniform bytes (p ~ 1e-8 cutoff)
    run_mock(main)


@pytest.mark.parametrize("drops", [1, 2])
def test_dropouts_after_the_cohort_is_fixed_are_survived(drops):
    async def main():
        net = MemoryNetwork()
        coords = [make(net, 4) for _ in range(5)]
        tokens = [100, 200, 300, 400, 500]
        dropouts = set(range(5 - drops, 5))
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            res, err = await run_round(net, coords, 0, tokens, dropouts=dropouts)
            assert not err and set(res) == set(range(5 - drops))
            live = sorted(range(5 - drops))
            want = fedavg_of([delta_for(i) for i in live], [tokens[i] for i in live])
            step = Quantizer(quantizer_range(CLIP, 0.0)).step
            w_s = sum(tokens[i] for i in live) / sum(tokens)
            for r in res.values():
                assert r.contributors == sorted(coords[i].peer_id for i in live)
                assert r.adapter_sha256 == res[0].adapter_sha256
                for k in SHAPES:
                    np.testing.assert_allclose(r.aggregate[k], want[k],
                                               atol=5 * 0.5 * step / w_s + 1e-8, rtol=1e-6)
            n.cancel_scope.cancel()
    run_mock(main)


def test_fewer_than_t_survivors_abandon_the_round_and_reveal_nothing(caplog):
    async def main():
        net = MemoryNetwork()
        coords = [make(net, 4) for _ in range(5)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            held = [c.adapter_sha256 for c in coords]
            res, err = await run_round(net, coords, 0, [100] * 5, dropouts={2, 3, 4})
            assert not res and set(err) == {0, 1}
            for e in err.values():
                assert "below the threshold 3" in e.reason
            assert [coords[i].adapter_sha256 for i in (0, 1)] == held[:2]
            assert coords[0].round == 1              # the round passed empty: G_1 = G_0
            n.cancel_scope.cancel()
        sent = {(decode_message(d).sender, decode_message(d).kind)
                for _, d in net.published if d[:4] == SECAGG_MAGIC}
        kinds = [k for _, k in sent]
        assert "unmask" not in kinds and kinds.count("shares") == 5
    with caplog.at_level(logging.WARNING, logger="bitswarm.federation.rounds"):
        run_mock(main)
    assert any("secure aggregation abandoned" in r.getMessage() for r in caplog.records)


def test_rules_that_need_individual_updates_are_refused():
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="needs the individual updates"):
        make(net, 2, aggregation=CoordinateMedian())
    with pytest.raises(ValueError, match="needs dp"):
        make(net, 2, dp=None)


def test_plain_and_secure_nodes_do_not_mix():
    async def main():
        net = MemoryNetwork()
        secure = [make(net, 2, round_timeout_s=10.0) for _ in range(3)]
        plain = make(net, 1, secure_aggregation=False, round_timeout_s=10.0)
        async with trio.open_nursery() as n:
            for c in secure + [plain]:
                await n.start(c.run)
            results = {}

            async def one(i, c):
                results[i] = await c.exchange(0, delta_for(i), 100)
            async with trio.open_nursery() as m:
                for i, c in enumerate(secure + [plain]):
                    m.start_soon(one, i, c)
            assert results[0].contributors == sorted(c.peer_id for c in secure)
            assert results[3].contributors == [plain.peer_id]
            assert any("aggregation rule" in why for _, why in results[3].rejected)
            n.cancel_scope.cancel()
    run_mock(main)


def test_split_views_of_the_survivors_never_reveal_both_secrets_of_a_member():
    """The victim's masked input reaches only two members (a partition of that one payload):
    they and the victim see 5 survivors, the other two see 4. Without a vote the two sides
    would reveal b (one side) and s (the other) of the victim; with it, every reveal is for
    the one set that won t = 3 votes, and the side that lacks the payload cannot finish."""
    async def main():
        net = MemoryNetwork()
        coords = [make(net, 4) for _ in range(5)]
        victim = coords[4].transport
        state = {"served": 0, "payload": None}

        def wrap(t):
            inner = t._provider

            def provider(request):
                out = inner(request)
                if out is None or out[:4] != b"BSMI":
                    return out
                if t is victim:
                    state["payload"] = out
                    state["served"] += 1
                    return out if state["served"] <= 2 else None
                return None if out == state["payload"] else out   # relays do not pass it on
            t._provider = provider

        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
                wrap(c.transport)
            res, err = await run_round(net, coords, 0, [100] * 5)
            everyone = sorted(c.peer_id for c in coords)
            assert len(res) == 3 and len(err) == 2            # the victim and its two holders
            assert {r.adapter_sha256 for r in res.values()} == {res[4].adapter_sha256}
            assert all(r.contributors == everyone for r in res.values())
            n.cancel_scope.cancel()
        unmasks = {decode_message(d).sender: decode_message(d) for _, d in net.published
                   if d[:4] == SECAGG_MAGIC and decode_message(d).kind == "unmask"}
        assert len(unmasks) == 5
        assert {tuple(m.fields["survivors"]) for m in unmasks.values()} == {tuple(everyone)}
    run_mock(main)


def test_a_sum_of_fewer_members_than_the_noise_share_assumes_is_never_revealed():
    """Distributed DP: each member's noise share assumes a revealed sum of at least
    secure_min_sum updates (node start: threshold(--min-peers + 1)). A masking cohort can end
    smaller than expected (the keys phase closes with whoever sent keys), and its own Shamir
    threshold would unmask fewer survivors. Here a cohort of 4 loses one member after its
    shares: 3 survivors meet threshold(4) = 3, but not a noise share made for a sum of 4, so
    the round is abandoned with that reason and no unmask share is ever sent; without
    secure_min_sum the same round reveals the 3 members' sum."""
    from bitswarm.federation.rounds.secure import threshold as t_of
    assert t_of(5) == 3 and t_of(4) == 3

    async def main(min_sum, expect_abandon):
        net = MemoryNetwork()
        coords = [make(net, 3, dp=(CLIP, 0.5), secure_min_sum=min_sum, round_timeout_s=20.0)
                  for _ in range(4)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            res, err = await run_round(net, coords, 0, [100] * 4, dropouts={3})
            if expect_abandon:
                assert not res and set(err) == {0, 1, 2}
                for e in err.values():
                    assert "distributed DP" in e.reason, e.reason
            else:
                assert not err and set(res) == {0, 1, 2}
                assert all(len(r.contributors) == 3 for r in res.values())
            n.cancel_scope.cancel()
        kinds = [decode_message(d).kind for _, d in net.published if d[:4] == SECAGG_MAGIC]
        assert ("unmask" in kinds) != expect_abandon
    run_mock(lambda: main(4, True))
    run_mock(lambda: main(0, False))


def test_secure_min_sum_needs_secure_aggregation():
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="secure_min_sum"):
        make(net, 2, secure_aggregation=False, secure_min_sum=3)
