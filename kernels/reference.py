"""NumPy reference for every kernel: the semantics each WGSL shader must match, and the CPU backend.

Every function is pure (inputs are never modified, except `adamw_` which updates in place like
the optimizer it is). Arrays are float32 unless stated; token-major 2-D layouts throughout:
a (N, H*hd) tensor holds N = B*T tokens, token n = b*T + t, head h in columns [h*hd, (h+1)*hd).

Sources: BitNet b1.58 (arXiv:2402.17764) and transformers' integrations/bitnet.py (absmean
weights, per-token absmax int8 activations, straight-through estimator); transformers'
modeling_bitnet.py (RMSNorm, rotate_half RoPE, GQA attention, squared-ReLU gated MLP);
Loshchilov & Hutter 2019 (AdamW, as torch.optim.AdamW).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
ACT_QMAX = 127.0   # int8 absmax activation quantization (W1.58A8)
QUANT_EPS = 1e-5   # clamp of absmax / absmean, as transformers


# ---------------------------------------------------------------- embedding / norms
def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Gather rows: ids int32 (N,), table (V, D) -> (N, D). Raises IndexError on ids >= V."""
    return table[ids].astype(F32, copy=True)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """y = w * x / sqrt(mean(x^2) + eps) per row. x (N, C), w (C,) -> y (N, C), rstd (N,)."""
    rstd = (1.0 / np.sqrt(np.mean(x * x, axis=-1, dtype=F32) + F32(eps))).astype(F32)
    return (x * rstd[:, None] * w).astype(F32), rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Input gradient of rmsnorm (w frozen): dx = r*g - x*r^3*mean(g*x), g = w*dy. -> (N, C)."""
    g = dy * w
    r = rstd[:, None]
    return (r * g - x * (r ** 3) * np.mean(g * x, axis=-1, keepdims=True, dtype=F32)).astype(F32)


# ---------------------------------------------------------------- W1.58A8 BitLinear
def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8: s = 127 / max(max|x|, 1e-5); xq = clamp(round(x*s), -128, 127).

    x (N, C) float32 -> xq int8 (N, C), x_scale float32 (N,). round is half-to-even.
    """
    absmax = np.maximum(np.max(np.abs(x), axis=-1), F32(QUANT_EPS)).astype(F32)
    s = (F32(ACT_QMAX) / absmax).astype(F32)
    xq = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    return xq, s


def bitlinear(xq: np.ndarray, x_scale: np.ndarray, codes: np.ndarray, weight_scale) -> np.ndarray:
    """W1.58A8 projection: y = (xq @ codes^T) / (x_scale * weight_scale).

    xq int8 (N, in), x_scale float32 (N,), codes int8 (out, in) in {-1,0,1}, weight_scale
    float32 scalar -> y float32 (N, out). The int32 dot product is exact (float32 matmul of
    small integers is exact while |sum| < 2^24, i.e. in < 132k).
    """
    acc = xq.astype(F32) @ codes.astype(F32).T          # exact integers
    return (acc / (x_scale[:, None] * F32(weight_scale))).astype(F32)


def bitlinear_group(xq: np.ndarray, x_scale: np.ndarray, codes: list, weight_scales: list) -> list:
    """Several W1.58A8 projections of the same input (q/k/v, gate/up): [bitlinear(xq, x_scale,
    c, s) for c, s in zip(codes, weight_scales)]. GpuBackend runs them as one GEMM."""
    return [bitlinear(xq, x_scale, c, s) for c, s in zip(codes, weight_scales)]


def bitlinear_int(xq: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The integer core of bitlinear: int32 (N, out) = xq int8 (N, in) @ codes int8 (out, in)^T."""
    return xq.astype(np.int32) @ codes.astype(np.int32).T


def bitlinear_backward(dy: np.ndarray, codes: np.ndarray, weight_scale) -> np.ndarray:
    """Straight-through input gradient: dx = dy @ (codes / weight_scale). dy (N, out) -> (N, in).

    The STE passes the gradient through both quantizers (activation and weight) unchanged.
    """
    return ((dy @ codes.astype(F32)) / F32(weight_scale)).astype(F32)


# ---------------------------------------------------------------- dense matmul (LoRA, lm_head)
def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           alpha: float = 1.0, acc: np.ndarray | None = None) -> np.ndarray:
    """alpha * op(a) @ op(b) (+ acc). op(a) (M, K), op(b) (K, N) -> (M, N) float32."""
    A = a.T if trans_a else a
    Bm = b.T if trans_b else b
    out = (A @ Bm).astype(F32)
    if alpha != 1.0:
        out *= F32(alpha)
    if acc is not None:
        out += acc
    return out


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a + b, same shapes."""
    return (a + b).astype(F32)


# ---------------------------------------------------------------- RoPE (rotate_half)
def rope_tables(T: int, hd: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (T, hd/2) for positions 0..T-1, inv_freq = theta^(-2i/hd) (transformers' default)."""
    inv_freq = (1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(F32) / hd))).astype(F32)
    ang = np.arange(T, dtype=F32)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, T: int, H: int, hd: int,
         inverse: bool = False) -> np.ndarray:
    """x*cos + rotate_half(x)*sin per head. x (N, H*hd), N = B*T, cos/sin (>=T, hd/2).

    inverse=True rotates by -angle: the backward of rope (rotations are orthogonal).
    """
    N = x.shape[0]
    h2 = hd // 2
    xv = x.reshape(N // T, T, H, hd)
    c = cos[:T][None, :, None, :]
    s = (-sin if inverse else sin)[:T][None, :, None, :]
    x1, x2 = xv[..., :h2], xv[..., h2:]
    y = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return y.reshape(N, H * hd).astype(F32)


# ---------------------------------------------------------------- causal GQA attention
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
    S = (Q @ K.transpose(0, 1, 3, 2)) * F32(1.0 / np.sqrt(hd))  # (B, Hq, T, T)
    S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf).astype(F32)
    m = S.max(-1, keepdims=True)
    P = np.exp(S - m)
    l = P.sum(-1, keepdims=True)
    O = (P / l) @ V
    lse = (m + np.log(l))[..., 0].astype(F32)
    return O.transpose(0, 2, 1, 3).reshape(B * T, Hq * hd).astype(F32), lse


def attention_backward(do: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       o: np.ndarray, lse: np.ndarray, B: int, T: int, Hq: int, Hkv: int,
                       hd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of `attention`: (dq (N, Hq*hd), dk (N, Hkv*hd), dv (N, Hkv*hd)).

    P = exp(S - lse); dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO*O)); dQ = dS K / sqrt(hd);
    dK = dS^T Q / sqrt(hd); GQA sums dK, dV over the query heads sharing a KV head.
    """
    g = Hq // Hkv
    sc = F32(1.0 / np.sqrt(hd))
    Q, dO, O = (_heads(t, B, T, Hq, hd) for t in (q, do, o))
    K = np.repeat(_heads(k, B, T, Hkv, hd), g, axis=1)
    V = np.repeat(_heads(v, B, T, Hkv, hd), g, axis=1)
    S = (Q @ K.transpose(0, 1, 3, 2)) * sc
    P = np.where(np.tril(np.ones((T, T), dtype=bool)), np.exp(S - lse[..., None]), 0.0).astype(F32)
    dV = P.transpose(0, 1, 3, 2) @ dO
    dP = dO @ V.transpose(0, 1, 3, 2)
    Dr = np.sum(dO * O, axis=-1, keepdims=True)
    dS = P * (dP - Dr)
    dQ = (dS @ K) * sc
    dK = (dS.transpose(0, 1, 3, 2) @ Q) * sc
    dK = dK.reshape(B, Hkv, g, T, hd).sum(2)
    dV = dV.reshape(B, Hkv, g, T, hd).sum(2)
    flat = lambda t, H: t.transpose(0, 2, 1, 3).reshape(B * T, H * hd).astype(F32)  # noqa: E731
    return flat(dQ, Hq), flat(dK, Hkv), flat(dV, Hkv)


# ---------------------------------------------------------------- gated squared ReLU
def relu2_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """h = relu(g)^2 * u (BitNet's MLP activation, transformers ACT2FN['relu2']). (N, I)."""
    r = np.maximum(g, 0)
    return (r * r * u).astype(F32)


def relu2_gate_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dg, du) = (2*relu(g)*u*dh, relu(g)^2*dh)."""
    r = np.maximum(g, 0)
    return (2 * r * u * dh).astype(F32), (r * r * dh).astype(F32)


# ---------------------------------------------------------------- loss
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
    loss = np.where(valid, lse - logits[np.arange(len(t)), t], 0.0).astype(F32)
    d = e / s
    d[np.arange(len(t)), t] -= 1.0
    d *= (valid[:, None] * F32(grad_scale))
    return loss, d.astype(F32)


LM_CHUNK = 8192   # vocab rows per lm_head chunk: logits (N, 8192) f32 = 16 MiB at N = 512


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
    m = np.full(N, -np.inf, F32)
    s = np.zeros(N, F32)
    tl = np.zeros(N, F32)
    acc = np.zeros((N, D), F32) if grad else None
    for v0 in range(0, V, chunk):
        wc = w[v0:v0 + chunk].astype(F32)
        lg = (x @ wc.T).astype(F32)                                      # (N, Vc)
        m_new = np.maximum(m, lg.max(-1, initial=-np.inf))
        r = np.exp(m - m_new).astype(F32)
        p = np.exp(lg - m_new[:, None]).astype(F32)
        s = (s * r + p.sum(-1, dtype=F32)).astype(F32)
        inside = valid & (targets >= v0) & (targets < v0 + wc.shape[0])
        tl[inside] = lg[rows[inside], targets[inside] - v0]
        if grad:
            acc = (acc * r[:, None] + p @ wc).astype(F32)
        m = m_new
    loss = np.where(valid, m + np.log(s) - tl, 0.0).astype(F32)
    if not grad:
        return loss, None
    t = np.where(valid, targets, 0)
    scale = (valid * F32(grad_scale)).astype(F32)[:, None]
    dx = ((acc / s[:, None] - w[t].astype(F32)) * scale).astype(F32)
    return loss, dx


# ---------------------------------------------------------------- optimizer
def adamw_(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, step: int, lr: float,
           beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 0.0) -> None:
    """One AdamW step in place on p, m, v (torch.optim.AdamW semantics; step counts from 1)."""
    p *= F32(1.0 - lr * weight_decay)
    m *= F32(beta1)
    m += F32(1.0 - beta1) * g
    v *= F32(beta2)
    v += F32(1.0 - beta2) * g * g
    bc1 = F32(1.0 - beta1 ** step)
    bc2 = F32(1.0 - beta2 ** step)
    p -= F32(lr) * (m / bc1) / (np.sqrt(v / bc2) + F32(eps))


# ---------------------------------------------------------------- decode (KV cache)
# Incremental decoding for one sequence (B = 1): the K/V rows of every past position are kept
# after RoPE in a cache (Lmax, Hkv*hd), row p = position p; a new token is rotated at its own
# position, appended, and its query attends over the first L rows. Row by row this is exactly
# the causal `attention` / `rope` above (kernels/generate.py checks it against a full forward).
def rope_at(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos: int, H: int,
            hd: int) -> np.ndarray:
    """`rope` of M consecutive tokens of one sequence at positions pos .. pos+M-1.

    x (M, H*hd), cos/sin (>= pos+M, hd/2) from rope_tables -> (M, H*hd). Raises ValueError
    when the tables are too short or pos < 0.
    """
    M = x.shape[0]
    if pos < 0 or cos.shape[0] < pos + M:
        raise ValueError(f"rope_at: positions {pos}..{pos + M - 1} outside tables of "
                         f"{cos.shape[0]} rows")
    return rope(x, cos[pos:pos + M], sin[pos:pos + M], M, H, hd)


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
    S = (Q @ K.transpose(0, 2, 1)) * F32(1.0 / np.sqrt(hd))                         # (Hq, 1, L)
    P = np.exp(S - S.max(-1, keepdims=True))
    O = (P / P.sum(-1, keepdims=True)) @ V                                          # (Hq, 1, hd)
    return O.reshape(1, Hq * hd).astype(F32)
