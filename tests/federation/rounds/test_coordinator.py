"""Round protocol over an in-memory network of N coordinators in one trio process.

MemoryNetwork / MemoryTransport (bitswarm.simulations.memory_net) are a TEST DOUBLE OF THE
TRANSPORT (the network itself is tested in transport/test_host.py and discovery/ with real
libp2p hosts), not of what is tested here: the RoundCoordinator, wire format, codecs and
aggregation rules all run for real. Time is trio's MockClock (autojump), so deadlines of tens
of seconds take milliseconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
import zstandard
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import codecs, wire
from bitswarm.federation.round_record import decode_record, encode_record
from bitswarm.federation.aggregation import AggregationRule, Contribution, fedavg
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.rounds import RoundCoordinator, SwarmMovedOn
from bitswarm.federation.rounds.serving import SERVED_ROUNDS
from bitswarm.federation.state_hash import adapter_digest
from bitswarm.simulations.memory_net import MemoryNetwork
from bitswarm.kernels.config import LoRAConfig

SWARM = "test-swarm"
BASE = hashlib.sha256(b"base model").hexdigest()
LORA = LoRAConfig(rank=4, alpha=8.0)
SHAPES = {f"layers.{i}.{m}.lora_{ab}": ((4, 32) if ab == "A" else (32, 4))
          for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB"}
TIMEOUT_S = 30.0


async def inline(fn):
    """run_blocking for MockClock tests: worker threads would let the clock jump meanwhile."""
    return fn()


def make_coord(net: MemoryNetwork, **over) -> RoundCoordinator:
    transport, kp = net.add(over.pop("key_pair", None))
    kw = dict(swarm=SWARM, base_model=BASE, lora=LORA, expected_shapes=SHAPES, min_peers=2,
              round_timeout_s=TIMEOUT_S, fetch_timeout_s=5.0, republish_interval_s=2.0,
              run_blocking=inline)
    kw.update(over)
    return RoundCoordinator(transport, kp, **kw)


def delta_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in SHAPES.items()}


def same_bits(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


async def exchange_all(coords, rnd: int, tokens=None, seeds=None):
    results = [None] * len(coords)

    async def one(i):
        seed = (seeds or {}).get(i, 1000 * rnd + i)
        results[i] = await coords[i].exchange(rnd, delta_for(seed), (tokens or [100 + i] * 9)[i])

    async with trio.open_nursery() as n:
        for i in range(len(coords)):
            n.start_soon(one, i)
    return results


def run_mock(fn):
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


# --- tests ---------------------------------------------------------------------------------

def test_three_nodes_three_rounds_bit_identical():
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net) for _ in range(3)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            for rnd in range(3):
                t0 = trio.current_time()
                res = await exchange_all(coords, rnd, tokens=[100, 300, 600])
                assert trio.current_time() - t0 < 1.0       # quorum, not the deadline
                ids = sorted(c.peer_id for c in coords)
                for r in res:
                    assert r.round == rnd and r.contributors == ids and r.rejected == []
                    assert r.bytes_sent > 0 and r.bytes_received > 0
                    assert same_bits(r.aggregate, res[0].aggregate)
                # The aggregate is FedAvg of the true deltas, up to int8 error feedback.
                for k, s in SHAPES.items():
                    want = sum(w * delta_for(1000 * rnd + i)[k]
                               for i, w in enumerate([0.1, 0.3, 0.6]))
                    np.testing.assert_allclose(res[0].aggregate[k], want, atol=5e-5)
                    assert res[0].aggregate[k].dtype == np.float32 and res[0].aggregate[k].shape == s
            n.cancel_scope.cancel()
    run_mock(main)


def test_next_round_manifest_arriving_early_is_buffered():
    async def main():
        net = MemoryNetwork()
        # No republishing within the test: only the buffer can deliver the early manifest.
        a, b = (make_coord(net, min_peers=1, republish_interval_s=1e4) for _ in range(2))
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            await exchange_all([a, b], 0)
            b_result = []

            async def b_round1():
                b_result.append(await b.exchange(1, delta_for(7), 50))
            n.start_soon(b_round1)
            with trio.fail_after(1):
                while a.buffered(1) != [b.peer_id]:
                    await trio.sleep(0.001)
            # Two rounds ahead of a's window would be dropped, not buffered.
            assert a.buffered(1 + a.max_rounds_ahead + 1) == []
            t0 = trio.current_time()
            a_result = await a.exchange(1, delta_for(8), 70)
            assert trio.current_time() - t0 < 1.0
            with trio.fail_after(1):
                while not b_result:
                    await trio.sleep(0.001)
            assert a_result.contributors == b_result[0].contributors == sorted([a.peer_id, b.peer_id])
            assert same_bits(a_result.aggregate, b_result[0].aggregate)
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_round_the_swarm_closed_is_adopted_and_the_window_is_bounded():
    """b runs rounds 0 and 1 alone; a, starting later, finds b's round records for its rounds
    and adopts them (its own updates came too late), holding b's adapter bit for bit."""
    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=1, republish_interval_s=1e4)
        b = make_coord(net, min_peers=0, republish_interval_s=1e4)   # runs ahead alone
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            b0 = await b.exchange(0, delta_for(10), 40)
            b1 = await b.exchange(1, delta_for(11), 40)
            assert a.buffered(0) == a.buffered(1) == [b.peer_id]   # a has not started round 0
            for rnd, b_res in ((0, b0), (1, b1)):
                t0 = trio.current_time()
                res = await a.exchange(rnd, delta_for(20 + rnd), 60)
                assert trio.current_time() - t0 < 1.0
                assert res.contributors == [b.peer_id] and not res.included
                assert res.proposer == b.peer_id
                assert res.adapter_sha256 == b_res.adapter_sha256 == a.adapter_sha256
            # a is now at round 2: rounds up to 2 + max_rounds_ahead are buffered, no more.
            await b.exchange(2 + a.max_rounds_ahead, delta_for(12), 40)
            await b.exchange(3 + a.max_rounds_ahead, delta_for(13), 40)
            assert a.buffered(2 + a.max_rounds_ahead) == [b.peer_id]
            assert a.buffered(3 + a.max_rounds_ahead) == []
            assert b0.contributors == b1.contributors == [b.peer_id] and b0.included
            n.cancel_scope.cancel()
    run_mock(main)


@pytest.mark.parametrize("failures, accepted", [(2, True), (6, True), (40, False)])
def test_transient_fetch_failures_are_retried(failures, accepted):
    """a must fetch b's payload to check b's round record: failed passes are retried. The
    collection's fetch (3 passes, asked again up to FETCH_RETRIES = 4 times) and the check's
    (3 passes, asked again VERIFY_FETCH_RETRIES = 2 times, ~10 s apart) run side by side, 24
    passes at most; when all fail, the record cannot be checked, so a refuses it and proposes
    its own. (A 120 s round: the check's retries fit in its time limit.)"""
    async def main():
        net = MemoryNetwork()
        a, b = (make_coord(net, min_peers=m, round_timeout_s=120.0) for m in (1, 0))
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            b.transport.failing_serves = failures
            b_res = await b.exchange(0, delta_for(1), 10)
            res = await a.exchange(0, delta_for(2), 10)
            if accepted:
                assert res.contributors == [b.peer_id] and res.rejected == []
                assert res.adapter_sha256 == b_res.adapter_sha256
            else:
                assert res.contributors == [a.peer_id] and res.proposer == a.peer_id
                assert (b.peer_id, "fetch failed: connection: injected dial failure") in res.rejected
                assert any(p == b.peer_id and "could not be fetched" in r for p, r in res.rejected)
            n.cancel_scope.cancel()
    run_mock(main)


def test_payload_relayed_when_sender_is_unreachable():
    """Line a - b - c: gossip crosses b, but c holds no address of a (as with libp2p when
    only b was dialed); c gets a's payload from b, which verified and relays it."""
    async def main():
        net = MemoryNetwork()
        a, b, c = (make_coord(net) for _ in range(3))
        net.unlinked.add(frozenset((a.peer_id, c.peer_id)))
        async with trio.open_nursery() as n:
            for x in (a, b, c):
                await n.start(x.run)
            for rnd in range(2):
                res = await exchange_all([a, b, c], rnd)
                assert all(r.contributors == res[0].contributors for r in res)
                assert len(res[0].contributors) == 3 and all(r.rejected == [] for r in res)
                assert all(same_bits(r.aggregate, res[0].aggregate) for r in res)
            n.cancel_scope.cancel()
    run_mock(main)


def test_republish_reaches_a_late_joiner():
    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=1)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            a_result = []

            async def a_round():
                a_result.append(await a.exchange(0, delta_for(1), 10))
            n.start_soon(a_round)
            await trio.sleep(1.0)        # a has published; b does not exist yet
            b = make_coord(net, min_peers=1)
            await n.start(b.run)
            b_res = await b.exchange(0, delta_for(2), 10)
            with trio.fail_after(TIMEOUT_S):
                while not a_result:
                    await trio.sleep(0.01)
            assert b_res.contributors == a_result[0].contributors
            assert same_bits(b_res.aggregate, a_result[0].aggregate)
            n.cancel_scope.cancel()
    run_mock(main)


ZERO_DIGEST = adapter_digest({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})


def _hostile_manifest(kp, payload: bytes, *, rnd=0, signer=None, **over) -> bytes:
    m = wire.UpdateManifest(swarm=SWARM, round=rnd, base_model=BASE, lora=wire.lora_dict(LORA),
                            sender=peer_id_of(kp), tokens=10**6, codec=codecs.INT8_CODEC,
                            payload_sha256=hashlib.sha256(payload).digest(),
                            payload_size=len(payload), base_adapter=ZERO_DIGEST,
                            issued_at=int(time.time()), rule="fedavg")
    return wire.encode_manifest(dataclasses.replace(m, **over), signer or kp)


def test_hostile_manifests_and_payloads_rejected_honest_complete(caplog):
    caplog.set_level(logging.INFO, logger="bitswarm.federation.rounds")

    async def main():
        net = MemoryNetwork()
        # min_peers above the honest count: the round runs to the deadline, so every hostile
        # fetch has finished and been judged before we look.
        coords = [make_coord(net, min_peers=10) for _ in range(3)]
        seeds = iter(range(100, 200))

        def good():   # distinct per hostile peer: a shared one could be relayed by another
            return codecs.encode_update(delta_for(next(seeds)))[0]
        wrong_shape = {k: np.zeros((v.shape[0] + 1, v.shape[1]), np.float32)
                       for k, v in delta_for(0).items()}
        nan_delta = delta_for(5)
        first = sorted(SHAPES)[0]
        nan_delta[first][0, 0] = np.nan         # encode_update refuses NaN: build the container
        nan_payload = zstandard.ZstdCompressor().compress(msgpack.packb(
            {"codec": codecs.RAW_CODEC, "tensors": [[k, list(SHAPES[k]), nan_delta[k].tobytes()]
                                                   for k in sorted(SHAPES)]}))
        hostile = {}

        def add(name, payload_for_manifest, served=None, **manifest_over):
            t, kp = net.add()
            served = payload_for_manifest if served is None else served
            own_request = wire.encode_payload_request(
                0, hashlib.sha256(payload_for_manifest).digest())
            # Answers only the request for its own announced payload (with `served` bytes).
            t.set_payload_provider(lambda req, s=served, own=own_request: s if req == own else None)
            hostile[name] = (t, _hostile_manifest(kp, payload_for_manifest, **manifest_over))
            return t

        add("mis-signed", good(), signer=create_new_key_pair())
        add("wrong-swarm", good(), swarm="other-swarm")
        add("wrong-base", good(), base_model="0" * 64)
        add("wrong-lora", good(), lora=wire.lora_dict(dataclasses.replace(LORA, rank=8)))
        add("wrong-shape", codecs.encode_update(wrong_shape)[0])
        add("nan", nan_payload, codec=codecs.RAW_CODEC)
        flipped = good()
        add("hash-mismatch", flipped, served=flipped[:-1] + bytes([flipped[-1] ^ 1]))
        lie = good()
        add("size-lie", lie, served=lie + b"\x00")
        t_garbage = add("garbage", good())
        expected = {"mis-signed": "bad signature", "wrong-swarm": "wrong swarm",
                    "wrong-base": "wrong base model", "wrong-lora": "LoRA config",
                    "wrong-shape": "shape", "nan": "non-finite",
                    "hash-mismatch": "SHA-256 mismatch", "size-lie": "fetch failed: oversize",
                    "garbage": "magic"}

        async with trio.open_nursery() as n:
            for c_ in coords:
                await n.start(c_.run)
            for name, (t, data) in hostile.items():
                # Garbage names no round: before the round it is only logged ...
                await t.publish(b"BSWX garbage" if name == "garbage" else data)

            async def garbage_during_round():
                await trio.sleep(1.0)        # ... during the round it is filed under it.
                await t_garbage.publish(b"BSWX garbage")
                for name, (t, data) in hostile.items():
                    if name != "garbage":    # republished: deduped by (sender, round)
                        await t.publish(data)
            n.start_soon(garbage_during_round)
            t0 = trio.current_time()
            res = await exchange_all(coords, 0)
            assert TIMEOUT_S <= trio.current_time() - t0 < TIMEOUT_S + 1
            honest = sorted(c_.peer_id for c_ in coords)
            for r in res:
                assert r.contributors == honest
                assert same_bits(r.aggregate, res[0].aggregate)
                by_peer = dict(r.rejected)
                for name, needle in expected.items():
                    pid = hostile[name][0].peer_id
                    assert pid in by_peer, (name, r.rejected)
                    assert needle in by_peer[pid], (name, by_peer[pid])
                assert len(r.rejected) == len(expected)      # one entry per bad peer
            n.cancel_scope.cancel()
        assert f"invalid gossip from {t_garbage.peer_id}: manifest has wrong magic" in caplog.text
        assert "rejected update" in caplog.text
    run_mock(main)


def test_deadline_with_missing_peer_aggregates_the_rest(caplog):
    caplog.set_level(logging.INFO, logger="bitswarm.federation.rounds")

    async def main():
        net = MemoryNetwork()
        a, b, silent = (make_coord(net, min_peers=2) for _ in range(3))
        async with trio.open_nursery() as n:
            for c in (a, b, silent):
                await n.start(c.run)
            t0 = trio.current_time()
            ra, rb = await exchange_all([a, b], 0)
            elapsed = trio.current_time() - t0
            assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1
            assert ra.contributors == rb.contributors == sorted([a.peer_id, b.peer_id])
            assert same_bits(ra.aggregate, rb.aggregate)
            n.cancel_scope.cancel()
        assert "deadline" in caplog.text and "1 of 2 peer updates" in caplog.text
    run_mock(main)


def test_alone_at_deadline_aggregate_is_own_decoded_delta(caplog):
    caplog.set_level(logging.WARNING, logger="bitswarm.federation.rounds")

    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=1)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            delta = delta_for(3)
            res = await a.exchange(0, delta, 10)
            _, decoded = codecs.encode_update(delta)     # first round: no residual yet
            assert res.contributors == [a.peer_id] and same_bits(res.aggregate, decoded)
            n.cancel_scope.cancel()
        assert "no valid peer update" in caplog.text and "own delta alone" in caplog.text
    run_mock(main)


def test_payloads_served_for_the_last_rounds_only():
    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=0)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            last = SERVED_ROUNDS
            for rnd in range(last + 1):
                await a.exchange(rnd, delta_for(rnd), 10)
            manifests = {}
            for sender, data in net.published:
                if data[:4] == wire.MANIFEST_MAGIC:
                    m = wire.decode_manifest(data)
                    manifests[m.round] = m
            provider = a.transport._provider
            assert provider(wire.encode_payload_request(0, manifests[0].payload_sha256)) is None
            for rnd in range(1, last + 1):
                p = provider(wire.encode_payload_request(rnd, manifests[rnd].payload_sha256))
                assert p is not None and hashlib.sha256(p).digest() == manifests[rnd].payload_sha256
            assert provider(b"junk") is None
            assert provider(wire.encode_payload_request(last, b"\x00" * 32)) is None
            # The held adapter is served by its hash (state sync), lossless.
            state = provider(wire.encode_state_request(a.round, bytes.fromhex(a.adapter_sha256)))
            decoded = codecs.decode_update(state, expected_shapes=SHAPES, max_bytes=len(state))
            assert adapter_digest(decoded).hex() == a.adapter_sha256
            # Republished: the current round's manifest and the record adopted last.
            net.published.clear()
            await trio.sleep(2.5)
            assert [(d[:4], wire.decode_manifest(d).round if d[:4] == wire.MANIFEST_MAGIC
                     else decode_record(d).round) for _, d in net.published] == \
                [(b"BSRR", last), (b"BSWM", last)]
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_swarm_too_far_ahead_raises_swarm_moved_on():
    async def main():
        net = MemoryNetwork()
        a, b = make_coord(net, min_peers=0), make_coord(net, min_peers=0)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            for rnd in range(SERVED_ROUNDS):
                await a.exchange(rnd, delta_for(rnd), 10)
            await trio.sleep(2.5)
            with pytest.raises(SwarmMovedOn, match=f"at round {SERVED_ROUNDS}"):
                await b.exchange(0, delta_for(9), 10)
            assert (await b.catch_up()).round == SERVED_ROUNDS
            assert b.adapter_sha256 == a.adapter_sha256
            n.cancel_scope.cancel()
    run_mock(main)


def test_exchange_argument_errors():
    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=0)
        with pytest.raises(RuntimeError, match="run"):
            await a.exchange(0, delta_for(0), 10)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            with pytest.raises(ValueError, match="shapes"):
                await a.exchange(0, {k: v for k, v in list(delta_for(0).items())[1:]}, 10)
            with pytest.raises(ValueError, match="tokens"):
                await a.exchange(0, delta_for(0), 0)
            with pytest.raises(ValueError, match="tokens"):
                await a.exchange(0, delta_for(0), True)
            await a.exchange(np.int64(1), delta_for(0), np.int64(10))    # NumPy ints are fine
            b = make_coord(net, min_peers=5)              # waits for peers that never come
            await n.start(b.run)
            async with trio.open_nursery() as inner:     # a second concurrent exchange
                inner.start_soon(b.exchange, 4, delta_for(0), 10)
                with trio.fail_after(1):
                    while a.buffered(4) != [b.peer_id]:
                        await trio.sleep(0.001)          # b has published: it is mid-exchange
                with pytest.raises(RuntimeError, match="in progress"):
                    await b.exchange(5, delta_for(0), 10)
                inner.cancel_scope.cancel()
            await a.exchange(3, delta_for(0), 10)
            with pytest.raises(ValueError, match="before the held adapter's round"):
                await a.exchange(3, delta_for(0), 10)
            n.cancel_scope.cancel()
    run_mock(main)
    net = MemoryNetwork()
    t, _ = net.add()
    with pytest.raises(ValueError, match="key_pair"):
        RoundCoordinator(t, create_new_key_pair(), swarm=SWARM, base_model=BASE, lora=LORA,
                         expected_shapes=SHAPES)


# --- injected seams: codec and aggregation rule --------------------------------------------

class PlainMean(AggregationRule):
    """Unweighted mean in peer-ID order, float64: a second real rule for the seam."""

    name = "plain-mean"

    def aggregate(self, round, contributions):
        ordered = sorted(contributions, key=lambda c: c.peer_id)
        return {k: (sum(np.asarray(c.delta[k], np.float64) for c in ordered) / len(ordered))
                .astype(np.float32) for k in ordered[0].delta}


def test_injected_codecs_mix_in_one_swarm_and_lossless_gives_exact_fedavg():
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, codec=codecs.RawCodec()) for _ in range(2)]
        coords.append(make_coord(net, codec=codecs.Int8BlockCodec(block=64)))
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            res = await exchange_all(coords, 0, tokens=[100, 300, 600])
            n.cancel_scope.cancel()
        assert sorted(wire.decode_manifest(d).codec for _, d in net.published
                      if d[:4] == wire.MANIFEST_MAGIC) == \
            ["int8-block-zstd/1", "raw-zstd/1", "raw-zstd/1"]
        assert all(r.rejected == [] and same_bits(r.aggregate, res[0].aggregate) for r in res)
        _, int8_decoded = codecs.encode_update(delta_for(2), codec=codecs.Int8BlockCodec(block=64))
        want = fedavg([Contribution(coords[0].peer_id, 100, delta_for(0)),
                       Contribution(coords[1].peer_id, 300, delta_for(1)),
                       Contribution(coords[2].peer_id, 600, int8_decoded)])
        assert same_bits(res[0].aggregate, want)
    run_mock(main)


def test_injected_aggregation_rule_decides_the_aggregate():
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, codec=codecs.RawCodec(), aggregation=PlainMean())
                  for _ in range(3)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            res = await exchange_all(coords, 0, tokens=[1, 10, 1000])
            n.cancel_scope.cancel()
        # Unweighted, whatever the token counts: the rule, not FedAvg, made the aggregate.
        want = PlainMean().aggregate(0, [Contribution(c.peer_id, 1, delta_for(i))
                                         for i, c in enumerate(coords)])
        assert all(same_bits(r.aggregate, want) for r in res)
    run_mock(main)


def test_seam_argument_errors():
    net = MemoryNetwork()

    class Int8Variant(codecs.Int8BlockCodec):
        """Claims the int8 wire name, but receivers would decode it as the registered class."""

    for bad in ("raw-zstd/1", Int8Variant(), object()):
        with pytest.raises(ValueError, match="codec"):
            make_coord(net, codec=bad)
    with pytest.raises(ValueError, match="aggregation"):
        make_coord(net, aggregation=fedavg)


# --- protocol v2: agreement, stragglers, catch-up, forks ----------------------------------

def test_more_peers_than_min_peers_and_uneven_speeds_do_not_split_the_swarm():
    """5 nodes with --min-peers 1 finishing their training at different times: each round,
    every node adopts the same record and holds the same adapter."""
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, min_peers=1) for _ in range(5)]
        rng = np.random.default_rng(0)
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            for rnd in range(3):
                delays = rng.uniform(0, 3, len(coords))
                results = [None] * len(coords)

                async def one(i):
                    await trio.sleep(delays[i])           # uneven training times
                    results[i] = await coords[i].exchange(rnd, delta_for(100 * rnd + i), 50 + i)
                async with trio.open_nursery() as inner:
                    for i in range(len(coords)):
                        inner.start_soon(one, i)
                assert len({r.adapter_sha256 for r in results}) == 1, [r.contributors for r in results]
                assert len({r.proposer for r in results}) == 1
                assert len({c.adapter_sha256 for c in coords}) == 1
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_straggler_past_the_deadline_adopts_the_swarms_record(caplog):
    caplog.set_level(logging.WARNING, logger="bitswarm.federation.rounds")

    async def main():
        net = MemoryNetwork()
        fast, slow = make_coord(net, min_peers=1), make_coord(net, min_peers=1)
        async with trio.open_nursery() as n:
            await n.start(fast.run)
            await n.start(slow.run)
            results = {}

            async def run(c, name, delay):
                await trio.sleep(delay)
                results[name] = await c.exchange(0, delta_for(len(name)), 10)
            async with trio.open_nursery() as inner:
                inner.start_soon(run, fast, "fast", 0.0)
                inner.start_soon(run, slow, "slow", TIMEOUT_S + 15)   # trains past the deadline
            assert results["fast"].contributors == results["slow"].contributors == [fast.peer_id]
            assert not results["slow"].included and results["slow"].proposer == fast.peer_id
            assert fast.adapter_sha256 == slow.adapter_sha256
            both = await exchange_all([fast, slow], 1)            # then both take part again
            assert [r.contributors for r in both] == [sorted([fast.peer_id, slow.peer_id])] * 2
            assert fast.adapter_sha256 == slow.adapter_sha256
            n.cancel_scope.cancel()
        assert "came too late" in caplog.text
    run_mock(main)


def test_a_late_joiner_catches_up_and_takes_part():
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net) for _ in range(3)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            for rnd in range(3):
                await exchange_all(coords, rnd)
            late = make_coord(net, min_peers=3)
            await n.start(late.run)
            assert await late.catch_up() is None          # nothing heard yet: stays
            await trio.sleep(2.5)                         # one republish: records of round 2
            sync = await late.catch_up()
            assert sync is not None and sync.round == 3 == late.round
            assert late.adapter_sha256 == sync.adapter_sha256 == coords[0].adapter_sha256
            assert sync.signers == 3
            assert await late.catch_up() is None          # at the head now
            res = await exchange_all([*coords, late], 3)
            assert all(len(r.contributors) == 4 for r in res)
            assert len({c.adapter_sha256 for c in [*coords, late]}) == 1
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_node_on_a_minority_fork_resyncs_to_the_majority():
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net) for _ in range(3)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            await exchange_all(coords, 0)
            # A node at the same round on another adapter (say it missed the winning record).
            fork = make_coord(net, initial_round=1, initial_adapter=delta_for(99))
            await n.start(fork.run)
            await trio.sleep(2.5)
            assert fork.round == 1 and fork.adapter_sha256 != coords[0].adapter_sha256
            sync = await fork.catch_up()
            assert sync is not None and fork.adapter_sha256 == coords[0].adapter_sha256
            assert coords[0].settle_window_s == coords[0].settle_s     # small swarm: as set
            # The synced node republishes the head's record: the others' views count it as a
            # signer of the head (no stale claim of the adapter it left).
            await trio.sleep(2 * coords[0].republish_period_s + 1)
            support = coords[0].view.support(1, bytes.fromhex(coords[0].adapter_sha256))
            assert fork.peer_id in support
            # The majority does not move towards the lone fork.
            for c in coords:
                assert await c.catch_up() is None
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_minority_fork_stops_waiting_for_its_quorum_once_the_swarm_left_its_base():
    """Three nodes are at round 1 on adapter X; a fourth starts round 1 on another adapter (it
    adopted a losing record of round 0). Peers refuse its update (another base) and its
    min_peers of 3 can never be met, so without the fork watch it would wait out the whole
    round deadline. It sees the majority's claims instead, drops its update with
    SwarmMovedOn well before the deadline, and catch_up moves it to the majority's adapter."""
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, round_timeout_s=600.0) for _ in range(3)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            await exchange_all(coords, 0)
            fork = make_coord(net, initial_round=1, initial_adapter=delta_for(99),
                              min_peers=3, round_timeout_s=600.0)
            await n.start(fork.run)
            t0 = trio.current_time()
            with pytest.raises(SwarmMovedOn):
                await fork.exchange(1, delta_for(7), 100)
            assert trio.current_time() - t0 < 60           # not the 600 s deadline
            assert fork.round == 1                          # nothing adopted
            sync = await fork.catch_up()
            assert sync is not None and fork.adapter_sha256 == coords[0].adapter_sha256
            # the majority, on the better-supported side, never stops its own rounds
            res = await exchange_all([*coords, fork], 1)
            assert len({r.adapter_sha256 for r in res}) == 1
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_large_swarm_staggers_its_proposals_and_agrees():
    """26 nodes reach the quorum together: only the PROPOSERS best-ranked contributors propose
    (the rest wait for their record), and every node adopts the same record (without the
    stagger each of them proposed its own set). A node ranks itself among the updates it
    holds, so one that closed holding none of the best-ranked ones may propose too: 1-5
    proposers in 41 runs of this test alone, 6 in one full-suite run (all 26 nodes agreed
    every time; why the suite's runs draw more was not found). The bound, under a third of the
    swarm, still fails without the stagger (26)."""
    from bitswarm.federation.round_record import RECORD_MAGIC, decode_record
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, min_peers=12) for _ in range(26)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            await exchange_all(coords, 0, tokens=[100] * 26)   # round 0: every member is heard
            # 25 other members heard: the acknowledgement wait grows as the republish period
            from bitswarm.federation.rounds.serving import republish_period
            members = coords[0].view.signers(exclude=coords[0].peer_id)
            assert members == 25
            assert coords[0].settle_window_s == republish_period(coords[0].settle_s, 25) \
                == coords[0].settle_s * 25 / 8
            net.published.clear()
            res = await exchange_all(coords, 1, tokens=[100] * 26)
            proposers = {decode_record(d).proposer for _, d in net.published
                         if d[:4] == RECORD_MAGIC and decode_record(d).round == 1}
            assert 1 <= len(proposers) <= 8, len(proposers)
            assert len({c.adapter_sha256 for c in coords}) == 1
            assert all(r.adapter_sha256 == res[0].adapter_sha256 for r in res)
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_loaded_32_node_swarm_agrees_within_its_rounds():
    """32 nodes as on a mesh of starved processes (real-32 on 2 cores): each gossip delivery
    takes 0.5-10 s times the receiver's slowness (1-4x, fixed per node), each blocking step
    (aggregating, recomputing a record) 2 s times it, and training ends are spread over 9-30 s.
    Every node runs node start's loop (catch_up, train, exchange; SwarmMovedOn: catch up next).
    Over 5 rounds at most 20 of the adoptions land off their round's majority adapter, and all
    32 end on one adapter. The code before the quorum cap, the re-ranking after each recompute
    and the scaled proposal spread had 9-104 such adoptions in 9 runs (median 39); that code
    0-20 in 45 runs here and 31 once on CI (a slow best-ranked node's record landing after
    part of the swarm had adopted another); with stragglers following and the wait for
    contributors that outrank the best record's proposer, 0-15 in 46 runs (median 0)."""
    import random
    from collections import Counter, defaultdict
    n_nodes, rounds = 32, 5

    async def main():
        net = MemoryNetwork(gossip_delay_s=(0.5, 10.0), buffer=4096, record_published=False)
        rng = random.Random(7)
        coords = []
        for i in range(n_nodes):
            slowness = rng.uniform(1, 4)

            async def starved(fn, f=slowness):
                await trio.sleep(2.0 * f)
                return fn()
            kp = create_new_key_pair(hashlib.sha256(b"loaded-%d" % i).digest())
            c = make_coord(net, key_pair=kp, min_peers=20, round_timeout_s=900.0,
                           run_blocking=starved)
            c.transport.delay_factor = slowness
            coords.append(c)
        adopted: dict[int, Counter] = defaultdict(Counter)

        async def node(i, c):
            while True:
                await c.catch_up()
                rnd = c.round
                if rnd >= rounds:
                    return
                await trio.sleep(rng.uniform(9.0, 30.0))
                try:
                    res = await c.exchange(rnd, delta_for(1000 * rnd + i), 100)
                    adopted[rnd][res.adapter_sha256] += 1
                except SwarmMovedOn:
                    pass

        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            async with trio.open_nursery() as m:
                for i, c in enumerate(coords):
                    m.start_soon(node, i, c)
            for _ in range(10):                      # stragglers on a minority side re-sync
                await trio.sleep(30)
                for c in coords:
                    await c.catch_up()
            off = [sum(v.values()) - max(v.values()) for _, v in sorted(adopted.items())]
            assert sorted(adopted) == list(range(rounds))
            assert sum(off) <= 20, off
            assert len({c.adapter_sha256 for c in coords}) == 1
            assert all(c.round == rounds for c in coords)
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_record_naming_our_earlier_update_of_the_round_is_adopted():
    """a publishes an update for round 0, its exchange ends early (as when a catch-up moved it
    away), and it exchanges round 0 again on the same base with a new delta. Peers keep the
    first update (one per sender, round and base), so b's record names it: a recomputes the
    record from the payload it still serves and adopts it, instead of refusing the record and
    proposing a lone fork."""
    async def main():
        net = MemoryNetwork()
        a, b = make_coord(net, min_peers=1), make_coord(net, min_peers=1)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            with trio.move_on_after(1.0):
                await a.exchange(0, delta_for(1), 10)     # published, then interrupted
            assert a.round == 0
            b_res = await b.exchange(0, delta_for(2), 10)
            assert set(b_res.contributors) == {a.peer_id, b.peer_id}
            res = await a.exchange(0, delta_for(3), 10)
            assert res.proposer == b.peer_id and res.adapter_sha256 == b_res.adapter_sha256
            assert res.included and not any("names an update of ours" in r
                                            for _, r in res.rejected)
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_large_swarm_member_that_cannot_check_any_record_catches_up_instead_of_forking():
    """12 nodes (more than STAGGER_FROM other members), quorum 7. In round 1 node x hears
    all gossip but can fetch no payload (as under heavy load): it holds only its own update,
    every record fails its check, and a record of its own would be a lone fork of one update.
    x raises NoRecordAdopted (a SwarmMovedOn) without proposing, and catch_up moves it to the
    swarm's adapter once its links are back. (Before: x proposed, adopted and republished a
    lone fork.)"""
    from bitswarm.federation.round_record import RECORD_MAGIC
    from bitswarm.federation.rounds import NoRecordAdopted

    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, min_peers=6) for _ in range(12)]
        x, rest = coords[0], coords[1:]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            await exchange_all(coords, 0, tokens=[100] * 12)     # every member is heard
            net.unlinked = {frozenset((x.peer_id, c.peer_id)) for c in rest}
            net.published.clear()
            outcome = {}

            async def x_round():
                try:
                    await x.exchange(1, delta_for(77), 100)
                    outcome["x"] = "adopted"
                except NoRecordAdopted as e:
                    outcome["x"] = e
            async with trio.open_nursery() as m:
                m.start_soon(x_round)
                res = await exchange_all(rest, 1, tokens=[100] * 11)
            assert isinstance(outcome["x"], NoRecordAdopted), outcome
            assert isinstance(outcome["x"], SwarmMovedOn)
            assert "ours would hold 1 of the quorum's 7 updates" in str(outcome["x"])
            assert not any(s == x.peer_id and d[:4] == RECORD_MAGIC and decode_record(d).round == 1
                           for s, d in net.published)     # (its round-0 record is republished)
            majority = {r.adapter_sha256 for r in res}
            assert len(majority) == 1 and x.round == 1
            net.unlinked = set()
            await trio.sleep(2.5)                    # a republish: the adopters' records
            synced = await x.catch_up()
            assert synced is not None and x.round == 2 and x.adapter_sha256 in majority
            n.cancel_scope.cancel()
    run_mock(main)


def test_lone_forks_merge_onto_the_smallest_digest():
    """Every node closed a round alone (say its deadline passed under load): four lone forks
    of one signer each, none with two signers. They merge onto one adapter, the smallest
    digest, and then take part in rounds together again."""
    async def main():
        net = MemoryNetwork()
        coords = [make_coord(net, min_peers=0, initial_round=1, initial_adapter=delta_for(50 + i))
                  for i in range(4)]
        async with trio.open_nursery() as n:
            for c in coords:
                await n.start(c.run)
            await exchange_all(coords, 1)     # other bases: each refuses the others, closes alone
            digests = {c.adapter_sha256 for c in coords}
            assert len(digests) == 4 and all(c.round == 2 for c in coords)
            await trio.sleep(2.5)             # one republish: every fork's record is claimed
            for c in coords:
                await c.catch_up()
            assert {c.adapter_sha256 for c in coords} == {min(digests)}
            for c in coords:
                assert await c.catch_up() is None      # merged: nobody moves again
            for c in coords:
                c.min_peers = 3                        # now wait for each other
            res = await exchange_all(coords, 2)
            assert len({c.adapter_sha256 for c in coords}) == 1
            assert all(len(r.contributors) == 4 for r in res)
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_lone_claim_of_a_later_round_does_not_pull_a_lone_node_ahead():
    """Lone forks merge only within their own round: one signer claiming a later round is
    still not trusted (it could be a liar racing ahead)."""
    async def main():
        net = MemoryNetwork()
        a = make_coord(net, min_peers=0, initial_round=1, initial_adapter=delta_for(61))
        b, c = (make_coord(net, min_peers=0, initial_round=2, initial_adapter=delta_for(62 + i))
                for i in range(2))
        async with trio.open_nursery() as n:
            for x in (a, b, c):
                await n.start(x.run)
            async with trio.open_nursery() as inner:
                inner.start_soon(a.exchange, 1, delta_for(1), 10)
                inner.start_soon(b.exchange, 2, delta_for(2), 10)
                inner.start_soon(c.exchange, 2, delta_for(3), 10)
            assert (a.round, b.round, c.round) == (2, 3, 3)
            await trio.sleep(2.5)
            held = a.adapter_sha256
            assert await a.catch_up() is None and a.round == 2 and a.adapter_sha256 == held
            await b.catch_up()
            await c.catch_up()
            assert b.adapter_sha256 == c.adapter_sha256        # the two lone round-3 forks merged
            n.cancel_scope.cancel()
    run_mock(main)


def test_a_record_that_does_not_recompute_is_refused():
    """A hostile peer gossips a record naming every honest update plus its own (so it ranks
    first) but a made-up new adapter: the honest nodes fetch, recompute, refuse it, and agree
    among themselves."""
    async def main():
        net = MemoryNetwork()
        a, b = (make_coord(net, min_peers=3) for _ in range(2))   # wait for the hostile record
        h_t, h_kp = net.add()
        payload, _ = codecs.encode_update(delta_for(7))
        own_request = wire.encode_payload_request(0, hashlib.sha256(payload).digest())
        h_t.set_payload_provider(lambda req: payload if req == own_request else None)
        h_manifest = _hostile_manifest(h_kp, payload, tokens=10)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)

            async def hostile():
                await h_t.publish(h_manifest)
                await trio.sleep(1.0)
                honest = [d for s, d in net.published
                          if s in (a.peer_id, b.peer_id) and d[:4] == wire.MANIFEST_MAGIC]
                rec = encode_record(swarm=SWARM, round=0, base_model=BASE, lora=wire.lora_dict(LORA),
                                    rule=a.aggregation.name, base_adapter=ZERO_DIGEST,
                                    new_adapter=b"\x66" * 32, issued_at=int(time.time()),
                                    update_bytes=[h_manifest, *honest], key_pair=h_kp)
                await h_t.publish(rec.data)
            n.start_soon(hostile)
            ra, rb = await exchange_all([a, b], 0)
            assert ra.adapter_sha256 == rb.adapter_sha256 and ra.proposer != h_t.peer_id
            for r in (ra, rb):
                assert (h_t.peer_id, "round record's new adapter does not recompute from its "
                        "updates") in r.rejected
            n.cancel_scope.cancel()
    run_mock(main)


def test_follow_adopts_the_round_without_an_update_of_ours():
    async def main():
        net = MemoryNetwork()
        a, b = make_coord(net, min_peers=0), make_coord(net, min_peers=1)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            results = {}

            async def follow():
                results["b"] = await b.follow(0)
            n.start_soon(follow)
            await trio.sleep(0.5)
            results["a"] = await a.exchange(0, delta_for(1), 10)
            with trio.fail_after(TIMEOUT_S):
                while "b" not in results:
                    await trio.sleep(0.01)
            assert results["b"].contributors == [a.peer_id] and not results["b"].included
            assert b.round == 1 and b.adapter_sha256 == a.adapter_sha256
            lonely = make_coord(MemoryNetwork())
            await n.start(lonely.run)
            t0 = trio.current_time()
            assert await lonely.follow(0) is None and lonely.round == 0
            assert trio.current_time() - t0 >= 2 * TIMEOUT_S
            n.cancel_scope.cancel()
    run_mock(main)


def test_an_update_whose_sender_is_briefly_unreachable_is_asked_for_again():
    """A busy sender (its streams fail for a while: a loaded machine) is not a bad one: the
    manifest is fetched again after a pause and the update counts; a source that serves wrong
    bytes is rejected at once (hostile test above)."""
    async def main():
        net = MemoryNetwork()
        a, b = (make_coord(net, min_peers=1) for _ in range(2))
        net.nodes[b.peer_id].failing_serves = 4        # one fetch's 3 passes, then one more
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            ra, rb = await exchange_all([a, b], 0)
            assert ra.contributors == rb.contributors == sorted([a.peer_id, b.peer_id])
            assert ra.rejected == [] and a.adapter_sha256 == b.adapter_sha256
            n.cancel_scope.cancel()
    run_mock(main)


def test_an_endless_payload_server_holds_a_fetch_slot_for_a_bounded_time():
    """Slow servers hold fetch slots: each fetch (every pass and source together) ends within
    2 x fetch_timeout_s, so 12 endless servers and 8 slots still let the honest update in."""
    async def main():
        net = MemoryNetwork()
        a, honest = (make_coord(net, min_peers=13, max_parallel_fetches=8, round_timeout_s=60.0)
                     for _ in range(2))
        slow = []
        for i in range(12):
            t, kp = net.add()
            t.serve_delay_s = 1e6
            payload, _ = codecs.encode_update(delta_for(50 + i))
            t.set_payload_provider(lambda req, p=payload: p)
            slow.append((t, _hostile_manifest(kp, payload, tokens=10)))
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(honest.run)
            for t, m in slow:
                await t.publish(m)
            t0 = trio.current_time()
            res, _ = await exchange_all([a, honest], 0)
            assert trio.current_time() - t0 <= 60.0 + 6.0
            assert honest.peer_id in res.contributors
            timeouts = [r for p, r in res.rejected if "within 10 s" in r]
            assert len(timeouts) == 12, res.rejected
            n.cancel_scope.cancel()
    run_mock(main)
