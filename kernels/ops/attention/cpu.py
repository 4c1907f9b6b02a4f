"""CpuBackend's causal GQA attention (training forward and backward): reference.py's math
(beside this file) as batched matmuls with no repeated K/V.

The g = Hq/Hkv query heads that share a KV head are stacked along the row axis, so each KV
head is one (g*T, hd) x (hd, T) matmul per sequence and GQA's sum of dK, dV over the heads
sharing a KV head happens inside the backward matmuls (no np.repeat, no (B, Hq, T, T) mask
select: an additive -inf mask, exp and scaling in place). Same formulas as the reference;
float32 rounding differs only by summation order (tests/kernels/test_cpu_ops.py).
Layouts as the reference: q (N, Hq*hd), k/v (N, Hkv*hd), N = B*T, lse (B, Hq, T).
Floats are precision.F32.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from bitswarm.kernels.ops import precision as prec


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


def _q_flat(x: np.ndarray, B: int, T: int, Hkv: int, g: int, hd: int) -> np.ndarray:
    """Inverse of _q_rows: (B, Hkv, g*T, hd) -> (N, Hq*hd)."""
    return np.ascontiguousarray(
        x.reshape(B, Hkv, g, T, hd).transpose(0, 3, 1, 2, 4)).reshape(B * T, Hkv * g * hd)


def _kv_flat(x: np.ndarray, B: int, T: int, Hkv: int, hd: int) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B * T, Hkv * hd)


def _scores(Q: np.ndarray, K: np.ndarray, B: int, T: int, Hkv: int, g: int, hd: int) -> np.ndarray:
    """Scaled, causally masked scores (B, Hkv, g*T, T)."""
    F = prec.F32
    S = np.matmul(Q, K.transpose(0, 1, 3, 2))
    S *= F(1.0 / np.sqrt(hd))
    S.reshape(B, Hkv, g, T, T)[...] += _mask(T, F)
    return S


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
              hd: int) -> tuple[np.ndarray, np.ndarray]:
    """As reference.attention: -> o (N, Hq*hd), lse (B, Hq, T)."""
    g = Hq // Hkv
    S = _scores(_q_rows(q, B, T, Hkv, g, hd), _kv(k, B, T, Hkv, hd), B, T, Hkv, g, hd)
    m = S.max(-1, keepdims=True)
    S -= m
    np.exp(S, out=S)
    l = S.sum(-1, keepdims=True)
    S /= l
    O = np.matmul(S, _kv(v, B, T, Hkv, hd))                             # (B, Hkv, g*T, hd)
    np.log(l, out=l)
    l += m
    return _q_flat(O, B, T, Hkv, g, hd), l.reshape(B, Hq, T)


def attention_backward(do: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       o: np.ndarray, lse: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
                       hd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As reference.attention_backward: -> dq (N, Hq*hd), dk, dv (N, Hkv*hd)."""
    F = prec.F32
    g = Hq // Hkv
    sc = F(1.0 / np.sqrt(hd))
    Q = _q_rows(q, B, T, Hkv, g, hd)
    dO = _q_rows(do, B, T, Hkv, g, hd)
    K, V = _kv(k, B, T, Hkv, hd), _kv(v, B, T, Hkv, hd)
    P = _scores(Q, K, B, T, Hkv, g, hd)
    P -= lse.reshape(B, Hkv, g * T, 1)
    np.exp(P, out=P)                                                    # masked entries -> 0
    dV = np.matmul(P.transpose(0, 1, 3, 2), dO)                         # (B, Hkv, T, hd)
    dS = np.matmul(dO, V.transpose(0, 1, 3, 2))                         # dP (B, Hkv, g*T, T)
    Dr = np.einsum("bhnd,bhnd->bhn", dO, _q_rows(o, B, T, Hkv, g, hd))[..., None]
    dS -= Dr
    dS *= P
    del P
    dQ = np.matmul(dS, K)
    dQ *= sc
    dK = np.matmul(dS.transpose(0, 1, 3, 2), Q)
    dK *= sc
    return (_q_flat(dQ, B, T, Hkv, g, hd), _kv_flat(dK, B, T, Hkv, hd),
            _kv_flat(dV, B, T, Hkv, hd))
