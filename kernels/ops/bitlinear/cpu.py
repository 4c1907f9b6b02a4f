"""CpuBackend's W1.58A8 BitLinear: the reference's arithmetic (reference.py beside this file)
as few, large float32 BLAS calls.

- `CpuTernary`: a frozen projection (or a group of them reading one input, q/k/v) with its
  codes held once as a float32 (out, in) matrix, built on upload and kept (the base model is
  frozen), so no step converts int8 codes again. A group's codes are one stacked matrix: one
  GEMM per group.
- `quantize_act` returns the reference's xq and x_scale bit for bit: int8 when the int8 GEMM
  (int8_gemm.py, onnxruntime, optional) is there, else float32 holding the same integers.
- The forward GEMM runs in int8 through onnxruntime when installed (exact int32), else as a
  float32 GEMM of the same small integers (exact too): identical results either way.
- `bitlinear` / `bitlinear_group`: xq @ codes^T is a GEMM of small integers, exact in float32
  while |sum| < 2^24 (in < 132k), so the result equals the reference's int32 accumulator
  whatever BLAS's summation order; the scale division is the reference's. Bit-identical.
- `bitlinear_backward`: the straight-through input gradient in one of three arithmetics
  (`ste_mode`, BITSWARM_CPU_STE): "f32", dy @ (codes / weight_scale), the scale folded into the
  kept matrix (the reference divides the product): equal to it up to float32 rounding; "i16",
  reference.bitlinear_backward_int with two terms (dy quantized per row to 15-bit integers at a
  power-of-two scale, two int8 GEMM terms, exact int32 sums), bit-identical to it and to the
  GPU's i16 (bitlinear_backward_int.wgsl); "i24", dy split into three int8 terms per row
  (`_backward_int8`: as close to the exact product as the float32 GEMM). "auto", the default:
  i16 where it is faster (onnxruntime and numba there, dy of >= STE_I16_MIN_K columns), else
  f32.
Every op splits its rows over the worker threads (kernels/ops/threads.py).
Floats are precision.F32, looked up per call (a float64 gradient check switches them).
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from bitswarm.kernels.config import CPU_STE_CHOICES, TernaryLinear
from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.bitlinear import int8_gemm
from bitswarm.kernels.ops.bitlinear import reference as ref
from bitswarm.kernels.ops.bitlinear.reference import ACT_QMAX, QUANT_EPS
from bitswarm.kernels.ops.threads import ew_rows, run_split


# float32 constants of the fused loops (numba would promote Python floats to float64)
_B = 254.0           # base of the int8 terms: a residual in [-0.5, 0.5] times 254 is in [-127, 127]
_F128, _F254, _F127 = np.float32(128.0), np.float32(_B), np.float32(ACT_QMAX)
_TINY = np.float32(1e-30)
# t + 1.5 * 2^23 - 1.5 * 2^23 rounds a float32 |t| < 2^22 to the nearest integer, ties to even:
# np.rint's value, in two vectorizable adds (numba's rint is a libm call per element)
_MAGIC = np.float32(12582912.0)
_ABS = np.int32(0x7FFFFFFF)

# Float copies of frozen codes are kept while their total stays under this many bytes (4 per
# weight: the shipped default model ~50 MB, 125M ~0.35 GB each kind); beyond it they are
# rebuilt per call (one conversion pass, ~5% of the GEMM), so large models (2B-4T: ~10 GB)
# do not hold float32 copies of every projection. int8 copies (1 byte per weight) are kept.
CACHE_BYTES = int(os.environ.get("BITSWARM_CPU_CACHE_BYTES", 2 << 30))
_cached = [0]
# Re-entrant: a finalizer (_release) may run from a collection inside build() under it.
_kept_lock = threading.RLock()


def _release(nbytes: int) -> None:
    with _kept_lock:
        _cached[0] -= nbytes


def _kept(owner, cache: dict, key, build):
    """cache[key], built by build() and kept while the byte budget allows. Batch parts
    (threads.run_parts) ask at once: one builds, under the lock, so the budget counts it once."""
    d = cache.get(key)
    if d is None:
        with _kept_lock:
            d = cache.get(key)
            if d is None:
                d = build()
                if _cached[0] + d.nbytes <= CACHE_BYTES:
                    _cached[0] += d.nbytes
                    weakref.finalize(owner, _release, d.nbytes)
                    cache[key] = d
    return d


class CpuTernary(TernaryLinear):
    """A TernaryLinear (codes int8 (out, in), weight_scale) plus, built on first use and kept
    (within CACHE_BYTES): its codes as a float matrix (the float32 forward), codes /
    weight_scale as a float matrix (the input gradient), and codes^T as int8 (the int8
    forward). In a group (`ternary_group`), `rows` is this projection's row range of the
    group's stacked matrices."""

    def __init__(self, w: TernaryLinear, group: "_Group | None" = None,
                 rows: tuple[int, int] | None = None) -> None:
        super().__init__(w.codes, np.float32(w.weight_scale))
        self.group, self.rows = group, rows
        self._cache: dict = {}

    def dense(self) -> np.ndarray:
        """codes as a C-contiguous precision.F32 (out, in) matrix."""
        if self.group is not None:
            a, b = self.rows
            return self.group.dense()[a:b]
        F = prec.F32
        return _kept(self, self._cache, ("dense", F),
                     lambda: np.ascontiguousarray(self.codes, dtype=F))

    def grad_matrix(self) -> np.ndarray:
        """codes / weight_scale, C-contiguous precision.F32 (out, in): dx = dy @ this."""
        F = prec.F32

        def build():
            m = np.ascontiguousarray(self.codes, dtype=F)
            m /= F(self.weight_scale)
            return m
        return _kept(self, self._cache, ("grad", F), build)

    def codes8(self) -> np.ndarray:
        """codes as C-contiguous int8 (out, in): the int8 input gradient's operand."""
        c = self._cache.get("c")
        if c is None:
            # a copy even when codes is contiguous: layers sharing one codes array (the
            # benchmarks' fast_weights) then read their own, as a real model's layers do
            c = self._cache["c"] = np.array(self.codes, dtype=np.int8, order="C")
        return c

    def codes_t(self) -> np.ndarray:
        """codes^T as int8 (in, out), the int8 GEMM's operand (C-contiguous when alone)."""
        if self.group is not None:
            a, b = self.rows
            return self.group.codes_t()[:, a:b]
        t = self._cache.get("t")
        if t is None:
            t = self._cache["t"] = np.ascontiguousarray(self.codes.T, dtype=np.int8)
        return t


class _Group:
    """The stacked codes of projections reading one input (rows in member order)."""

    def __init__(self, ws: list[TernaryLinear]) -> None:
        self.codes = [w.codes for w in ws]
        self._cache: dict = {}

    def codes_t(self) -> np.ndarray:
        t = self._cache.get("t")
        if t is None:
            t = self._cache["t"] = np.ascontiguousarray(
                np.concatenate(self.codes, axis=0).T, dtype=np.int8)
        return t

    def dense(self) -> np.ndarray:
        F = prec.F32
        return _kept(self, self._cache, ("dense", F),
                     lambda: np.concatenate([c.astype(F) for c in self.codes], axis=0))


def ternary(w: TernaryLinear) -> CpuTernary:
    """A frozen projection as CpuBackend holds it."""
    return w if isinstance(w, CpuTernary) else CpuTernary(w)


def ternary_group(ws: list[TernaryLinear]) -> list[CpuTernary]:
    """Projections of one input (same in_features), sharing one stacked codes matrix. Raises
    ValueError when their in_features differ."""
    if len({w.codes.shape[1] for w in ws}) != 1:
        raise ValueError(f"ternary_group: in_features differ: {[w.codes.shape for w in ws]}")
    g = _Group(ws)
    out, a = [], 0
    for w in ws:
        b = a + w.codes.shape[0]
        out.append(CpuTernary(w, g, (a, b)))
        a = b
    return out


def int8_enabled() -> bool:
    """Whether bitlinear runs its GEMM in int8 (onnxruntime installed and BITSWARM_CPU_INT8
    not "0"); else the float32 GEMM of the same integers. Results are identical either way."""
    return os.environ.get("BITSWARM_CPU_INT8", "1") != "0" and int8_gemm.session() is not None


@jit.kernel
def _absmax_rows(x, out):
    """out[i] = max|x[i, :]| of float32 rows, through the bit patterns (|x| of a finite float32
    orders as its bits with the sign cleared: exact, the value np.maximum(max, -min) gives, and
    a loop LLVM vectorizes where a float max with NaN semantics is not)."""
    n, C = x.shape
    b = x.view(np.int32)
    for i in range(n):
        a = np.int32(0)
        for j in range(C):
            v = b[i, j] & _ABS
            a = v if v > a else a
        out[i] = a


@jit.kernel
def _quantize_rows(x, eps, xq, s):
    """quantize_act's passes for rows x (n, C) float32 in one loop: s = 127 / max(max|x|, eps),
    xq = rint(x * s) (int8 or float32 xq)."""
    n, C = x.shape
    a = np.empty(n, np.int32)
    _absmax_rows(x, a)
    av = a.view(np.float32)
    for i in range(n):
        m = av[i]
        if m < eps:
            m = eps
        sc = _F127 / m
        s[i] = sc
        for j in range(C):
            xq[i, j] = (x[i, j] * sc + _MAGIC) - _MAGIC


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reference.quantize_act's values: xq int8 (N, C) when the int8 GEMM is enabled, else
    float32 holding the same integers (what the float32 GEMM multiplies); x_scale float32 (N,).
    Bit-identical values for finite x. No clip pass: |x * s| <= absmax * (127 / absmax) rounds
    to at most 127 (non-finite x is undefined, as in the reference's int8 cast)."""
    F = prec.F32
    N, C = x.shape
    as_int8 = int8_enabled()
    xq = np.empty((N, C), np.int8 if as_int8 else F)
    s = np.empty(N, F)
    k = _quantize_rows.for_size(x.size)
    if k is not None and x.dtype == np.float32 and F == np.float32 and C:
        run_split(lambda lo, hi: k(x[lo:hi], F(QUANT_EPS), xq[lo:hi], s[lo:hi]), N, ew_rows(C))
        return xq, s

    def rows(lo, hi):
        xr, sr = x[lo:hi], s[lo:hi]
        np.maximum(np.max(xr, axis=-1), -np.min(xr, axis=-1), out=sr)   # max|x|, no |x| pass
        np.maximum(sr, F(QUANT_EPS), out=sr)
        np.divide(F(ACT_QMAX), sr, out=sr)
        if as_int8:
            q = np.multiply(xr, sr[:, None])
            np.rint(q, out=xq[lo:hi], casting="unsafe")   # exact: integers in [-127, 127]
        else:
            q = np.multiply(xr, sr[:, None], out=xq[lo:hi])
            np.rint(q, out=q)
    run_split(rows, N, ew_rows(C))
    return xq, s


@jit.kernel
def _scale_cols(acc, a, b, div, y):
    """y = float32(acc[:, a:b]) / div_row (acc int32, exact in float32 below 2^24): the forward's
    np.divide(acc[:, a:b], div, dtype=float32) in one pass."""
    n = y.shape[0]
    for i in range(n):
        d = div[i]
        for j in range(b - a):
            y[i, j] = np.float32(acc[i, a + j]) / d


def _cpu(w: TernaryLinear) -> CpuTernary:
    """w as a CpuTernary (a plain TernaryLinear, e.g. from a test's ternarize hook, is wrapped
    for this call)."""
    return w if isinstance(w, CpuTernary) else CpuTernary(w)


def _as_float(xq: np.ndarray) -> np.ndarray:
    return xq if xq.dtype == prec.F32 else xq.astype(prec.F32)


def _divisor(x_scale: np.ndarray, weight_scale) -> np.ndarray:
    """x_scale * weight_scale (N, 1): the reference's per-row divisor."""
    return (x_scale[:, None] * prec.F32(weight_scale)).astype(prec.F32, copy=False)


def bitlinear(xq: np.ndarray, x_scale: np.ndarray, w: CpuTernary) -> np.ndarray:
    """y = (xq @ codes^T) / (x_scale * weight_scale): xq (N, in) (float32 or int8), x_scale
    (N,), w a CpuTernary (out, in) -> (N, out) float32."""
    return bitlinear_group(xq, x_scale, [w])[0]


def bitlinear_group(xq: np.ndarray, x_scale: np.ndarray, ws: list[CpuTernary]) -> list:
    """[bitlinear(xq, x_scale, w) for w in ws], as one GEMM on the stacked codes when ws is one
    whole group in order. -> list of contiguous (N, out_i) float32."""
    F = prec.F32
    ws = [_cpu(w) for w in ws]
    int8 = xq.dtype == np.int8 and int8_enabled()
    if not int8:
        xq = _as_float(xq)
    N = xq.shape[0]
    g = ws[0].group
    if g is not None and len(ws) == len(g.codes) and all(w.group is g for w in ws) \
            and [w.rows for w in ws] == sorted(w.rows for w in ws):
        mats = [g.codes_t() if int8 else g.dense()]
        parts = [[(i, w.rows[0], w.rows[1]) for i, w in enumerate(ws)]]
    else:
        mats = [w.codes_t() if int8 else w.dense() for w in ws]
        parts = [[(i, 0, w.codes.shape[0])] for i, w in enumerate(ws)]
    ys = [np.empty((N, w.codes.shape[0]), F) for w in ws]
    divs = [_divisor(x_scale, w.weight_scale) for w in ws]

    scale = _scale_cols.for_size(N * sum(y.shape[1] for y in ys)) if F == np.float32 else None

    def rows(lo, hi):
        if int8:
            xu = int8_gemm.offset_u8(xq[lo:hi])
            for m, members in zip(mats, parts):
                acc = int8_gemm.gemm(xu, np.ascontiguousarray(m))        # int32, exact
                for i, a, b in members:
                    if scale is not None:                                # the same bits
                        scale(acc, a, b, divs[i][lo:hi, 0], ys[i][lo:hi])
                    else:
                        np.divide(acc[:, a:b], divs[i][lo:hi], out=ys[i][lo:hi], dtype=F)
            return
        for m, members in zip(mats, parts):
            if len(members) == 1:
                i = members[0][0]
                acc = np.matmul(xq[lo:hi], m.T, out=ys[i][lo:hi])
                np.divide(acc, divs[i][lo:hi], out=acc)
                continue
            acc = xq[lo:hi] @ m.T                                        # (rows, sum out)
            for i, a, b in members:
                np.divide(acc[:, a:b], divs[i][lo:hi], out=ys[i][lo:hi])
    run_split(rows, N)
    return ys


GRAD_BLOCK = 256     # rows per block of the int8 input gradient (its passes stay in cache)
# i24 against f32 in the training step (2 cores, N 1024, ms per call, i24 / f32): K 128 -> 384:
# 0.67 / 0.64 (at N 512: 0.42 / 0.33); K 384 -> 384: 1.38 / 1.31; K 384 -> 1024: 3.27 / 3.07;
# K 1024 -> 384: 2.4 / 3.1; K 768 -> 768: 3.1 / 5.1; K 768 -> 2048: 10.3 / 12.7; K 2048 -> 768:
# 7.4 / 12.9 (docs/benchmarks.md). i24 is chosen only explicitly (BITSWARM_CPU_STE=i24).
# i16 (two int8 terms instead of three) from this many columns: N 1024, 2 threads, ms per call,
# f32 / i24 / i16: K 128 -> 384: 0.58 / 1.02 / 0.90; 384 -> 384: 1.44 / 1.18 / 0.96;
# 1024 -> 384: 3.30 / 2.29 / 1.60; 384 -> 1024: 3.25 / 2.11 / 1.60 (benchmarks/ste_cpu.py)
STE_I16_MIN_K = 256


def ste_setting(setting: str | None = None) -> str:
    """`setting` (None: BITSWARM_CPU_STE, default "auto"), checked: one of CPU_STE_CHOICES.
    Raises ValueError for another value."""
    v = (os.environ.get("BITSWARM_CPU_STE", "auto") if setting is None else setting).strip().lower()
    if v not in CPU_STE_CHOICES:
        raise ValueError(f"BITSWARM_CPU_STE / --cpu-ste must be one of {', '.join(CPU_STE_CHOICES)}, "
                         f"got {v!r}")
    return v


def ste_mode(n: int | None = None, k: int | None = None, setting: str | None = None) -> str:
    """The arithmetic of bitlinear_backward for a dy of n elements and k columns (None: any)
    under `setting` (ste_setting): "f32", "i16" or "i24" (module docstring). i16 and i24 need
    onnxruntime (int8_enabled), else f32. "auto" takes i16 when numba's loops run at n
    (jit.use) and k >= STE_I16_MIN_K: with NumPy's passes, splitting dy costs more than the
    int8 GEMM saves. Raises ValueError for a bad setting."""
    v = ste_setting(setting)
    if v == "f32" or not int8_enabled():
        return "f32"
    if v != "auto":
        return v
    fast = jit.enabled() if n is None else jit.use(n)
    return "i16" if fast and (k is None or k >= STE_I16_MIN_K) else "f32"


@jit.kernel
def _split_rows(dy, u, S):
    """Per row of dy (n, K) float32: S = 127 / max|dy_row| (>= 1e-30 clamp) and the three int8
    terms as offset binary u (3, n, K) uint8: t0 = dy*S + 128, u_i = rint(t_i),
    t_{i+1} = (t_i - u_i)*254 + 128. Float32 throughout, the NumPy passes' order."""
    n, K = dy.shape
    a = np.empty(n, np.int32)
    _absmax_rows(dy, a)
    av = a.view(np.float32)
    for r in range(n):
        m = av[r]
        if m < _TINY:
            m = _TINY
        sc = _F127 / m
        S[r] = sc
        for j in range(K):
            t = dy[r, j] * sc + _F128
            q = (t + _MAGIC) - _MAGIC
            u[0, r, j] = np.uint8(np.int32(q))
            t = (t - q) * _F254 + _F128
            q = (t + _MAGIC) - _MAGIC
            u[1, r, j] = np.uint8(np.int32(q))
            t = (t - q) * _F254 + _F128
            u[2, r, j] = np.uint8(np.int32((t + _MAGIC) - _MAGIC))


def _split_rows_numpy(dy, u, S):
    """_split_rows as NumPy passes (same float32 operations, same order: same bits)."""
    s = np.maximum(np.max(dy, axis=1), -np.min(dy, axis=1))
    np.maximum(s, _TINY, out=s)
    np.divide(_F127, s, out=S)
    t = np.multiply(dy, S[:, None])
    t += _F128
    for i in range(3):
        q = np.rint(t)
        u[i] = q                                              # exact: integers in [1, 255]
        if i < 2:
            t -= q
            t *= _F254
            t += _F128


@jit.kernel
def _combine(acc3, c, add, dx):
    """dx = float32((a0*254^2 + a1*254 + a2) * c_row) (+ add): a_i = acc3[i] int32 (n, k), the
    sum exact in float64 (|a_i| < 2^31, so < 2^53), c (n,) float64; add (n, k) float32 or an
    empty (0, 0) array."""
    n, k = dx.shape
    has = add.shape[0] > 0
    for r in range(n):
        cr = c[r]
        for j in range(k):
            v = (np.float64(acc3[0, r, j]) * 64516.0 + np.float64(acc3[1, r, j]) * 254.0
                 + np.float64(acc3[2, r, j]))
            y = np.float32(v * cr)
            if has:
                y = y + add[r, j]
            dx[r, j] = y


def _combine_numpy(acc3, c, add, dx):
    """_combine as NumPy passes (same float64 sum, one rounding to float32: same bits)."""
    v = acc3[0] * 64516.0
    v += acc3[1] * 254.0
    v += acc3[2]
    v *= c[:, None]
    dx[...] = v
    if add.shape[0]:
        dx += add


def _backward_int8(dy, codes, weight_scale, acc, dx) -> None:
    """dx = dy @ codes / weight_scale (+ acc) through the int8 GEMM, for one block of rows.

    Each row of dy is split exactly-enough into three int8 terms: with S = 127 / max|dy_row|,
    dy * S = q0 + q1 / 254 + q2 / 254^2 + e, q_i integers in [-127, 127] (offset binary
    q + 128 in [1, 255], int8_gemm's zero point). The three q_i @ codes are one exact int32
    GEMM (the terms stacked as rows), summed exactly in float64 and scaled once:
    dx = float32((a0*254^2 + a1*254 + a2) / (S * 254^2 * weight_scale)).
    Error per element of dy: |e| / S <= (0.5 / 254^2 + 2^-17) / 127 of max|dy_row| (the 2^-17
    is float32 rounding of dy*S + 128): 1.4e-7 of the row's max, float32's own precision. Per
    element of dx at most K (= out) times that times max|dy_row| / weight_scale; in the tests
    it is as close to the exact product as the float32 GEMM is (tests/kernels/test_cpu_ops.py)."""
    n, K = dy.shape
    u = np.empty((3, n, K), np.uint8)
    S = np.empty(n, np.float32)
    split = _split_rows.fast
    (split or _split_rows_numpy)(dy, u, S)
    acc3 = int8_gemm.gemm(u.reshape(3 * n, K), codes).reshape(3, n, -1)
    c = 1.0 / (S.astype(np.float64) * 64516.0 * np.float64(weight_scale))
    add = acc if acc is not None else np.empty((0, 0), np.float32)
    comb = _combine.fast
    (comb or _combine_numpy)(acc3, c, add, dx)


@jit.kernel
def _split_i16(dy, u, rs):
    """reference.ste_int_quantize(dy, 2) and ste_int_split in one loop, for rows dy (n, K)
    float32: per row e = clamp(14 + 126 - E, -126, 126) (E: max|dy_row|'s exponent field),
    q = clip(rint(dy * 2^e), -16383, 16383), hi = (q + 128) >> 8, lo = q - 256 hi, as offset
    binary u[0] = hi + 128, u[1] = lo + 128 (u: (2, n, K) uint8); rs = 2^-e (n,)."""
    n, K = dy.shape
    a = np.empty(n, np.int32)
    _absmax_rows(dy, a)
    bits = np.empty(2, np.int32)
    f = bits.view(np.float32)
    for r in range(n):
        e = np.int32(14 + 126) - ((a[r] >> 23) & 0xFF)
        e = np.int32(-126) if e < -126 else (np.int32(126) if e > 126 else e)
        bits[0] = (e + 127) << 23                       # 2^e and 2^-e, exact float32
        bits[1] = (127 - e) << 23
        up = f[0]
        rs[r] = f[1]
        for j in range(K):
            t = dy[r, j] * up
            q = np.int32((t + _MAGIC) - _MAGIC)           # |t| < 2^14: rint, ties to even
            q = np.int32(16383) if q > 16383 else (np.int32(-16383) if q < -16383 else q)
            hi = (q + 128) >> 8
            u[0, r, j] = np.uint8(hi + 128)
            u[1, r, j] = np.uint8(q - 256 * hi + 128)


def _split_i16_numpy(dy, u, rs):
    """_split_i16 through the reference's functions (same values)."""
    q, r = ref.ste_int_quantize(dy, 2)
    hi, lo = ref.ste_int_split(q)
    u[0] = hi.view(np.uint8) ^ np.uint8(0x80)
    u[1] = lo.view(np.uint8) ^ np.uint8(0x80)
    rs[...] = r


@jit.kernel
def _combine_i16(acc2, rs, ws, add, dx):
    """dx = (float32(256 a_hi + a_lo) * rs_row) / ws (+ add): the reference's float32 operations
    in its order; acc2 (2, n, k) int32 (the sum is exact: |q @ codes| <= 16383 * K < 2^31),
    add (n, k) float32 or an empty (0, 0) array."""
    n, k = dx.shape
    has = add.shape[0] > 0
    for r in range(n):
        c = rs[r]
        for j in range(k):
            y = np.float32(acc2[0, r, j] * 256 + acc2[1, r, j]) * c
            y = y / ws
            if has:
                y = y + add[r, j]
            dx[r, j] = y


def _combine_i16_numpy(acc2, rs, ws, add, dx):
    v = acc2[0] * 256
    v += acc2[1]
    dx[...] = (v.astype(np.float32) * rs[:, None]) / ws
    if add.shape[0]:
        dx += add


def _backward_i16(dy, codes, weight_scale, acc, dx) -> None:
    """dx = reference.bitlinear_backward_int(dy, codes, weight_scale, terms=2) (+ acc), for one
    block of rows: both int8 terms of every row in one onnxruntime GEMM (stacked as rows)."""
    n, K = dy.shape
    u = np.empty((2, n, K), np.uint8)
    rs = np.empty(n, np.float32)
    (_split_i16.fast or _split_i16_numpy)(dy, u, rs)
    acc2 = int8_gemm.gemm(u.reshape(2 * n, K), codes).reshape(2, n, -1)
    add = acc if acc is not None else np.empty((0, 0), np.float32)
    (_combine_i16.fast or _combine_i16_numpy)(acc2, rs, np.float32(weight_scale), add, dx)


def bitlinear_backward(dy: np.ndarray, w: CpuTernary, acc: np.ndarray | None = None,
                       ste: str | None = None) -> np.ndarray:
    """Straight-through input gradient dx = dy @ (codes / weight_scale) (+ acc): dy (N, out)
    -> (N, in) float32, in the arithmetic `ste_mode` picks under `ste` (None: BITSWARM_CPU_STE;
    float32 dy and acc only for i16 /
    i24: i16 bit-identical to reference.bitlinear_backward_int(terms=2), i24 within the bound
    stated at `_backward_int8`), else one float32 GEMM."""
    w = _cpu(w)
    mode = "f32"
    if dy.dtype == np.float32 and prec.F32 == np.float32 and (acc is None or acc.dtype == np.float32):
        mode = ste_mode(dy.size, dy.shape[1], ste)
    if mode != "f32":
        codes = w.codes8()
        dx = np.empty((dy.shape[0], codes.shape[1]), np.float32)
        one = _backward_i16 if mode == "i16" else _backward_int8

        def blocks(lo, hi):
            for b in range(lo, hi, GRAD_BLOCK):
                e = min(hi, b + GRAD_BLOCK)
                one(dy[b:e], codes, w.weight_scale, None if acc is None else acc[b:e], dx[b:e])
        run_split(blocks, dy.shape[0])
        return dx
    c = w.grad_matrix()
    dx = np.empty((dy.shape[0], c.shape[1]), np.result_type(dy, c))

    def rows(lo, hi):
        d = np.matmul(dy[lo:hi], c, out=dx[lo:hi])
        if acc is not None:
            d += acc[lo:hi]
    run_split(rows, dy.shape[0])
    return dx
