"""NumPy reference of the loss family: softmax cross-entropy on given logits (cross_entropy.wgsl)
and the lm_head fused with it over vocab chunks (matmul.wgsl + lm_head.wgsl `stats` / `finish`).

Floats are precision.F32; functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec

LM_CHUNK = 8192   # vocab rows per lm_head chunk: logits (N, 8192) f32 = 16 MiB at N = 512


def cross_entropy(logits: np.ndarray, targets: np.ndarray, grad_scale: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy, fused forward and backward (as llm.c's crossentropy_softmax).

    logits (N, V), targets int32 (N,); a target < 0 is padding (loss 0, gradient 0).
    -> loss float32 (N,) in nats, dlogits (N, V) = (softmax - onehot) * grad_scale.
    """
    m = logits.max(-1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(-1, keepdims=True)
    lse = (m + np.log(s))[:, 0]
    valid = targets >= 0
    t = np.where(valid, targets, 0)
    loss = np.where(valid, lse - logits[np.arange(len(t)), t], 0.0).astype(prec.F32)
    d = e / s
    d[np.arange(len(t)), t] -= 1.0
    d *= (valid[:, None] * prec.F32(grad_scale))
    return loss, d.astype(prec.F32)


def lm_head_cross_entropy(x: np.ndarray, w: np.ndarray, targets: np.ndarray, grad_scale: float,
                          chunk: int = LM_CHUNK, grad: bool = True
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """lm_head and softmax cross-entropy fused over vocab chunks: the (N, V) logits are never whole.

    x (N, D) float32 (final-norm output), w (V, D) lm_head rows (float32 or float16 storage;
    math in float32), targets int32 (N,) (< 0 = padding: loss 0, no gradient), chunk >= 1 vocab
    rows per step. -> loss float32 (N,) in nats, and with grad=True
    dx (N, D) = d(grad_scale * sum_n loss_n)/dx = grad_scale * (softmax(x W^T) - onehot) @ W
    (None with grad=False). Equals `cross_entropy(matmul(x, w, trans_b=True), ...)` followed by
    `matmul(dlogits, w)` up to float32 rounding (tests/kernels/test_lm_head.py).

    One pass of online log-sum-exp (Milakov & Gimelshein 2018, "Online normalizer calculation
    for softmax"): per chunk c, l = x Wc^T; m' = max(m, rowmax l); r = exp(m - m');
    s = s*r + sum exp(l - m'); acc = acc*r + exp(l - m') Wc; the target's logit is picked in
    its chunk. Then loss = m + log s - l_t and dx = grad_scale * (acc / s - W[t]).
    Raises ValueError for chunk < 1 or mismatched shapes, IndexError for targets >= V.
    """
    N, D = x.shape
    V = w.shape[0]
    if chunk < 1 or w.shape != (V, D) or targets.shape != (N,):
        raise ValueError(f"lm_head_cross_entropy: x {x.shape} w {w.shape} targets "
                         f"{targets.shape} chunk {chunk}")
    if N and targets.max(initial=-1) >= V:
        raise IndexError(f"target {int(targets.max())} out of range for vocab size {V}")
    valid = targets >= 0
    rows = np.arange(N)
    m = np.full(N, -np.inf, prec.F32)
    s = np.zeros(N, prec.F32)
    tl = np.zeros(N, prec.F32)
    acc = np.zeros((N, D), prec.F32) if grad else None
    for v0 in range(0, V, chunk):
        wc = w[v0:v0 + chunk].astype(prec.F32)
        lg = (x @ wc.T).astype(prec.F32)                                      # (N, Vc)
        m_new = np.maximum(m, lg.max(-1, initial=-np.inf))
        r = np.exp(m - m_new).astype(prec.F32)
        p = np.exp(lg - m_new[:, None]).astype(prec.F32)
        s = (s * r + p.sum(-1, dtype=prec.F32)).astype(prec.F32)
        inside = valid & (targets >= v0) & (targets < v0 + wc.shape[0])
        tl[inside] = lg[rows[inside], targets[inside] - v0]
        if grad:
            acc = (acc * r[:, None] + p @ wc).astype(prec.F32)
        m = m_new
    loss = np.where(valid, m + np.log(s) - tl, 0.0).astype(prec.F32)
    if not grad:
        return loss, None
    t = np.where(valid, targets, 0)
    scale = (valid * prec.F32(grad_scale)).astype(prec.F32)[:, None]
    dx = ((acc / s[:, None] - w[t].astype(prec.F32)) * scale).astype(prec.F32)
    return loss, dx
