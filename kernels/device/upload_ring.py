"""UploadRing: stream host data into GPU tensors through a few mappable buffers.

Used for host-resident embedding / lm_head tables (kernels/ops/lm_head/host_table.py): the host
writes slot i while the GPU still copies from the others, and mapping slot i waits only for the
copy that last read it, so the footprint stays at `slots` buffers whatever the table size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .tensor import Tensor, round_size

if TYPE_CHECKING:
    from .context import Context


class UploadRing:
    """Host-writable upload buffers (MAP_WRITE | COPY_SRC) used in turn, in encoder order.

    Counted in the Context's allocated_bytes: with a resizable BAR (measured on an H200) the
    driver places mappable buffers in device memory. Close it (or use it as a context manager)
    to destroy the slots."""

    def __init__(self, ctx: "Context", nbytes: int, slots: int = 2):
        U, self.ctx = ctx.wgpu.BufferUsage, ctx
        self.size = round_size(nbytes)
        self.bufs = [ctx.device.create_buffer(size=self.size, usage=U.MAP_WRITE | U.COPY_SRC,
                                              mapped_at_creation=True) for _ in range(slots)]
        self.fresh = [True] * slots          # mapped at creation: no wait the first time
        self.i = 0
        ctx.pool.add_external(self.size * slots)

    def copy(self, data: np.ndarray, dst: Tensor) -> None:
        """dst's first bytes = data's bytes (at most the slot size), in encoder order. Raises
        ValueError when data is larger than a slot or than dst."""
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if raw.nbytes > self.size or raw.nbytes > dst.nbytes:
            raise ValueError(f"upload of {raw.nbytes} bytes into a {self.size}-byte slot / "
                             f"{dst.nbytes}-byte tensor")
        n4 = (raw.nbytes + 3) // 4 * 4
        i, self.i = self.i, (self.i + 1) % len(self.bufs)
        buf = self.bufs[i]
        if not self.fresh[i]:
            self.ctx.flush()                 # the copy that last read this slot is submitted,
            buf.map_sync(self.ctx.wgpu.MapMode.WRITE)   # then mapping waits for it to finish
        self.fresh[i] = False
        buf.write_mapped(raw, 0)
        buf.unmap()
        self.ctx.encode_copy(buf, dst.buffer, n4, keepalive=True)

    def close(self) -> None:
        if self.bufs:
            self.ctx.flush()                 # submitted work keeps destroyed buffers alive
            for b in self.bufs:
                b.destroy()
            self.ctx.pool.add_external(-self.size * len(self.bufs))
            self.bufs = []

    def __enter__(self) -> "UploadRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
