"""NumPy reference of the embedding family: the lookup and its scatter-add gradient.

Semantics the WGSL kernels (embedding.wgsl, embedding_backward.wgsl) must match; CpuBackend runs
them as they are. Floats are precision.F32 (float32); functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Gather rows: ids int32 (N,), table (V, D) -> (N, D). Raises IndexError on ids >= V."""
    return table[ids].astype(prec.F32, copy=True)


def embedding_backward(ids: np.ndarray, dy: np.ndarray, vocab_size: int) -> np.ndarray:
    """Gradient of the embedding table: dE[v] = sum of dy[n] over the positions n with ids[n] == v.

    ids int (N,) in [0, V), dy (N, D) -> dE (V, D); rows of ids never seen are zero. Positions
    are summed in increasing n (what the GPU kernel does, so both agree bit for bit in float32).
    Raises IndexError for an id outside [0, vocab_size).
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise IndexError(f"embedding_backward: ids must be in [0, {vocab_size}), got "
                         f"[{ids.min()}, {ids.max()}]")
    if dy.shape[0] != ids.size:
        raise ValueError(f"embedding_backward: {ids.size} ids but dy has {dy.shape[0]} rows")
    out = np.zeros((vocab_size, dy.shape[1]), dtype=prec.F32)
    np.add.at(out, ids, dy.astype(prec.F32, copy=False))   # unbuffered, in index order
    return out


def token_csr(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of token positions per vocab id (built on the host; ids are known there).

    ids int (N,) -> (row_ptr int32 (V+1,), pos int32 (N,)): the positions holding id v are
    pos[row_ptr[v]:row_ptr[v+1]], in increasing order (a stable sort). The GPU embedding
    backward walks them in that order: deterministic, no atomics.
    """
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise IndexError(f"token_csr: ids must be in [0, {vocab_size})")
    pos = np.argsort(ids, kind="stable").astype(np.int32)
    counts = np.bincount(ids, minlength=vocab_size)
    row_ptr = np.zeros(vocab_size + 1, np.int32)
    np.cumsum(counts, out=row_ptr[1:])
    return row_ptr, pos
