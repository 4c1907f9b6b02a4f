"""CpuBackend's batch parts (kernels/ops/threads.py run_parts, kernels/model.py loss_and_grads):
sequence ranges of one training batch run concurrently, one thread each, and their gradients
are summed. The split must change float32 rounding only: the same loss, count and gradients as
the unsplit step (one worker), padding included."""
import threading

import numpy as np
import pytest

from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import PROJECTIONS, BitNetConfig, LoRAConfig
from bitswarm.kernels.lora import init_lora
from bitswarm.kernels.model import BitNetModel
from bitswarm.kernels.ops import threads

from .test_model_grad import tiny_weights

CFG = BitNetConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0)


def test_batch_parts_cover_the_batch_one_per_worker(monkeypatch):
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "2")
    assert threads.batch_parts(8, 128) == [(0, 4), (4, 8)]
    assert threads.batch_parts(1, 128) == [(0, 1)]           # one sequence: no split
    assert threads.batch_parts(2, 64) == [(0, 2)]            # 128 rows < 2 parts of 256
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "3")
    assert threads.batch_parts(8, 128) == [(0, 2), (2, 5), (5, 8)]
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "16")
    assert len(threads.batch_parts(16, 128)) == threads.MAX_PARTS == 4
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "1")
    assert threads.batch_parts(8, 128) == [(0, 8)]


def test_run_parts_runs_each_part_on_its_own_thread_unsplit(monkeypatch):
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "4")
    barrier = threading.Barrier(2, timeout=10)   # both parts must be running at once
    seen = []

    def part(tag):
        barrier.wait()
        pieces = []
        threads.run_split(lambda lo, hi: pieces.append((lo, hi)), 1024)
        seen.append((tag, threading.get_ident(), sorted(pieces)))
        return tag

    assert threads.run_parts([lambda: part("a"), lambda: part("b")]) == ["a", "b"]
    assert len({ident for _, ident, _ in seen}) == 2
    # inside a part an op runs on the part's thread, whole
    assert all(p == [(0, 1024)] for _, _, p in seen)
    # outside the parts, an op splits over all 4 again
    pieces = []
    threads.run_split(lambda lo, hi: pieces.append((lo, hi)), 1024)
    assert len(pieces) == 4


def test_run_parts_raises_a_parts_error_after_every_part_ends(monkeypatch):
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "2")
    ended = []

    def bad():
        raise RuntimeError("part failed")

    def good():
        ended.append(1)
        return 1

    with pytest.raises(RuntimeError, match="part failed"):
        threads.run_parts([bad, good])
    assert ended == [1]


@pytest.mark.parametrize("targets", [("q_proj", "k_proj", "v_proj", "o_proj"), PROJECTIONS])
def test_split_step_matches_the_unsplit_step(monkeypatch, targets):
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=targets)
    rng = np.random.default_rng(3)
    state = {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
             for k, v in init_lora(CFG, lcfg, 0).items()}
    ids = rng.integers(0, CFG.vocab_size, (6, 16)).astype(np.int32)
    tgt = rng.integers(0, CFG.vocab_size, (6, 16)).astype(np.int32)
    tgt[1, 9:] = -1                      # padding: the count is the whole batch's
    tgt[4, :] = -1                       # a part may hold a sequence with nothing predicted
    monkeypatch.setattr(threads, "PART_MIN_ROWS", 16)

    def step(workers):
        monkeypatch.setenv("BITSWARM_CPU_THREADS", str(workers))
        be = CpuBackend()
        assert len(be.batch_parts(6, 16)) == min(workers, 6)
        model = BitNetModel(tiny_weights(CFG), be, lcfg)
        model.set_lora(state)
        return model.loss_and_grads(ids, tgt)

    loss1, count1, g1 = step(1)
    for workers in (2, 3):
        loss, count, g = step(workers)
        assert count == count1 == 6 * 16 - 7 - 16
        assert loss == pytest.approx(loss1, rel=1e-6)
        assert set(g) == set(g1) == set(state)
        for k in g1:
            ref = np.asarray(g1[k])
            # float32 sums in another order: within a few ulps of the largest entry
            np.testing.assert_allclose(np.asarray(g[k]), ref, rtol=0,
                                       atol=1e-5 * float(np.abs(ref).max()), err_msg=k)
            assert np.abs(ref).max() > 0
