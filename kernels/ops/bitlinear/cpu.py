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
- `bitlinear_backward`: dy @ (codes / weight_scale), the scale folded into the kept matrix
  (the reference divides the product): equal to it up to float32 rounding.
Every op splits its rows over the worker threads (kernels/ops/threads.py).
Floats are precision.F32, looked up per call (a float64 gradient check switches them).
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from bitswarm.kernels.config import TernaryLinear
from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.bitlinear import int8_gemm
from bitswarm.kernels.ops.bitlinear.reference import ACT_QMAX, QUANT_EPS
from bitswarm.kernels.ops.threads import run_split


# Float copies of frozen codes are kept while their total stays under this many bytes (4 per
# weight: the shipped default model ~50 MB, 125M ~0.35 GB each kind); beyond it they are
# rebuilt per call (one conversion pass, ~5% of the GEMM), so large models (2B-4T: ~10 GB)
# do not hold float32 copies of every projection. int8 copies (1 byte per weight) are kept.
CACHE_BYTES = int(os.environ.get("BITSWARM_CPU_CACHE_BYTES", 2 << 30))
_cached = [0]


def _release(nbytes: int) -> None:
    _cached[0] -= nbytes


def _kept(owner, cache: dict, key, build):
    """cache[key], built by build() and kept while the byte budget allows."""
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
    run_split(rows, N)
    return xq, s


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

    def rows(lo, hi):
        if int8:
            xu = int8_gemm.offset_u8(xq[lo:hi])
            for m, members in zip(mats, parts):
                acc = int8_gemm.gemm(xu, np.ascontiguousarray(m))        # int32, exact
                for i, a, b in members:
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


def bitlinear_backward(dy: np.ndarray, w: CpuTernary, acc: np.ndarray | None = None) -> np.ndarray:
    """Straight-through input gradient dx = dy @ (codes / weight_scale) (+ acc): dy (N, out)
    -> (N, in)."""
    c = _cpu(w).grad_matrix()
    dx = np.empty((dy.shape[0], c.shape[1]), np.result_type(dy, c))

    def rows(lo, hi):
        d = np.matmul(dy[lo:hi], c, out=dx[lo:hi])
        if acc is not None:
            d += acc[lo:hi]
    run_split(rows, dy.shape[0])
    return dx
