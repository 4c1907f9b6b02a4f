"""GPU launchers of the loss family for GpuBackend: cross_entropy.wgsl, and the lm_head fused
with it (per vocab chunk: matmul.wgsl logits (main or main8 by shape: matmul/gpu.py matmul_tile), lm_head.wgsl `stats`, matmul.wgsl gradient rows;
then `finish`); semantics: reference.py beside this file. A HostTable streams through
host_table.py with the same kernels on the same values in the same order."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor, grid_for
from bitswarm.kernels.ops.check import check
from bitswarm.kernels.ops.lm_head.host_table import HostTable, table_chunks, table_rows
from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK
from bitswarm.kernels.ops.matmul.gpu import launch_tiled, matmul_tile, widen

F32 = np.float32


def cross_entropy(be, logits: Tensor, targets: Tensor, grad_scale: float) -> tuple[Tensor, Tensor]:
    """logits f32 (N, V), targets int32 (N,) (< 0: padding) -> loss (N,), dlogits (N, V).
    Raises IndexError for a target >= V (known from the upload)."""
    N, V = logits.shape
    check(targets.dtype == "int32" and targets.shape == (N,),
           f"cross_entropy: targets must be int32 ({N},), got {targets}")
    if targets.host_max is not None and targets.host_max >= V:
        raise IndexError(f"target {targets.host_max} out of range for vocab size {V}")
    loss, d = be._new((N,)), be._new((N, V))
    be._launch("cross_entropy", [logits, targets, loss, d], grid_for(N),
               dict(rows=N, v=V, grad_scale=F32(grad_scale)))
    return loss, d


def lm_head_cross_entropy(be, x: Tensor, w: Tensor | HostTable, targets: Tensor,
                          grad_scale: float, chunk: int = LM_CHUNK,
                          grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """reference.lm_head_cross_entropy. A HostTable streams through one chunk buffer (rows
    uploaded before each chunk's two matmuls): the same kernels on the same values in the same
    order as a GPU-resident table, so the results are identical; `finish` then reads W[target]
    from the N target rows, gathered on the host."""
    host = isinstance(w, HostTable)
    N, D = x.shape
    V = w.shape[0]
    check(chunk >= 1 and x.dtype == "float32" and w.shape == (V, D)
           and w.dtype in ("float32", "float16"),
           f"lm_head_cross_entropy: x {x} w {w} chunk {chunk}")
    check(targets.dtype == "int32" and targets.shape == (N,)
           and (targets.host is not None or not host),
           f"lm_head_cross_entropy: targets must be int32 ({N},) (from GpuBackend.tensor "
           f"for a host table), got {targets}")
    if targets.host_max is not None and targets.host_max >= V:
        raise IndexError(f"target {targets.host_max} out of range for vocab size {V}")
    f16 = int(w.dtype == "float16")
    # largest chunk whose logits (and, streamed, whose table rows) fit one storage binding
    vc = max(1, min(chunk, V, be.ctx.max_binding // (4 * max(N, 1))))
    if host:
        vc = min(vc, table_rows(be, w, N))
    logits = be._new((N, vc))
    st = be._new((N, 4))
    acc = be._new((N, D)) if grad else be._dummy()
    loss = be._new((N,))
    # The logits on matmul_tile's choice (main8 at 16 x 128 tokens); from an f16 table main8
    # reads each chunk widened to f32 once (`be.lm_head_widen`: exact, so the same bits; one
    # (vc, D) f32 buffer more: 80 MiB at 2B-4T). The gradient rows stay on main (64 x 64:
    # measured faster at every shape; matmul/gpu.py MATMUL_T128_MIN) unless a tile is forced.
    # H200, 2B-4T 16 x 128: the op 181.8 -> 157.4 ms, the step +1-3% (docs/benchmarks.md,
    # "The lm_head on 128 x 128 tiles").
    wide = (be._new((vc, D)) if f16 and be.lm_head_widen and matmul_tile(be, N, vc) == 128
            else None)
    mm = {"TRANS_A": 0, "ACC": 0, "SPLIT": 0, "B_F16": 0 if wide is not None else f16}
    if host:        # (v0, rows, the tensor holding them, their element offset in it)
        chunks = ((v0, n, wc, 0) for v0, n, wc in table_chunks(be, w, vc))
    else:
        chunks = ((v0, min(vc, V - v0), w, v0 * D) for v0 in range(0, V, vc))
    for v0, n, src, off in chunks:
        wc = src
        if wide is not None:
            wc, off = widen(be, src, off, n, D, out=wide), 0
        launch_tiled(be, [x, wc, logits], N, n,
                     dict(m=N, n=n, k=D, alpha=1.0, kchunk=D, b_off=off), {**mm, "TRANS_B": 1})
        be._launch("lm_head_cross_entropy", [logits, targets, st, acc], grid_for(N),
                   dict(rows=N, vc=n, v0=v0, d=D, first=int(v0 == 0)), name="stats",
                   constants={"GRAD": int(grad)})
        if grad:
            launch_tiled(be, [logits, wc, acc], N, D,
                         dict(m=N, n=D, k=n, alpha=1.0, kchunk=n, b_off=off),
                         {**mm, "TRANS_B": 0, "ACC": 1}, tile=64)
    sizes = {logits.buffer.size} | ({wide.buffer.size} if wide is not None else set())
    if host:        # row i's target row is row i of `rows` (padding keeps its -1)
        sizes.add(src.buffer.size)
        t = targets.host
        valid = t >= 0
        table = be.ctx.upload(w.data[np.where(valid, t, 0)], w.dtype)
        targets = be.tensor(np.where(valid, np.arange(N), -1).astype(np.int32))
        V = max(N, 1)
    else:
        table = w
    be._launch("lm_head_cross_entropy", [st, targets, table, acc, loss], grid_for(N),
               dict(rows=N, d=D, v=V, grad_scale=F32(grad_scale)), name="finish",
               constants={"GRAD": int(grad), "F16": f16})
    del logits, wc, src, chunks, wide
    be.ctx.release(sizes)         # chunk buffers are this op's alone: don't pool them
    return loss, (acc if grad else None)
