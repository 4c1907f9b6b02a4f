"""CpuBackend's lm_head + cross-entropy over vocab chunks: reference.lm_head_cross_entropy
(beside this file) with the chunk's logits exponentiated in place and no copy of a float32
table chunk, rows split over the worker threads (kernels/ops/threads.py; each row's
loss and gradient depend on that row alone). Same online log-sum-exp and the same order of operations; differs from the
reference by float32 rounding only where BLAS sums differently (tests/kernels/test_cpu_ops.py).
Floats are precision.F32."""
from __future__ import annotations

import os

import numpy as np

from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK
from bitswarm.kernels.ops.threads import run_split

# rows per block (BITSWARM_CPU_LM_ROWS; default: a thread's rows at once): with 64, a block's
# (rows, chunk) logits (64 x 8192 float32: 2 MiB) stay in a core's L2 through the max / exp /
# sum passes and the backward product, instead of a thread's (512 x 8192: 16 MiB) going through
# memory four times, while the table chunk is re-read per block. Same bits on this machine
# (OpenBLAS computes a row the same whatever M); not yet measured as faster, so off by default.
ROW_BLOCK = int(os.environ.get("BITSWARM_CPU_LM_ROWS", 1 << 30))


def lm_head_cross_entropy(x: np.ndarray, w: np.ndarray, targets: np.ndarray, grad_scale: float,
                          chunk: int = LM_CHUNK, grad: bool = True
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """As reference.lm_head_cross_entropy: x (N, D), w (V, D), targets int32 (N,) (< 0:
    padding) -> loss float32 (N,) nats, dx (N, D) (None with grad=False). Raises ValueError
    for chunk < 1 or mismatched shapes, IndexError for targets >= V."""
    F = prec.F32
    N, D = x.shape
    V = w.shape[0]
    if chunk < 1 or w.shape != (V, D) or targets.shape != (N,):
        raise ValueError(f"lm_head_cross_entropy: x {x.shape} w {w.shape} targets "
                         f"{targets.shape} chunk {chunk}")
    if N and targets.max(initial=-1) >= V:
        raise IndexError(f"target {int(targets.max())} out of range for vocab size {V}")
    loss = np.empty(N, F)
    dx = np.empty((N, D), F) if grad else None

    def rows(lo, hi):
        for b in range(lo, hi, ROW_BLOCK):      # a block's logits chunk stays in cache
            e = min(hi, b + ROW_BLOCK)
            _rows(x[b:e], w, targets[b:e], grad_scale, chunk, grad, loss[b:e],
                  None if dx is None else dx[b:e])
    run_split(rows, N, heavy=True)
    return loss, dx


def _rows(x, w, targets, grad_scale, chunk, grad, loss_out, dx_out) -> None:
    """lm_head_cross_entropy of some rows, into loss_out (and dx_out)."""
    F = prec.F32
    N, D = x.shape
    V = w.shape[0]
    valid = targets >= 0
    rows = np.arange(N)
    m = np.full(N, -np.inf, F)
    s = np.zeros(N, F)
    tl = np.zeros(N, F)
    acc = None
    for v0 in range(0, V, chunk):
        wc = w[v0:v0 + chunk]
        if wc.dtype != F:
            wc = wc.astype(F)
        lg = x @ wc.T                                                        # (N, Vc)
        inside = valid & (targets >= v0) & (targets < v0 + wc.shape[0])
        tl[inside] = lg[rows[inside], targets[inside] - v0]
        m_new = np.maximum(m, lg.max(-1, initial=-np.inf))
        r = np.exp(m - m_new)
        lg -= m_new[:, None]
        np.exp(lg, out=lg)                                                   # p
        s *= r
        s += lg.sum(-1, dtype=F)
        if grad:
            if acc is None:
                acc = np.matmul(lg, wc, out=dx_out)
            else:
                acc *= r[:, None]
                acc += lg @ wc
        m = m_new
    loss_out[...] = np.where(valid, m + np.log(s) - tl, F(0.0))
    if not grad:
        return
    if acc is None:
        dx_out[...] = 0
        acc = dx_out
    t = np.where(valid, targets, 0)
    scale = (valid * F(grad_scale)).astype(F)[:, None]
    acc /= s[:, None]
    acc -= w[t].astype(F, copy=False)
    acc *= scale
