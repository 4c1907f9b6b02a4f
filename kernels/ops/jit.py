"""Optional fused loops for CpuBackend's CPU paths (kernels/ops/<family>/cpu.py), compiled by
numba when it is installed (the `cpu-int8` extra; wheels for Linux, macOS and Windows).

NumPy runs one pass over memory per ufunc; an op of five ufuncs reads and writes its arrays five
times. A numba loop does the same float32 operations, in the same order, element by element in
one pass, so its results are bit-identical to the NumPy passes it replaces (IEEE arithmetic,
no fast-math, so no FMA contraction; reductions are max / min only, which are exact), and each
family's tests check both paths against each other. Without numba (or with
BITSWARM_CPU_NUMBA=0) every op runs its NumPy passes.

Loops run only on arrays of at least MIN_ELEMENTS elements (`use`, `Kernel.for_size`): below
that, importing numba and loading its cached loops (~0.65 s per process, measured) costs more
than the loops save, so processes that only ever see small arrays (tiny models, the test
suite's many node processes) never import numba. Both paths give the same bits.

Loops are compiled with nogil=True (our worker threads run them in parallel, kernels/ops/
threads.py) and cache=True (compiled once per machine into __pycache__, or numba's user cache
when that is not writable; the first use on a machine takes ~1-3 s per loop).
"""
from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable

import numpy as np

_numba = None          # the numba module once imported; False: not installed
# Re-entrant: compiling a loop compiles its callees (Kernel.fast) under it.
_compile_lock = threading.RLock()
MIN_ELEMENTS = 1 << 16  # smallest array (elements) a fused loop runs on; below, NumPy's passes


def _load():
    """numba, imported on first use (importing it takes ~0.5 s; GPU-only users never do)."""
    global _numba
    if _numba is None:
        try:                           # optional: the NumPy passes run without it
            import numba
            _numba = numba
        except ImportError:            # pragma: no cover - depends on the environment
            _numba = False
    return _numba


def enabled() -> bool:
    """Whether fused loops run: numba importable and BITSWARM_CPU_NUMBA not "0"."""
    return os.environ.get("BITSWARM_CPU_NUMBA", "1") != "0" and bool(_load())


def use(n: int) -> bool:
    """Whether an op on an array of n elements runs its fused loop (n >= MIN_ELEMENTS and
    enabled(); numba is not imported for smaller n)."""
    return n >= MIN_ELEMENTS and enabled()


class Kernel:
    """A Python loop and its numba compilation (made on first use). `fast` is the compiled
    function when enabled(), else None (the caller then runs its NumPy passes). A loop may call
    other Kernels by their global names (not itself: numba's cache cannot hold recursion)."""

    def __init__(self, fn: Callable) -> None:
        self.py = fn
        self._jit = None

    def for_size(self, n: int) -> Callable | None:
        """`fast` for an op over n elements when use(n), else None."""
        return self.fast if n >= MIN_ELEMENTS else None

    @property
    def fast(self) -> Callable | None:
        if not enabled():
            return None
        jit = self._jit
        if jit is None:
            with _compile_lock:   # batch parts' threads ask at once (threads.run_parts)
                if self._jit is None:
                    self._jit = self._compile()
                jit = self._jit
        return jit

    def _compile(self):
        """The numba dispatcher, published only once its callees' names point at their own
        dispatchers (numba types the globals at the first call: a thread that called it
        before would find a Kernel there, a typing error)."""
        fn = self.py
        g = dict(fn.__globals__)
        for name in fn.__code__.co_names:          # callees: their compiled forms
            k = g.get(name)
            if isinstance(k, Kernel):
                g[name] = k.fast
        return _numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")(
            types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__))


def kernel(fn: Callable) -> Kernel:
    """Decorator: fn (written for numba's nopython mode) as a Kernel."""
    return Kernel(fn)


@kernel
def _leaf_sum(a, lo, n):
    """numpy's pairwise_sum for n <= 128: below 8 values one by one, else eight accumulators
    (a[lo+k::8]), combined ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the rest one by one."""
    if n < 8:
        res = a.dtype.type(0.0)
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    m = n - n % 8
    while i < m:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@kernel
def pairwise_sum(a, lo, n, st, vals):
    """sum(a[lo:lo+n]) of a float32 1-D array in NumPy's order for a float32 add-reduction
    along a contiguous axis (numpy's pairwise_sum: up to 128 values `_leaf_sum`, beyond that
    the sum of the two halves, split at a multiple of 8), so a loop reproduces
    np.sum(..., axis=-1) bit for bit (tests/kernels/test_cpu_ops.py checks lengths to 8192).
    The recursion runs on an explicit stack (numba's cache cannot hold recursive loops), the
    caller's scratch st int64 (3, 64) and vals a.dtype (64,), 64 levels covering any length
    (allocating them per row cost more than the sum)."""
    if n <= 128:
        return _leaf_sum(a, lo, n)
    st_lo, st_n, st_stage = st[0], st[1], st[2]
    st_lo[0], st_n[0], st_stage[0] = lo, n, 0
    sp, vp = 1, 0
    while sp > 0:
        t = sp - 1
        m = st_n[t]
        if m <= 128:
            vals[vp] = _leaf_sum(a, st_lo[t], m)
            vp += 1
            sp -= 1
            continue
        n2 = m // 2
        n2 -= n2 % 8
        if st_stage[t] == 0:                 # left half first
            st_stage[t] = 1
            st_lo[sp], st_n[sp], st_stage[sp] = st_lo[t], n2, 0
            sp += 1
        elif st_stage[t] == 1:               # then the right half
            st_stage[t] = 2
            st_lo[sp], st_n[sp], st_stage[sp] = st_lo[t] + n2, m - n2, 0
            sp += 1
        else:                                # both done: left + right
            vp -= 1
            vals[vp - 1] = vals[vp - 1] + vals[vp]
            sp -= 1
    return vals[0]
