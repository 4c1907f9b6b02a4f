"""CpuBackend's causal GQA attention (training forward and backward): reference.py's math
(beside this file) as batched matmuls with no repeated K/V.

The g = Hq/Hkv query heads that share a KV head are stacked along the row axis, so each KV
head is one (g*T, hd) x (hd, T) matmul per sequence and GQA's sum of dK, dV over the heads
sharing a KV head happens inside the backward matmuls (no np.repeat, no (B, Hq, T, T) mask
select: an additive -inf mask, exp and scaling in place). Same formulas as the reference;
float32 rounding differs only by summation order (tests/kernels/test_cpu_ops.py). With numba
(kernels/ops/jit.py) the softmax's mask / max / subtract and sum / divide passes, and the
backward's (dS - D) * P, are fused loops with the passes' bits (exp stays NumPy's).
Layouts as the reference: q (N, Hq*hd), k/v (N, Hkv*hd), N = B*T, lse (B, Hq, T).
Floats are precision.F32.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.threads import run_split

pairwise_sum = jit.pairwise_sum


@jit.kernel
def _mask_max_sub(S, T, m):
    """Rows of scores S (R, T), query position r % T: the causal mask's -inf above the diagonal,
    m = the row's max, S -= m (the NumPy passes: S += mask; m = S.max(-1); S -= m)."""
    R = S.shape[0]
    ninf = S.dtype.type(-np.inf)
    for r in range(R):
        t = r % T
        mx = S[r, 0]
        for j in range(1, t + 1):
            if S[r, j] > mx:
                mx = S[r, j]
        m[r] = mx
        for j in range(t + 1):
            S[r, j] = S[r, j] - mx
        for j in range(t + 1, T):
            S[r, j] = ninf


@jit.kernel
def _sum_div(S, l):
    """l = sum of each row of S (R, T) in NumPy's pairwise order, S /= l."""
    R, T = S.shape
    st = np.empty((3, 64), np.int64)
    vals = np.empty(64, S.dtype)
    for r in range(R):
        lr = S.dtype.type(0.0) + pairwise_sum(S[r], 0, T, st, vals)
        l[r] = lr
        for j in range(T):
            S[r, j] = S[r, j] / lr


@jit.kernel
def _sub_mul(dS, Dr, P):
    """dS = (dS - Dr_row) * P (the NumPy passes dS -= Dr; dS *= P)."""
    R, T = dS.shape
    for r in range(R):
        d = Dr[r]
        for j in range(T):
            dS[r, j] = (dS[r, j] - d) * P[r, j]


@lru_cache(maxsize=8)
def _mask(T: int, dtype) -> np.ndarray:
    """(T, T) additive causal mask: 0 on and below the diagonal, -inf above."""
    m = np.zeros((T, T), dtype)
    m[np.triu_indices(T, 1)] = -np.inf
    m.setflags(write=False)
    return m


def _q_rows(x: np.ndarray, B: int, T: int, Hkv: int, g: int, hd: int) -> np.ndarray:
    """(N, Hq*hd) -> (B, Hkv, g*T, hd): the query heads of each KV head stacked (a copy)."""
    return np.ascontiguousarray(
        x.reshape(B, T, Hkv, g, hd).transpose(0, 2, 3, 1, 4)).reshape(B, Hkv, g * T, hd)


def _kv(x: np.ndarray, B: int, T: int, Hkv: int, hd: int) -> np.ndarray:
    """(N, Hkv*hd) -> (B, Hkv, T, hd), a view."""
    return x.reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)


def _scores(Q: np.ndarray, K: np.ndarray, B: int, T: int, Hkv: int, g: int, hd: int) -> np.ndarray:
    """Scaled, causally masked scores (B, Hkv, g*T, T)."""
    F = prec.F32
    S = np.matmul(Q, K.transpose(0, 1, 3, 2))
    S *= F(1.0 / np.sqrt(hd))
    S.reshape(B, Hkv, g, T, T)[...] += _mask(T, F)
    return S


class Lse(np.ndarray):
    """lse (B, Hq, T) as `attention` returns it, carrying the forward's normalized
    probabilities P (B, Hkv, g*T, T) in `.probs` (None when not kept), which
    attention_backward then reuses instead of recomputing q k^T and exp. np.asarray (and so
    CpuBackend.numpy) gives the plain lse."""

    probs: np.ndarray | None = None


KEEP_PROBS_BYTES = 64 * 2**20   # keep P of one layer up to this size (2B-4T at 8 x 128: 10 MiB)


def _attention_rows(q, k, v, B, T, Hkv, g, hd, o, lse, P):
    """Forward of B whole sequences into o (N, Hq*hd), lse (B, Hkv, g*T, 1), P or None."""
    F = prec.F32
    Q = _q_rows(q, B, T, Hkv, g, hd)
    Q *= F(1.0 / np.sqrt(hd))           # scale the (g*T, hd) queries, not the (g*T, T) scores
    S = np.matmul(Q, _kv(k, B, T, Hkv, hd).transpose(0, 1, 3, 2), out=P)
    k1, k2 = _mask_max_sub.for_size(S.size), _sum_div.for_size(S.size)
    if k1 is not None and S.dtype == np.float32 and S.flags.c_contiguous:
        # the same float32 operations as the passes below, fused (exp stays NumPy's)
        S2 = S.reshape(-1, T)
        m = np.empty((B, Hkv, g * T, 1), F)
        k1(S2, T, m.reshape(-1))
        np.exp(S, out=S)
        l = np.empty((B, Hkv, g * T, 1), F)
        k2(S2, l.reshape(-1))
    else:
        S.reshape(B, Hkv, g, T, T)[...] += _mask(T, F)
        m = S.max(-1, keepdims=True)
        S -= m
        np.exp(S, out=S)
        l = S.sum(-1, keepdims=True)
        S /= l
    O = np.matmul(S, _kv(v, B, T, Hkv, hd))                             # (B, Hkv, g*T, hd)
    np.log(l, out=l)
    l += m
    lse[...] = l
    o[...] = O.reshape(B, Hkv, g, T, hd).transpose(0, 3, 1, 2, 4).reshape(B * T, Hkv * g * hd)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
              hd: int) -> tuple[np.ndarray, np.ndarray]:
    """As reference.attention: -> o (N, Hq*hd), lse (B, Hq, T) (an `Lse`). Sequences are
    split over the worker threads (kernels/ops/threads.py)."""
    F = prec.F32
    g = Hq // Hkv
    o = np.empty((B * T, Hq * hd), F)
    lse = np.empty((B, Hkv, g * T, 1), F)
    keep = B * Hq * T * T * np.dtype(F).itemsize <= KEEP_PROBS_BYTES
    P = np.empty((B, Hkv, g * T, T), F) if keep else None

    def rows(b0, b1):
        r = slice(b0 * T, b1 * T)
        _attention_rows(q[r], k[r], v[r], b1 - b0, T, Hkv, g, hd, o[r], lse[b0:b1],
                        None if P is None else P[b0:b1])
    run_split(rows, B, min_rows=1)
    out = lse.reshape(B, Hq, T).view(Lse)
    out.probs = P
    return o, out


def _backward_rows(do, q, k, v, o, lse, P, B, T, Hkv, g, hd, dq, dk, dv):
    F = prec.F32
    sc = F(1.0 / np.sqrt(hd))
    Q = _q_rows(q, B, T, Hkv, g, hd)
    dO = _q_rows(do, B, T, Hkv, g, hd)
    K, V = _kv(k, B, T, Hkv, hd), _kv(v, B, T, Hkv, hd)
    if P is None:
        P = _scores(Q, K, B, T, Hkv, g, hd)
        P -= lse.reshape(B, Hkv, g * T, 1)
        np.exp(P, out=P)                                                # masked entries -> 0
    dV = np.matmul(P.transpose(0, 1, 3, 2), dO)                         # (B, Hkv, T, hd)
    dS = np.matmul(dO, V.transpose(0, 1, 3, 2))                         # dP (B, Hkv, g*T, T)
    Dr = np.einsum("bhnd,bhnd->bhn", dO, _q_rows(o, B, T, Hkv, g, hd))[..., None]
    k = _sub_mul.for_size(dS.size)
    if k is not None and dS.dtype == P.dtype == Dr.dtype == np.float32 and P.flags.c_contiguous:
        k(dS.reshape(-1, T), Dr.reshape(-1), P.reshape(-1, T))
    else:
        dS -= Dr
        dS *= P
    dQ = np.matmul(dS, K)
    dQ *= sc
    dK = np.matmul(dS.transpose(0, 1, 3, 2), Q)
    dK *= sc
    dq[...] = dQ.reshape(B, Hkv, g, T, hd).transpose(0, 3, 1, 2, 4).reshape(B * T, -1)
    dk[...] = dK.transpose(0, 2, 1, 3).reshape(B * T, -1)
    dv[...] = dV.transpose(0, 2, 1, 3).reshape(B * T, -1)


def attention_backward(do: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       o: np.ndarray, lse: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
                       hd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As reference.attention_backward: -> dq (N, Hq*hd), dk, dv (N, Hkv*hd). Reuses the
    forward's P when `lse` carries it (an `Lse` from `attention`), else recomputes it."""
    F = prec.F32
    g = Hq // Hkv
    P = getattr(lse, "probs", None)
    lse = np.asarray(lse)
    dq = np.empty((B * T, Hq * hd), F)
    dk = np.empty((B * T, Hkv * hd), F)
    dv = np.empty((B * T, Hkv * hd), F)

    def rows(b0, b1):
        r = slice(b0 * T, b1 * T)
        _backward_rows(do[r], q[r], k[r], v[r], o[r], lse[b0:b1],
                       None if P is None else P[b0:b1], b1 - b0, T, Hkv, g, hd,
                       dq[r], dk[r], dv[r])
    run_split(rows, B, min_rows=1)
    return dq, dk, dv
