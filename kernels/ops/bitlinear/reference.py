"""NumPy reference of the W1.58A8 BitLinear family: the semantics of quantize_act.wgsl,
bitlinear.wgsl (main, main3, split-K reduce), bitlinear_backward.wgsl (fp32, the reference
path), bitlinear_backward_f16.wgsl (f16 partial sums, behind GpuBackend.ste_precision),
ternarize.wgsl + ternarize_pack.wgsl and dequantize_act.wgsl.

Sources: BitNet b1.58 (arXiv:2402.17764, eq. 1-3) and transformers' integrations/bitnet.py:
absmean ternary weights (WeightQuant, fp32), per-token absmax int8 activations (ActQuant), and
the straight-through estimator through both quantizers. The quantizers' constants are defined
here once (QUANT_EPS, ACT_QMAX); the shaders spell the same literals.

Pretraining adds what LoRA fine-tuning never computes: `ternarize` (redone every step on the
latent fp32 weight), `dequantize_act` and `bitlinear_weight_grad` (dW = dy^T @ (xq / x_scale)).
Floats are precision.F32 (float32); functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.matmul.reference import matmul

ACT_QMAX = 127.0   # int8 absmax activation quantization (W1.58A8)
QUANT_EPS = 1e-5   # clamp of absmax (activations) and mean|W| (weights), as transformers


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8: s = 127 / max(max|x|, 1e-5); xq = clamp(round(x*s), -128, 127).

    x (N, C) float32 -> xq int8 (N, C), x_scale float32 (N,). round is half-to-even.
    """
    absmax = np.maximum(np.max(np.abs(x), axis=-1), prec.F32(QUANT_EPS)).astype(prec.F32)
    s = (prec.F32(ACT_QMAX) / absmax).astype(prec.F32)
    xq = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    return xq, s


def bitlinear(xq: np.ndarray, x_scale: np.ndarray, codes: np.ndarray, weight_scale) -> np.ndarray:
    """W1.58A8 projection: y = (xq @ codes^T) / (x_scale * weight_scale).

    xq int8 (N, in), x_scale float32 (N,), codes int8 (out, in) in {-1,0,1}, weight_scale
    float32 scalar -> y float32 (N, out). The int32 dot product is exact (float32 matmul of
    small integers is exact while |sum| < 2^24, i.e. in < 132k).
    """
    acc = xq.astype(prec.F32) @ codes.astype(prec.F32).T          # exact integers
    return (acc / (x_scale[:, None] * prec.F32(weight_scale))).astype(prec.F32)


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
    return ((dy @ codes.astype(prec.F32)) / prec.F32(weight_scale)).astype(prec.F32)


STE_F16_CHUNK = 32   # o terms per f16 partial sum of bitlinear_backward_f16 (16, 32 or 64)


def ste_f16_top(chunk: int) -> int:
    """TOP of bitlinear_backward_f16: rows are scaled so max|dy| * 2^e < 2^TOP, with
    chunk * 2^TOP = 2^15 (a chunk's f16 sum stays <= 2^15 < 65504). Raises ValueError unless
    chunk is 16, 32 or 64."""
    if chunk not in (16, 32, 64):
        raise ValueError(f"f16 STE chunk must be 16, 32 or 64, got {chunk}")
    return 15 - int(chunk).bit_length() + 1


def ste_row_exponents(dy: np.ndarray, top: int) -> np.ndarray:
    """Per-row power-of-two exponents of bitlinear_backward_f16: int32 (N,) e with
    max|dy_n| * 2^e in [2^(top-1), 2^top): e = clamp(top + 126 - E, -126, 126), E the biased
    float32 exponent field of max|dy_n| (0 for a zero row: e = 126)."""
    m = (np.max(np.abs(dy), axis=1) if dy.shape[1] else np.zeros(dy.shape[0])).astype(prec.F32)
    eb = (m.view(np.int32) >> 23) & 0xFF
    return np.clip(top + 126 - eb, -126, 126).astype(np.int32)


def bitlinear_backward_f16(dy: np.ndarray, codes: np.ndarray, weight_scale,
                           chunk: int = STE_F16_CHUNK) -> np.ndarray:
    """The f16 straight-through input gradient (bitlinear_backward_f16.wgsl): dy float32
    (N, out), codes int8 (out, in), weight_scale float32 -> dx float32 (N, in).

    Each row of dy is scaled by 2^e_n (ste_row_exponents, exact) and rounded to float16 (nearest
    even); products with codes in {-1, 0, +1} are exact; sums run in float16 over `chunk`
    consecutive o (chunks at multiples of chunk, each summed in o order), the chunk sums are
    added in float32 in chunk order, and dx = sum * 2^-e_n / weight_scale. NumPy's float16 add
    rounds through float32, which is still correctly rounded (24 >= 2 * 11 + 2 bits).
    Error against bitlinear_backward, per output, to first order (u = 2^-11):
    (chunk * u + (out / chunk + 3) * 2^-24) * (|dy| @ |codes|) / weight_scale.
    Raises ValueError for a chunk other than 16, 32, 64.
    """
    top = ste_f16_top(chunk)
    dy = np.asarray(dy, prec.F32)
    N, OUT = dy.shape
    e = ste_row_exponents(dy, top)
    up = np.ldexp(prec.F32(1), e).astype(prec.F32)
    rs = np.ldexp(prec.F32(1), -e).astype(prec.F32)
    d16 = (dy * up[:, None]).astype(np.float16)
    c16 = np.asarray(codes).astype(np.float16)
    acc = np.zeros((N, c16.shape[1]), prec.F32)
    for c0 in range(0, OUT, chunk):
        h = np.zeros(acc.shape, np.float16)
        for o in range(c0, min(c0 + chunk, OUT)):
            h = h + d16[:, o:o + 1] * c16[o]              # exact product, one f16 rounding
        acc += h.astype(prec.F32)
    return ((acc * rs[:, None]) / prec.F32(weight_scale)).astype(prec.F32)


# bitlinear_backward_int: terms -> TOP (dy rows quantized to integers of |q| <= 2^TOP - 1)
STE_INT_TOP = {1: 7, 2: 14}


def ste_int_quantize(dy: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray]:
    """dy float32 (N, out) -> (q int32 (N, out), rs float32 (N,)) of bitlinear_backward_int:
    per row e_n = ste_row_exponents(dy, TOP) (max|dy_n| * 2^e_n in [2^(TOP-1), 2^TOP)),
    q = clip(rint(dy * 2^e_n), -(2^TOP - 1), 2^TOP - 1) (ties to even), rs = 2^-e_n; TOP 7 for
    terms 1 (int8), 14 for terms 2 (two int8 terms). dy ~ q * rs within 2^-TOP max|dy_n| per
    element. Raises ValueError for terms other than 1, 2."""
    if terms not in STE_INT_TOP:
        raise ValueError(f"int STE terms must be 1 or 2, got {terms}")
    top = STE_INT_TOP[terms]
    dy = np.asarray(dy, prec.F32)
    e = ste_row_exponents(dy, top)
    qmax = (1 << top) - 1
    with np.errstate(invalid="ignore", over="ignore"):
        t = dy * np.ldexp(prec.F32(1), e).astype(prec.F32)[:, None]
    q = np.clip(np.rint(t), -qmax, qmax).astype(np.int32)
    return q, np.ldexp(prec.F32(1), -e).astype(prec.F32)


def ste_int_split(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-term split of q int32 with |q| <= 16383: (hi, lo) int8 with q = 256 hi + lo,
    hi = floor((q + 128) / 256) in [-64, 64], lo in [-128, 127] (the rows pass's bytes)."""
    q = np.asarray(q, np.int32)
    hi = (q + 128) >> 8
    return hi.astype(np.int8), (q - 256 * hi).astype(np.int8)


def bitlinear_backward_int(dy: np.ndarray, codes: np.ndarray, weight_scale, terms: int = 2,
                           int_out: bool = False) -> np.ndarray:
    """The straight-through input gradient on int8 dot products (bitlinear_backward_int.wgsl):
    dy float32 (N, out), codes int8 (out, in), weight_scale float32 -> dx float32 (N, in) =
    float32(q @ codes) * 2^-e_n / weight_scale, q and e_n from ste_int_quantize (row-wise dy
    quantization for the input gradient as in SwitchBack, Wortsman et al. 2023,
    arXiv:2304.13013; here at a power-of-two scale, so the WGSL kernel can match it exactly).
    The integer sum S = q @ codes is exact (int32, |S| <= 16383 * out); int_out returns it.
    Error against bitlinear_backward per output: <= 2^-TOP max|dy_n| * sum_o |codes_o| /
    weight_scale (worst case; rounding errors are independent, so typically ~sqrt of it), plus
    the float32 conversion of S and the scale (< 2 ulp). Raises ValueError for bad terms."""
    q, rs = ste_int_quantize(dy, terms)
    s = (q.astype(np.int64) @ np.asarray(codes).astype(np.int64)).astype(np.int32)
    if int_out:
        return s
    return ((s.astype(prec.F32) * rs[:, None]) / prec.F32(weight_scale)).astype(prec.F32)


def ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Absmean ternarization of a latent weight, per tensor, in float32.

    w float32 (out, in) -> codes int8 (out, in) in {-1, 0, +1}, weight_scale float32 scalar:
        s = 1 / max(mean|W|, 1e-5);  codes = clamp(round_half_even(W * s), -1, 1)
    mean|W| is accumulated in float64 and rounded to float32 (the GPU kernel sums in a fixed
    tree order in float32; see ternarize.wgsl beside this file for the tolerance this implies). The layer
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


def ternarize_all(ws: list) -> list[tuple[np.ndarray, np.float32]]:
    """[ternarize(w) for w in ws]: every latent projection of a step at once (the GPU reads all
    their scales back in one download)."""
    return [ternarize(w) for w in ws]


def dequantize_act(xq: np.ndarray, x_scale: np.ndarray) -> np.ndarray:
    """xq int8 (N, C), x_scale float32 (N,) (quantize_act's outputs) -> xq / x_scale (N, C)."""
    return (xq.astype(prec.F32) / x_scale.astype(prec.F32)[:, None]).astype(prec.F32)


def bitlinear_weight_grad(dy: np.ndarray, xq: np.ndarray, x_scale: np.ndarray) -> np.ndarray:
    """Straight-through latent-weight gradient of bitlinear: dW = dy^T @ (xq / x_scale).

    dy (N, out), xq int8 (N, in), x_scale (N,) -> dW float32 (out, in). The GPU path runs the
    dense matmul with trans_a on dequantize_act's output.
    """
    return matmul(dy, dequantize_act(xq, x_scale), trans_a=True)
