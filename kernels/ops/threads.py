"""Worker threads for CpuBackend's CPU paths (kernels/ops/<family>/cpu.py): each op splits its
rows (tokens, or sequences for attention) over the CPU's cores and runs every piece, GEMMs
included, on its own thread with BLAS held to one thread (`own_blas`).

Why not BLAS's own threads: NumPy releases the GIL inside matmul and ufunc loops, so Python
threads run pieces in parallel, and one piece per core syncs once per op, where a threaded BLAS
syncs inside every GEMM. Measured on 2 shared cores: a (1024 x 384) @ (384 x 8) LoRA matmul
took 0.1 ms with BLAS on one thread and 12-15 ms with OpenBLAS's two threads while another
process kept the second core busy; attention's 96 per-head (128 x 64) @ (64 x 128) products at
125M shape took 10-14 ms with OpenBLAS's two threads, 2.4 ms as two halves on two threads.
Elementwise work gains too: one thread walks its rows through all of an op's passes.

A training step goes one level up (`run_parts`): its batch splits into sequence ranges, one per
core, each running the whole forward and backward on its own thread (kernels/model.py
loss_and_grads sums their gradients). An op's split syncs twice (submit, wait) at ~70-100 us
each on 2 cores of a VM, and a step has ~500 of them; parts sync once. Default shape, batch 8 x
128, 2 cores: 459 -> 390 ms a step.

`own_blas` uses threadpoolctl (pure Python; OpenBLAS, MKL, BLIS and Accelerate on every OS);
without it BLAS keeps its own threading and the split still runs.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
T_ = TypeVar("T_")
_local = threading.local()   # .share: inside a batch part, its heavy ops' threads (run_parts)
_blas_owned = False


def workers() -> int:
    """Threads the CPU paths use: the CPUs this process may run on (BITSWARM_CPU_THREADS
    overrides it; 1 runs everything on the calling thread)."""
    env = os.environ.get("BITSWARM_CPU_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                          # macOS, Windows
        return max(1, os.cpu_count() or 1)


def own_blas() -> bool:
    """Hold BLAS to one thread for this process (once; CpuBackend calls it), so that the
    split below is the only parallelism. Returns whether a BLAS could be limited."""
    global _blas_owned
    with _lock:
        if not _blas_owned:
            try:
                from threadpoolctl import threadpool_limits
                threadpool_limits(limits=1, user_api="blas")
                _blas_owned = True
            except ImportError:
                return False
    return True


# Elementwise ops (rmsnorm, quantize_act, add, relu2, rope) split only when each piece gets at
# least this many values (BITSWARM_CPU_EW_MIN; default 0: 64 rows, as before). On 2 shared cores
# a NumPy add of (1024, 384) took 0.147 ms on two threads and 0.115 on one (memory-bound): an
# A/B knob until the fused loops' split is measured in the step.
EW_MIN = int(os.environ.get("BITSWARM_CPU_EW_MIN", 0))


def ew_rows(cols: int, floor: int = 64) -> int:
    """min_rows for run_split of an elementwise op over rows of `cols` values."""
    return max(floor, EW_MIN // max(1, cols))


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering 0..n in at most `parts` near-equal non-empty pieces."""
    parts = max(1, min(parts, n))
    b = [n * i // parts for i in range(parts + 1)]
    return [(b[i], b[i + 1]) for i in range(parts) if b[i] < b[i + 1]]


def _share(heavy: bool) -> int:
    """Threads a split may use: workers(); inside a batch part (run_parts) 1, or for a heavy op
    the part's share of the workers (workers() // parts)."""
    share = getattr(_local, "share", 0)
    if not share:
        return workers()
    return share if heavy else 1


def _concurrently(fns: list[Callable[[], T_]]) -> list[T_]:
    """fns on the one pool (workers() - 1 threads; batch parts and op pieces both run there),
    the calling thread running the last; -> their results in order, once all have ended. The
    first exception raised propagates."""
    global _pool
    if len(fns) == 1:
        return [fns[0]()]
    n = max(1, workers() - 1)
    with _lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(n, thread_name_prefix="bitswarm-cpu")
        pool = _pool
    futs = [pool.submit(fn) for fn in fns[:-1]]
    try:
        last = fns[-1]()
    finally:
        results = [f.result() for f in futs]
    return results + [last]


def run_split(fn: Callable[[int, int], None], n: int, min_rows: int = 64, *,
              heavy: bool = False) -> None:
    """fn(lo, hi) over pieces of 0..n (one per worker, at least min_rows rows each),
    concurrently; the calling thread runs the last piece. fn writes its own outputs (disjoint
    rows); the first exception raised by a piece propagates. Inside a batch part (run_parts)
    fn runs on the part's own thread, unsplit, unless `heavy` (ops of tens of ms a call, where
    two syncs cost < 1%: the lm_head; splitting the GEMMs and attention too lost at the default
    shape): then over the part's share of the workers, when there are more workers than parts."""
    pieces = split(n, min(_share(heavy), max(1, n // max(1, min_rows))))
    _concurrently([partial(fn, lo, hi) for lo, hi in pieces])


# Rows per batch part at least (batch_parts; BITSWARM_CPU_PART_ROWS, an A/B knob: a value above
# the batch's rows turns parts off): below, an op's Python and dispatch cost (~10-20 us an op,
# ~900 ops a step) outweighs what a thread of its own gains.
PART_MIN_ROWS = int(os.environ.get("BITSWARM_CPU_PART_ROWS", 256))
# Parts at most (BITSWARM_CPU_PARTS). Each part runs its Python between ops under the one GIL,
# and a part's ops do not split further: on a 16-core H200 host, default model at 8 x 128,
# tok/s by cores (parts of 256 rows / no parts): 2: 2,211 / 1,931; 4: 3,356 / 2,631; and 4 parts
# that each split their ops over 2 or 4 threads lost to no parts at 8 and 16 cores (1,733 /
# 1,775; 1,186 / 1,486). docs/benchmarks.md, session 8.
MAX_PARTS = int(os.environ.get("BITSWARM_CPU_PARTS", 4))
# Whether a part's heavy ops split over its share of the workers (BITSWARM_CPU_PART_NEST=0: no).
PART_NEST = os.environ.get("BITSWARM_CPU_PART_NEST", "1") != "0"


def batch_parts(B: int, T: int) -> list[tuple[int, int]]:
    """[b0, b1) sequence ranges of a batch (B, T) for run_parts: one per worker, at most
    MAX_PARTS, while each part keeps >= PART_MIN_ROWS token rows; [(0, B)] (no split) on one
    worker or a small batch."""
    p = min(workers(), MAX_PARTS, B, max(1, (B * T) // PART_MIN_ROWS))
    return split(B, p)


def run_parts(fns: list[Callable[[], T_]]) -> list[T_]:
    """Run fns concurrently, each on its own thread (the calling thread runs the last), their
    ops unsplit except heavy ones (run_split: light ops split inside parts measured slower,
    MAX_PARTS), which get workers() // len(fns) threads; -> their results in order.

    Why: an op's split over the cores syncs twice (submit, wait), ~70-100 us on 2 cores of a
    VM (a lock ping-pong between two threads took 70 us: waking a sleeping core), and a LoRA
    training step has ~500 of them. Whole batch parts (the model's loss_and_grads over a range
    of sequences) sync once per step; their ops release the GIL as before. The first
    exception raised by a part propagates."""
    if len(fns) == 1:
        return [fns[0]()]
    share = max(1, workers() // len(fns)) if PART_NEST else 1

    def part(fn):
        prev = getattr(_local, "share", 0)
        _local.share = share
        try:
            return fn()
        finally:
            _local.share = prev
    return _concurrently([partial(part, fn) for fn in fns])
