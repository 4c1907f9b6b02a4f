"""GpuTrainOps (WGSL on wgpu; lavapipe on CI) against kernels/reference_train.py, and one full
quantization-aware training step on the GPU against the NumPy one.

Exact: the embedding backward (same summation order as np.add.at), the ternary codes GIVEN the
GPU's scale (round(w*s) is correctly rounded in WGSL), the 2-bit packed layout. Toleranced:
the absmean scale (fp32 tree sum + WGSL's 2.5-ulp division vs NumPy's float64 mean:
rtol 1e-5), dequantize_act (one WGSL division: rtol 1e-6), rmsnorm_weight_grad (fp32 sums in
a different order: atol 1e-5, rtol 1e-4).
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels import reference as ref
from bitswarm.kernels import reference_train as rt
from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import BitNetConfig
from bitswarm.kernels.gpu_backend import pack_ternary
from bitswarm.kernels.gpu_train_ops import GpuTrainOps
from bitswarm.training.engine import PretrainModel, init_latent

F32 = np.float32


def test_ternarize_matches_reference(gpu, close):
    ops = GpuTrainOps(gpu)
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((12, 37)) * 0.02).astype(F32),      # K not a multiple of 16
          (rng.standard_normal((64, 300)) * 3).astype(F32),
          np.zeros((4, 16), F32)]                                  # mean 0 -> scale 1e5
    handles = ops.ternarize_all([gpu.tensor(w) for w in ws])
    for w, h in zip(ws, handles):
        codes, s = rt.ternarize(w)
        close(np.array([h.weight_scale]), np.array([s]), 0.0, 1e-5, "absmean scale")
        want = np.clip(np.rint(w * h.weight_scale), -1, 1).astype(np.int8)
        np.testing.assert_array_equal(gpu.numpy(h.packed).view(np.uint32), pack_ternary(want))
        assert h.shape == w.shape
        # and the codes equal the reference's except where w*s sits on a rounding boundary
        assert np.mean(want != codes) < 1e-3


def test_dequantize_act(gpu, close):
    ops = GpuTrainOps(gpu)
    x = (np.random.default_rng(1).standard_normal((7, 45)) * 4).astype(F32)
    xq, xs = ref.quantize_act(x)
    got = gpu.numpy(ops.dequantize_act(gpu.tensor(xq), gpu.tensor(xs)))
    close(got, rt.dequantize_act(xq, xs), 0.0, 1e-6, "dequantize_act")


def test_rmsnorm_weight_grad(gpu, close):
    ops = GpuTrainOps(gpu)
    rng = np.random.default_rng(2)
    for N, C in ((1, 5), (130, 37)):           # 130 rows: three partial chunks of 64
        dy, x = rng.standard_normal((N, C)).astype(F32), rng.standard_normal((N, C)).astype(F32)
        _, rstd = ref.rmsnorm(x, np.ones(C, F32), 1e-5)
        got = gpu.numpy(ops.rmsnorm_weight_grad(gpu.tensor(dy), gpu.tensor(x), gpu.tensor(rstd)))
        close(got, rt.rmsnorm_weight_grad(dy, x, rstd), 1e-5, 1e-4, f"rmsnorm dw N={N}")


def test_embedding_backward_exact(gpu):
    ops = GpuTrainOps(gpu)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 11, 50).astype(np.int32)          # many repeats, some ids unseen
    dy = rng.standard_normal((50, 19)).astype(F32)
    got = gpu.numpy(ops.embedding_backward(ids, gpu.tensor(dy), 13))
    np.testing.assert_array_equal(got, rt.embedding_backward(ids, dy, 13))


def test_full_training_step_gpu_matches_cpu(gpu, close):
    cfg = BitNetConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       rope_theta=10000.0)
    latent = init_latent(cfg, seed=5)
    cpu_m = PretrainModel(cfg, latent, CpuBackend())
    gpu_m = PretrainModel(cfg, latent, gpu)
    # Same codes on both (a scale differing by an ulp could flip a boundary weight).
    for Lc, Lg in zip(cpu_m.layers, gpu_m.layers):
        for p, h in Lg.items():
            if hasattr(h, "packed"):
                np.testing.assert_array_equal(gpu.numpy(h.packed).view(np.uint32),
                                              pack_ternary(Lc[p].codes))
    rng = np.random.default_rng(6)
    seq = rng.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    ids, tgt = seq[:, :-1], seq[:, 1:]
    lc, nc, gc = cpu_m.loss_and_full_grads(ids, tgt)
    lg, ng, gg = gpu_m.loss_and_full_grads(ids, tgt)
    assert nc == ng
    close(gpu.numpy(lg), lc, 1e-4, 1e-4, "loss rows")
    for k in sorted(gc):
        close(gpu.numpy(gg[k]), gc[k], 2e-4, 2e-3, k)
