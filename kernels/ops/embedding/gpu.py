"""GPU launchers of the embedding family (embedding.wgsl, embedding_backward.wgsl) for
GpuBackend; semantics: reference.py beside this file. Bound as GpuBackend methods (`be` is the
backend: its Context, allocation and launch)."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor
from bitswarm.kernels.ops.check import check
from bitswarm.kernels.ops.embedding.reference import token_csr
from bitswarm.kernels.ops.lm_head.host_table import HostTable


def embedding(be, ids: Tensor, table: Tensor | HostTable) -> Tensor:
    """ids int32 (N,) (from be.tensor), table (V, D) f32/f16 or a HostTable -> f32 (N, D).
    Raises IndexError for ids outside [-V, V) (known from the upload), ValueError for shapes."""
    check(len(table.shape) == 2, f"embedding table must be (V, D), got {table.shape}")
    check(ids.dtype == "int32" and len(ids.shape) == 1, f"ids must be int32 (N,), got {ids}")
    V, D = table.shape
    if ids.host_max is not None and (ids.host_max >= V or ids.host_min < -V):
        raise IndexError(f"token id out of range for vocab size {V} "
                         f"(ids span {ids.host_min}..{ids.host_max})")
    if isinstance(table, HostTable):
        # The gather is an exact copy (f16 -> f32 widening), as the GPU kernel does.
        check(ids.host is not None, "embedding from a host table needs ids uploaded by "
               "GpuBackend.tensor (host copy kept)")
        return be.ctx.upload(table.data[ids.host].astype(np.float32), "float32")
    check(table.dtype in ("float32", "float16"), f"embedding table dtype {table.dtype}")
    N = ids.shape[0]
    out = be._new((N, D))
    be._launch("embedding", [ids, table, out], be._ew_grid(N * D),
               dict(total=N * D, d=D, v=V), constants={"F16": int(table.dtype == "float16")})
    return out


def embedding_backward(be, ids: np.ndarray, dy: Tensor, vocab_size: int) -> Tensor:
    """Host ids int (N,), dy f32 (N, D) -> dE f32 (V, D); CSR of positions built on the host.
    Raises IndexError for ids outside [0, vocab_size)."""
    ids = np.asarray(ids).reshape(-1)
    if dy.shape[0] != ids.size:
        raise ValueError(f"embedding_backward: {ids.size} ids but dy has {dy.shape[0]} rows")
    row_ptr, pos = token_csr(ids, vocab_size)
    D = dy.shape[1]
    de = be._new((vocab_size, D))
    rp, ps = be.ctx.upload(row_ptr, "int32"), be.ctx.upload(pos, "int32")
    be._launch("embedding_backward", [rp, ps, dy, de], be._ew_grid(vocab_size * D),
               dict(total=vocab_size * D, d=D))
    return de
