"""Host-resident embedding / lm_head tables (`GpuBackend(table_residency="host")`): the table
stays in host memory and streams through the GPU in row chunks per use.

A 128256 x 2560 table then costs 8192 x 2560 x 2 B = 40 MiB of GPU memory instead of 626 MiB,
for V x D x 2 B of host-to-GPU upload per call (QVAC Fabric keeps BitNet embeddings in host
memory too: ~0.6 GiB of its 2B-4T footprint). Used by the embedding gather, the lm_head of
`forward` / generation (`matmul_host_table`) and lm_head_cross_entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitswarm.kernels.device import Tensor, tensor_nbytes
from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK


@dataclass
class HostTable:
    """An embedding / lm_head table (V, D) in host memory.

    `data` is float16 (or float32 when a value is beyond float16's range), the same values the
    GPU-resident table holds. The embedding gather runs on the host (N rows uploaded per step);
    the lm_head streams the table through one chunk buffer on the GPU."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def dtype(self) -> str:
        return "float16" if self.data.dtype == np.float16 else "float32"


def table_chunks(be, w: HostTable, rows: int):
    """Yield (v0, n, chunk) with table rows v0..v0+n copied into the first n rows of one reused
    (rows, D) GPU buffer, in encoder order (commands already encoded for the previous chunk read
    it before it is overwritten). Rows travel through a two-slot UploadRing, so the host writes
    chunk i+1 while the GPU works on chunk i. (A persistent mappable copy of the whole table
    would skip the host copy, but on an H200 the driver put it in device memory:
    benchmarks/results/driver_memory-h200-2b4t-host-mapped.json.)"""
    V, D = w.shape
    buf = be.ctx.alloc((rows, D), w.dtype)
    with be.ctx.upload_ring(tensor_nbytes((rows, D), w.dtype)) as ring:
        for v0 in range(0, V, rows):
            n = min(rows, V - v0)
            ring.copy(w.data[v0:v0 + n], buf)
            yield v0, n, buf


def table_rows(be, w: HostTable, n: int) -> int:
    """Rows per streamed chunk: LM_CHUNK, or fewer where a chunk must fit one binding (n: the
    rows of the logits each chunk produces)."""
    per_row = tensor_nbytes((1, w.shape[1]), w.dtype)
    return max(1, min(LM_CHUNK, w.shape[0], be.ctx.max_binding // max(per_row, 4 * n)))


def matmul_host_table(be, a: Tensor, w: HostTable, *, trans_a: bool, trans_b: bool,
                      alpha: float, acc: Tensor | None) -> Tensor:
    """a (M, D) @ w^T (D, V) -> (M, V) for a host-resident table (the lm_head logits of
    `forward` and of generation): the table streams through the GPU in row chunks, each chunk's
    logits are read back and the whole (M, V) is uploaded once. Other forms raise ValueError
    (training uses lm_head_cross_entropy, which never needs them)."""
    if not (trans_b and not trans_a and acc is None and a.shape[1] == w.shape[1]):
        raise ValueError(f"matmul with a host-resident table supports only a (M, D) @ table^T, "
                         f"got a {a.shape} table {w.shape} trans_a={trans_a} trans_b={trans_b} "
                         f"acc={acc is not None}")
    parts = []
    for _, n, chunk in table_chunks(be, w, table_rows(be, w, a.shape[0])):
        parts.append(be.numpy(be.matmul(a, chunk, trans_b=True, alpha=alpha))[:, :n])
    return be.ctx.upload(np.concatenate(parts, axis=1), "float32")
