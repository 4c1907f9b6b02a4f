"""CpuBackend's W1.58A8 BitLinear: the reference's arithmetic (reference.py beside this file)
as few, large float32 BLAS calls.

- `CpuTernary`: a frozen projection (or a group of them reading one input, q/k/v) with its
  codes held once as a float32 (out, in) matrix, built on upload and kept (the base model is
  frozen), so no step converts int8 codes again. A group's codes are one stacked matrix: one
  GEMM per group.
- `quantize_act` returns xq as float32 holding the int8 values (what the GEMM multiplies); the
  values and x_scale are the reference's, bit for bit.
- `bitlinear` / `bitlinear_group`: xq @ codes^T is a GEMM of small integers, exact in float32
  while |sum| < 2^24 (in < 132k), so the result equals the reference's int32 accumulator
  whatever BLAS's summation order; the scale division is the reference's. Bit-identical.
- `bitlinear_backward`: dy @ codes / weight_scale as the reference; the same BLAS call on the
  same operands (bit-identical where BLAS is deterministic for the shape).
Floats are precision.F32, looked up per call (a float64 gradient check switches them).
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.config import TernaryLinear
from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.bitlinear.reference import ACT_QMAX, QUANT_EPS


class CpuTernary(TernaryLinear):
    """A TernaryLinear (codes int8 (out, in), weight_scale) plus its codes as a dense float
    matrix, built once per float type. In a group (`group_of`), `rows` is this projection's
    row range of the group's stacked matrix."""

    def __init__(self, w: TernaryLinear, group: "_Group | None" = None,
                 rows: tuple[int, int] | None = None) -> None:
        super().__init__(w.codes, np.float32(w.weight_scale))
        self.group, self.rows = group, rows
        self._dense: dict = {}

    def dense(self) -> np.ndarray:
        """codes as a C-contiguous precision.F32 (out, in) matrix (cached)."""
        F = prec.F32
        d = self._dense.get(F)
        if d is None:
            if self.group is not None:
                a, b = self.rows
                d = self.group.dense()[a:b]
            else:
                d = np.ascontiguousarray(self.codes, dtype=F)
            self._dense[F] = d
        return d


class _Group:
    """The stacked codes of projections reading one input (rows in member order)."""

    def __init__(self, ws: list[TernaryLinear]) -> None:
        self.codes = [w.codes for w in ws]
        self._dense: dict = {}

    def dense(self) -> np.ndarray:
        F = prec.F32
        d = self._dense.get(F)
        if d is None:
            d = self._dense[F] = np.concatenate([c.astype(F) for c in self.codes], axis=0)
        return d


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


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reference.quantize_act's values, with xq as float32 (N, C) (integers in [-128, 127])
    rather than int8; x_scale float32 (N,). Bit-identical values."""
    F = prec.F32
    absmax = np.maximum(np.max(x, axis=-1), -np.min(x, axis=-1))      # max|x|, no |x| temporary
    np.maximum(absmax, F(QUANT_EPS), out=absmax)
    s = np.divide(F(ACT_QMAX), absmax, out=absmax).astype(F, copy=False)
    xq = np.multiply(x, s[:, None])
    np.rint(xq, out=xq)
    np.clip(xq, -128, 127, out=xq)
    return xq, s


def _cpu(w: TernaryLinear) -> CpuTernary:
    """w as a CpuTernary (a plain TernaryLinear, e.g. from a test's ternarize hook, is wrapped
    for this call)."""
    return w if isinstance(w, CpuTernary) else CpuTernary(w)


def _as_float(xq: np.ndarray) -> np.ndarray:
    return xq if xq.dtype == prec.F32 else xq.astype(prec.F32)


def _scaled(acc: np.ndarray, x_scale: np.ndarray, weight_scale, out=None) -> np.ndarray:
    """acc / (x_scale * weight_scale) per row, as the reference divides."""
    return np.divide(acc, (x_scale[:, None] * prec.F32(weight_scale)).astype(prec.F32, copy=False),
                     out=out)


def bitlinear(xq: np.ndarray, x_scale: np.ndarray, w: CpuTernary) -> np.ndarray:
    """y = (xq @ codes^T) / (x_scale * weight_scale): xq (N, in) (float32 or int8), x_scale
    (N,), w a CpuTernary (out, in) -> (N, out) float32."""
    acc = _as_float(xq) @ _cpu(w).dense().T
    return _scaled(acc, x_scale, w.weight_scale, out=acc)


def bitlinear_group(xq: np.ndarray, x_scale: np.ndarray, ws: list[CpuTernary]) -> list:
    """[bitlinear(xq, x_scale, w) for w in ws] as one GEMM when ws is one whole group (in
    order), else one GEMM each. -> list of contiguous (N, out_i) float32."""
    ws = [_cpu(w) for w in ws]
    g = ws[0].group
    whole = (g is not None and all(w.group is g for w in ws) and len(ws) == len(g.codes)
             and [w.rows for w in ws] == sorted(w.rows for w in ws))
    if not whole:
        return [bitlinear(xq, x_scale, w) for w in ws]
    acc = _as_float(xq) @ g.dense().T                                   # (N, sum out)
    return [_scaled(acc[:, w.rows[0]:w.rows[1]], x_scale, w.weight_scale) for w in ws]


def bitlinear_backward(dy: np.ndarray, w: CpuTernary, acc: np.ndarray | None = None) -> np.ndarray:
    """Straight-through input gradient dx = dy @ (codes / weight_scale) (+ acc): dy (N, out)
    -> (N, in)."""
    w = _cpu(w)
    dx = dy @ w.dense()
    dx /= prec.F32(w.weight_scale)
    if acc is not None:
        dx += acc
    return dx
