"""NumPy reference of causal GQA attention: training forward/backward (attention.wgsl) and the
decode ops over a KV cache (attention_decode.wgsl, kv_append.wgsl).

Token-major layouts: a (N, H*hd) tensor holds N = B*T tokens, token n = b*T + t, head h in
columns [h*hd, (h+1)*hd). Query head h reads KV head h // (Hq/Hkv) (transformers'
modeling_bitnet.py). Decoding keeps the K/V rows of every past position after RoPE in a cache
(Lmax, Hkv*hd), row p = position p; the new token's query attends over the first L rows. Row by
row this is exactly the causal `attention` (kernels/generate.py checks it against a full
forward). Floats are precision.F32; functions are pure except `kv_append_` (in place).
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def _heads(x: np.ndarray, B: int, T: int, H: int, hd: int) -> np.ndarray:
    return x.reshape(B, T, H, hd).transpose(0, 2, 1, 3)          # (B, H, T, hd)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
              hd: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal softmax(q k^T / sqrt(hd)) v with GQA (query head h reads KV head h // (Hq/Hkv)).

    q (N, Hq*hd), k/v (N, Hkv*hd) -> o (N, Hq*hd), lse (B, Hq, T) (log-sum-exp of the scaled
    scores per query row, kept for the backward pass).
    """
    g = Hq // Hkv
    Q = _heads(q, B, T, Hq, hd)
    K = np.repeat(_heads(k, B, T, Hkv, hd), g, axis=1)
    V = np.repeat(_heads(v, B, T, Hkv, hd), g, axis=1)
    S = (Q @ K.transpose(0, 1, 3, 2)) * prec.F32(1.0 / np.sqrt(hd))  # (B, Hq, T, T)
    S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf).astype(prec.F32)
    m = S.max(-1, keepdims=True)
    P = np.exp(S - m)
    l = P.sum(-1, keepdims=True)
    O = (P / l) @ V
    lse = (m + np.log(l))[..., 0].astype(prec.F32)
    return O.transpose(0, 2, 1, 3).reshape(B * T, Hq * hd).astype(prec.F32), lse


def attention_backward(do: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       o: np.ndarray, lse: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
                       hd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of `attention`: (dq (N, Hq*hd), dk (N, Hkv*hd), dv (N, Hkv*hd)).

    P = exp(S - lse); dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO*O)); dQ = dS K / sqrt(hd);
    dK = dS^T Q / sqrt(hd); GQA sums dK, dV over the query heads sharing a KV head.
    """
    g = Hq // Hkv
    sc = prec.F32(1.0 / np.sqrt(hd))
    Q, dO, O = (_heads(t, B, T, Hq, hd) for t in (q, do, o))
    K = np.repeat(_heads(k, B, T, Hkv, hd), g, axis=1)
    V = np.repeat(_heads(v, B, T, Hkv, hd), g, axis=1)
    S = (Q @ K.transpose(0, 1, 3, 2)) * sc
    P = np.where(np.tril(np.ones((T, T), dtype=bool)), np.exp(S - lse[..., None]), 0.0).astype(prec.F32)
    dV = P.transpose(0, 1, 3, 2) @ dO
    dP = dO @ V.transpose(0, 1, 3, 2)
    Dr = np.sum(dO * O, axis=-1, keepdims=True)
    dS = P * (dP - Dr)
    dQ = (dS @ K) * sc
    dK = (dS.transpose(0, 1, 3, 2) @ Q) * sc
    dK = dK.reshape(B, Hkv, g, T, hd).sum(2)
    dV = dV.reshape(B, Hkv, g, T, hd).sum(2)
    flat = lambda t, H: t.transpose(0, 2, 1, 3).reshape(B * T, H * hd).astype(prec.F32)  # noqa: E731
    return flat(dQ, Hq), flat(dK, Hkv), flat(dV, Hkv)


def kv_append_(cache: np.ndarray, x: np.ndarray, pos: int) -> None:
    """In place: cache[pos : pos+M] = x. cache (Lmax, C), x (M, C). Raises ValueError when the
    rows do not fit or C differs."""
    M = x.shape[0]
    if x.shape[1:] != cache.shape[1:] or pos < 0 or pos + M > cache.shape[0]:
        raise ValueError(f"kv_append_: {x.shape} at row {pos} does not fit cache {cache.shape}")
    cache[pos:pos + M] = x


def attention_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, L: int, Hq: int,
                     Hkv: int, hd: int) -> np.ndarray:
    """One query attending over the first L cached positions (all visible: the query is the
    newest token), GQA as `attention`: softmax(q K^T / sqrt(hd)) V per query head.

    q (1, Hq*hd), k_cache/v_cache (>= L, Hkv*hd) -> o (1, Hq*hd). Raises ValueError for L < 1
    or L beyond the cache.
    """
    if L < 1 or L > k_cache.shape[0]:
        raise ValueError(f"attention_decode: L={L} outside 1..{k_cache.shape[0]}")
    g = Hq // Hkv
    Q = q.reshape(Hq, 1, hd)
    K = np.repeat(k_cache[:L].reshape(L, Hkv, hd).transpose(1, 0, 2), g, axis=0)  # (Hq, L, hd)
    V = np.repeat(v_cache[:L].reshape(L, Hkv, hd).transpose(1, 0, 2), g, axis=0)
    S = (Q @ K.transpose(0, 2, 1)) * prec.F32(1.0 / np.sqrt(hd))                         # (Hq, 1, L)
    P = np.exp(S - S.max(-1, keepdims=True))
    O = (P / P.sum(-1, keepdims=True)) @ V                                          # (Hq, 1, hd)
    return O.reshape(1, Hq * hd).astype(prec.F32)
