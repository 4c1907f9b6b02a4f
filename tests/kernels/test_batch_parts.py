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


def test_run_parts_runs_each_part_on_its_own_thread_heavy_ops_over_its_share(monkeypatch):
    monkeypatch.setenv("BITSWARM_CPU_THREADS", "4")
    barrier = threading.Barrier(2, timeout=10)   # both parts must be running at once
    seen = []

    def part(tag):
        barrier.wait()
        pieces, heavy = [], []
        threads.run_split(lambda lo, hi: pieces.append((lo, hi)), 1024)
        threads.run_split(lambda lo, hi: heavy.append((lo, hi)), 1024, heavy=True)
        seen.append((tag, threading.get_ident(), sorted(pieces), sorted(heavy)))
        return tag

    assert threads.run_parts([lambda: part("a"), lambda: part("b")]) == ["a", "b"]
    assert len({ident for _, ident, _, _ in seen}) == 2
    # inside a part a light op runs on the part's thread, whole; a heavy one over the part's
    # share of the 4 workers (2)
    assert all(p == [(0, 1024)] for _, _, p, _ in seen)
    assert all(h == [(0, 512), (512, 1024)] for _, _, _, h in seen)
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


def _callee(a):
    return a + 1


def _caller(a):
    return _callee_kernel(a) * 2  # noqa: F821 - a Kernel the test puts in the globals


def test_a_loop_is_published_only_with_its_callees_compiled(monkeypatch):
    """numba types a loop's globals at its first call; a thread that got the dispatcher before
    its callees' names were swapped for their dispatchers failed with "Untyped global name
    '_absmax_rows'" (seen with 4 batch parts on a 16-core host)."""
    from bitswarm.kernels.ops import jit
    if not jit.enabled():
        pytest.skip("numba not installed")
    seen = []
    real = jit._numba.njit

    def njit(*a, **k):
        wrap = real(*a, **k)

        def take(fn):
            seen.append([n for n in fn.__code__.co_names
                         if isinstance(fn.__globals__.get(n), jit.Kernel)])
            return wrap(fn)
        return take
    monkeypatch.setattr(jit._numba, "njit", njit)

    callee, caller = jit.Kernel(_callee), jit.Kernel(_caller)
    monkeypatch.setitem(_caller.__globals__, "_callee_kernel", callee)
    assert caller.fast(3) == 8
    assert seen == [[], []]          # the callee, then the caller: no Kernel left to type


def test_parts_compile_loops_at_once_in_a_fresh_cache(tmp_path):
    """Four threads make the first calls of fused loops (and their callees) together, in a
    process whose numba cache is empty: every one gets the right values."""
    import subprocess
    import sys
    code = r"""
import threading, numpy as np
from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops.bitlinear import cpu, reference as ref
if not jit.enabled():
    print("skip"); raise SystemExit
x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
want = ref.quantize_act(x)
bar, out = threading.Barrier(4), []
def go():
    bar.wait()
    out.append(cpu.quantize_act(x))
ts = [threading.Thread(target=go) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert len(out) == 4, out
for xq, s in out:
    assert np.array_equal(np.asarray(xq, np.float32), want[0].astype(np.float32))
    assert np.array_equal(s, want[1])
print("ok")
"""
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path), "BITSWARM_CPU_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.strip() == "skip":
        pytest.skip("numba not installed")
    assert r.stdout.strip() == "ok"
