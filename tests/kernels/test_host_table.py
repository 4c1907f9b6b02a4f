"""Host-resident embedding / lm_head tables (GpuBackend(table_residency="host")): the embedding
gather runs on the host and the lm_head streams through one chunk buffer. Same kernels on the
same float16 values in the same order as the GPU-resident table, so results are bit-identical;
the table's bytes leave GPU memory."""
from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import pytest

from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.gpu_backend import GpuBackend
from bitswarm.kernels.lora import init_lora
from bitswarm.kernels.model import BitNetModel

from bitswarm.formats.hf_checkpoint import random_bitnet
from bitswarm.kernels.device import round_size
from bitswarm.kernels.ops.lm_head.host_table import HostTable
from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK

from .test_model_memory import CFG as SMALL

# vocab of 6+ lm_head chunks, so the streamed chunk buffer and its two upload slots are
# smaller than the table
CFG = replace(SMALL, vocab_size=6 * LM_CHUNK + 123)

F32 = np.float32


@pytest.fixture(scope="module")
def host(gpu):
    return GpuBackend(gpu.ctx, table_residency="host", ste=gpu.ste_precision)


def test_rejects_unknown_residency(gpu):
    with pytest.raises(ValueError, match="residency"):
        GpuBackend(gpu.ctx, table_residency="disk")


def test_embedding_equals_gpu_table(gpu, host):
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((300, 20)) * 3).astype(F32)
    ht = host.table(table)
    assert isinstance(ht, HostTable) and ht.dtype == "float16" and ht.shape == (300, 20)
    ids = rng.integers(0, 300, 37).astype(np.int32)
    got = host.numpy(host.embedding(host.tensor(ids), ht))
    want = gpu.numpy(gpu.embedding(gpu.tensor(ids), gpu.table(table)))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexError):
        host.embedding(host.tensor(np.array([300], np.int32)), ht)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("N,V,D,chunk", [(9, 300, 16, 64), (70, 1000, 33, 97), (5, 257, 130, 1000)])
def test_lm_head_cross_entropy_equals_gpu_table(gpu, host, N, V, D, chunk, grad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D)).astype(F32)
    w = (rng.standard_normal((V, D)) * 0.5).astype(F32)
    t = rng.integers(0, V, N).astype(np.int32)
    t[::4] = -1
    lg, dg = gpu.lm_head_cross_entropy(gpu.tensor(x), gpu.table(w), gpu.tensor(t), 0.25,
                                       chunk=chunk, grad=grad)
    ht = host.table(w)
    lh, dh = host.lm_head_cross_entropy(host.tensor(x), ht, host.tensor(t), 0.25,
                                        chunk=chunk, grad=grad)
    np.testing.assert_array_equal(host.numpy(lh), gpu.numpy(lg))
    assert (dh is None) == (dg is None) == (not grad)
    if grad:
        np.testing.assert_array_equal(host.numpy(dh), gpu.numpy(dg))
    with pytest.raises(IndexError):
        host.lm_head_cross_entropy(host.tensor(x), host.table(w),
                                   host.tensor(np.full(N, V, np.int32)), 1.0, chunk=chunk)


def test_logits_matmul_streams_the_table(gpu, host):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 24)).astype(F32)
    w = rng.standard_normal((20000, 24)).astype(F32)      # > LM_CHUNK rows: several chunks
    got = host.numpy(host.matmul(host.tensor(x), host.table(w), trans_b=True))
    want = gpu.numpy(gpu.matmul(gpu.tensor(x), gpu.table(w), trans_b=True))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="host-resident"):
        host.matmul(host.tensor(np.zeros((3, 20000), F32)), host.table(w))


def _model(be):
    lcfg = LoRAConfig(rank=4, alpha=8.0)
    w = random_bitnet(CFG, 0)
    w.embed_tokens = (w.embed_tokens * 25).astype(np.float16).astype(F32)
    m = BitNetModel(w, be, lcfg)
    rng = np.random.default_rng(0)
    m.set_lora({k: (rng.standard_normal(v.shape) * 0.1).astype(F32)
                for k, v in init_lora(CFG, lcfg, 0).items()})
    return m


def test_training_step_identical_and_table_off_the_gpu(gpu, host):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
    tg = rng.integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
    tg[1, 9:] = -1
    peaks, resident, results = {}, {}, {}
    for name, be in (("gpu", gpu), ("host", host)):
        gc.collect()
        be.ctx.trim()
        be.ctx.reset_peak()
        base = be.ctx.allocated_bytes
        m = _model(be)
        resident[name] = be.ctx.allocated_bytes - base
        loss, count, grads = m.loss_and_grads(ids, tg)
        results[name] = (loss, {k: be.numpy(v) for k, v in grads.items()}, m.loss(ids, tg))
        peaks[name] = be.ctx.peak_allocated_bytes - base
        del m, grads
        gc.collect()
    (lg, gg, eg), (lh, gh, eh) = results["gpu"], results["host"]
    assert lg == lh and eg == eh
    for k in gg:
        np.testing.assert_array_equal(gh[k], gg[k], err_msg=k)
    table = round_size(CFG.vocab_size * CFG.hidden_size * 2)
    chunk = round_size(LM_CHUNK * CFG.hidden_size * 2)
    assert resident["gpu"] - resident["host"] == table, resident
    # the streamed chunk buffer and the two upload slots live only while the lm_head op runs;
    # the N target rows and the per-call id tensors add a few KiB
    # (here: 6 chunks of table against 3 chunks of streaming buffers, so the bound is a saving)
    assert peaks["host"] <= peaks["gpu"] - table + 3 * chunk + 16384, peaks
