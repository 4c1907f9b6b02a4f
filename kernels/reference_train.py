"""NumPy reference for the extra ops of full (quantization-aware) training: the semantics each
WGSL training shader must match, and what the CPU training path runs.

kernels/reference.py covers the forward pass and every input gradient; pretraining also needs
the weight gradients of the base model, which LoRA fine-tuning never computes:
  * `ternarize`: absmean weight quantization of a latent fp32 projection, redone every step
    (BitNet b1.58, arXiv:2402.17764, eq. 1-3; transformers' WeightQuant in fp32);
  * `dequantize_act`: the int8 activations as the layer saw them, xq / x_scale, for
    dW = dy^T @ dequantize_act(xq, x_scale) (straight-through estimator through both
    quantizers: the gradient of the latent weight is that of the dequantized weight);
  * `rmsnorm_weight_grad`: dw of y = w * x * rstd;
  * `embedding_backward`: the scatter-add of the embedding lookup, in a fixed order.

Arrays are float32 unless stated; shapes use the symbols of kernels/config.py. Functions are
pure. `F32` is looked up at call time from kernels/reference.py so the float64 gradient check
(tests/kernels/test_pretrain_grad.py) can switch both modules at once.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels import reference as ref

QUANT_EPS = 1e-5   # clamp of mean|W|, as transformers' WeightQuant


def ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Absmean ternarization of a latent weight, per tensor, in float32.

    w float32 (out, in) -> codes int8 (out, in) in {-1, 0, +1}, weight_scale float32 scalar:
        s = 1 / max(mean|W|, 1e-5);  codes = clamp(round_half_even(W * s), -1, 1)
    mean|W| is accumulated in float64 and rounded to float32 (the GPU kernel sums in a fixed
    tree order in float32; see wgsl/ternarize.wgsl for the tolerance this implies). The layer
    uses W = codes / s. Raises ValueError for a non-2-D or non-finite weight.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"ternarize needs a 2-D (out, in) weight, got shape {w.shape}")
    w32 = w.astype(np.float32, copy=False)
    mean = np.float32(np.abs(w32).mean(dtype=np.float64))
    if not np.isfinite(mean):
        raise ValueError("ternarize: weight holds NaN or Inf")
    scale = np.float32(1.0) / max(mean, np.float32(QUANT_EPS))
    codes = np.clip(np.rint(w32 * scale), -1, 1).astype(np.int8)
    return codes, np.float32(scale)


def dequantize_act(xq: np.ndarray, x_scale: np.ndarray) -> np.ndarray:
    """xq int8 (N, C), x_scale float32 (N,) (quantize_act's outputs) -> xq / x_scale (N, C)."""
    return (xq.astype(ref.F32) / x_scale.astype(ref.F32)[:, None]).astype(ref.F32)


def bitlinear_weight_grad(dy: np.ndarray, xq: np.ndarray, x_scale: np.ndarray) -> np.ndarray:
    """Straight-through latent-weight gradient of bitlinear: dW = dy^T @ (xq / x_scale).

    dy (N, out), xq int8 (N, in), x_scale (N,) -> dW float32 (out, in). The GPU path runs the
    dense matmul with trans_a on dequantize_act's output.
    """
    return ref.matmul(dy, dequantize_act(xq, x_scale), trans_a=True)


def rmsnorm_weight_grad(dy: np.ndarray, x: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Weight gradient of y = w * x * rstd: dw[c] = sum_n dy[n, c] * x[n, c] * rstd[n].

    dy, x (N, C), rstd (N,) (rmsnorm's second output) -> dw (C,).
    """
    return np.sum(dy * x * rstd[:, None], axis=0, dtype=ref.F32).astype(ref.F32)


def embedding_backward(ids: np.ndarray, dy: np.ndarray, vocab_size: int) -> np.ndarray:
    """Gradient of the embedding table: dE[v] = sum of dy[n] over the positions n with ids[n] == v.

    ids int (N,) in [0, V), dy (N, D) -> dE (V, D); rows of ids never seen are zero. Positions
    are summed in increasing n (what the GPU kernel does, so both agree bit for bit in float32).
    Raises IndexError for an id outside [0, vocab_size).
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise IndexError(f"embedding_backward: ids must be in [0, {vocab_size}), got "
                         f"[{ids.min()}, {ids.max()}]")
    if dy.shape[0] != ids.size:
        raise ValueError(f"embedding_backward: {ids.size} ids but dy has {dy.shape[0]} rows")
    out = np.zeros((vocab_size, dy.shape[1]), dtype=ref.F32)
    np.add.at(out, ids, dy.astype(ref.F32, copy=False))   # unbuffered, in index order
    return out


def token_csr(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of token positions per vocab id (built on the host; ids are known there).

    ids int (N,) -> (row_ptr int32 (V+1,), pos int32 (N,)): the positions holding id v are
    pos[row_ptr[v]:row_ptr[v+1]], in increasing order (a stable sort). The GPU embedding
    backward walks them in that order: deterministic, no atomics.
    """
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise IndexError(f"token_csr: ids must be in [0, {vocab_size})")
    pos = np.argsort(ids, kind="stable").astype(np.int32)
    counts = np.bincount(ids, minlength=vocab_size)
    row_ptr = np.zeros(vocab_size + 1, np.int32)
    np.cumsum(counts, out=row_ptr[1:])
    return row_ptr, pos
