"""GPU launchers of causal GQA attention for GpuBackend: attention.wgsl (forward; backward_dq,
backward_dkv and, for GQA, backward_reduce) and the decode ops attention_decode.wgsl and
kv_append.wgsl; semantics: reference.py beside this file.

Limits: attention needs head_dim <= 256 (output rows live in registers, ceil(hd/64) vec4 per
invocation; any T; GQA backward takes two (N, Hq*hd) temporaries). attention_decode keeps the L
scores of a head in workgroup memory, so L <= 4096 (bitnet-b1.58-2B-4T's
max_position_embeddings) and head_dim <= 256.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor, grid_for
from bitswarm.kernels.ops.check import check

F32 = np.float32
ATTN_HDMAX = 256
DECODE_LMAX = 4096   # LMAX in attention_decode.wgsl
DECODE_HDMAX = 256   # HDMAX in attention_decode.wgsl


def _attncheck(q, k, v, B, T, Hq, Hkv, hd) -> None:
    check(Hkv > 0 and Hq % Hkv == 0, f"attention: Hq={Hq} not a multiple of Hkv={Hkv}")
    check(0 < hd <= ATTN_HDMAX, f"attention: head_dim={hd} outside the kernel's 1..{ATTN_HDMAX}")
    check(q.shape == (B * T, Hq * hd) and k.shape == (B * T, Hkv * hd) and v.shape == k.shape,
           f"attention: q {q.shape} k {k.shape} v {v.shape} for B={B} T={T} Hq={Hq} "
           f"Hkv={Hkv} hd={hd}")


def _attn_consts(hd: int, tensors: int, fch: int = 4, bch: int = 2) -> dict:
    """attention.wgsl's override constants: VK whole rows of `tensors` tensors are staged at a
    time in 512 vec4 (a power of two <= the 32-row block); forward / backward score chunks are
    FCH / BCH vec4 wide (the stage grows to 9 KiB for FCH 8, 10 KiB for BCH 4)."""
    d4 = -(-hd // 4)
    vk = 32
    while vk * d4 * tensors > 512:
        vk //= 2
    return {"HD": hd, "OV": -(-d4 // 16), "VK": vk, "FCH": fch, "BCH": bch}


def _params(B, T, Hq, Hkv, hd) -> dict:
    return dict(b=B, t=T, hq=Hq, hkv=Hkv, hd=hd, scale=F32(1.0 / np.sqrt(hd)))


def attention(be, q: Tensor, k: Tensor, v: Tensor, B: int, T: int, Hq: int, Hkv: int,
              hd: int) -> tuple[Tensor, Tensor]:
    """q (N, Hq*hd), k/v (N, Hkv*hd) f32 -> o (N, Hq*hd), lse (B, Hq, T)."""
    _attncheck(q, k, v, B, T, Hq, Hkv, hd)
    o, lse = be._new(q.shape), be._new((B, Hq, T))
    nqb = -(-T // 32)                      # 32-row query blocks
    be._launch("attention", [q, k, v, o, lse], grid_for(B * Hq * nqb), _params(B, T, Hq, Hkv, hd),
               constants=_attn_consts(hd, 1, fch=8))
    return o, lse


def attention_backward(be, do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                       B: int, T: int, Hq: int, Hkv: int, hd: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of `attention`, shapes as q, k, v."""
    _attncheck(q, k, v, B, T, Hq, Hkv, hd)
    check(do.shape == q.shape and o.shape == q.shape and lse.shape == (B, Hq, T),
           f"attention_backward: do {do.shape} o {o.shape} lse {lse.shape}")
    dq, dk, dv = be._new(q.shape), be._new(k.shape), be._new(v.shape)
    dsum = be._new((B, Hq, T))
    params = _params(B, T, Hq, Hkv, hd)
    nb = -(-T // 32)                       # 32-row query / key blocks
    # backward_dq writes dsum = rowsum(dO * O), which backward_dkv reads
    be._launch("attention_backward", [q, k, v, do, lse, o, dq, dsum], grid_for(B * Hq * nb),
               params, name="backward_dq", constants=_attn_consts(hd, 1, bch=4))
    # backward_dkv: per query head (N, Hq*hd); a GQA group's heads are summed after
    dkh, dvh = (dk, dv) if Hq == Hkv else (be._new(q.shape), be._new(q.shape))
    be._launch("attention_backward", [q, k, v, do, lse, dsum, dkh, dvh], grid_for(B * Hq * nb),
               params, name="backward_dkv", constants=_attn_consts(hd, 2))
    if Hq != Hkv:
        be._launch("attention_backward", [dkh, dvh, dk, dv], grid_for(-(-dk.size // 256)),
                   params, name="backward_reduce")
    return dq, dk, dv


def kv_append_(be, cache: Tensor, x: Tensor, pos: int) -> None:
    """In place: rows pos .. pos+M-1 of cache f32 (Lmax, C) = x f32 (M, C)."""
    if (len(cache.shape) != 2 or len(x.shape) != 2 or x.shape[1] != cache.shape[1]
            or pos < 0 or pos + x.shape[0] > cache.shape[0]):
        raise ValueError(f"kv_append_: {x.shape} at row {pos} does not fit cache {cache.shape}")
    total = x.shape[0] * x.shape[1]
    be._launch("kv_append_", [x, cache], be._ew_grid(total),
               dict(total=total, offset=pos * cache.shape[1]))


def attention_decode(be, q: Tensor, k_cache: Tensor, v_cache: Tensor, L: int, Hq: int, Hkv: int,
                     hd: int) -> Tensor:
    """q f32 (1, Hq*hd) over the first L rows of k/v caches (>= L, Hkv*hd) -> o (1, Hq*hd)."""
    if Hkv <= 0 or Hq % Hkv:
        raise ValueError(f"attention_decode: Hq={Hq} not a multiple of Hkv={Hkv}")
    if not 1 <= L <= min(k_cache.shape[0], DECODE_LMAX):
        raise ValueError(f"attention_decode: L={L} outside 1..{min(k_cache.shape[0], DECODE_LMAX)}"
                         f" (cache rows {k_cache.shape[0]}, kernel limit {DECODE_LMAX})")
    if hd > DECODE_HDMAX:
        raise ValueError(f"attention_decode: head_dim={hd} over the kernel's limit {DECODE_HDMAX}")
    if q.shape != (1, Hq * hd) or k_cache.shape[1:] != (Hkv * hd,) or v_cache.shape != k_cache.shape:
        raise ValueError(f"attention_decode: q {q.shape} k {k_cache.shape} v {v_cache.shape} for "
                         f"Hq={Hq} Hkv={Hkv} hd={hd}")
    o = be._new(q.shape)
    be._launch("attention_decode", [q, k_cache, v_cache, o], (Hq, 1, 1),
               dict(l=L, hq=Hq, hkv=Hkv, hd=hd, scale=F32(1.0 / np.sqrt(hd))))
    return o
