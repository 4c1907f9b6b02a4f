"""BufferPool: storage buffers by byte size, reused lowest-serial first, with byte accounting.

The allocator half of the device layer (tinygrad keeps buffer caching in its allocator, not in
the device): `Context` asks it for a buffer of a size class and gives collected Tensors' buffers
back through `freed`; it never encodes or submits anything.

Free buffers are kept per byte size as heaps of (creation serial, buffer): `take` hands out the
lowest-serial free buffer, so the same sequence of allocations and frees gets the same buffers
every training step whatever order they were freed in, and the Context's bind-group cache (keyed
by buffers) hits from the second step on instead of creating ~half of the step's bind groups
anew (create_bind_group was 2/3 of host time per dispatch).
"""
from __future__ import annotations

import heapq
import threading
from collections import defaultdict
from typing import Callable, Iterable


class BufferPool:
    """create(size) makes a new buffer (a wgpu buffer: `.size`, `.destroy()`); lock guards the
    pool (the Context's lock, so pool and encoder change together).

    `allocated_bytes`: bytes of buffers this pool (and `add_external`) holds, live tensors plus
    the free pool: what the driver sees. `peak_allocated_bytes`: its high-water mark since
    creation or the last `reset_peak()`. `n_buffers_created`: buffers created so far."""

    def __init__(self, create: Callable[[int], object], lock: threading.RLock | None = None):
        self._create = create
        self.lock = lock or threading.RLock()
        self._free: dict[int, list] = defaultdict(list)
        self._serial: dict[int, int] = {}           # id(buffer) -> creation serial
        self.freed: list = []                       # buffers of collected Tensors (lock-free)
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0
        self.n_buffers_created = 0

    def _drain_freed(self) -> None:
        while self.freed:
            buf = self.freed.pop()
            heapq.heappush(self._free[buf.size], (self._serial[id(buf)], buf))

    def take(self, size: int):
        """A buffer of exactly `size` bytes: the lowest-serial free one, else a new one."""
        with self.lock:
            self._drain_freed()
            free = self._free.get(size)
            buf = heapq.heappop(free)[1] if free else None
        if buf is None:
            buf = self._create(size)
            self.n_buffers_created += 1
            with self.lock:
                self._serial[id(buf)] = self.n_buffers_created
                self.add_external(size)
        return buf

    def add_external(self, nbytes: int) -> None:
        """Count nbytes held outside the pool (an UploadRing's slots); negative to uncount."""
        with self.lock:
            self.allocated_bytes += nbytes
            self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)

    def free_bytes(self) -> int:
        """Bytes of free (pooled) buffers."""
        with self.lock:
            self._drain_freed()
            return sum(k * len(v) for k, v in self._free.items())

    def release(self, sizes: Iterable[int] | None, before_destroy: Callable[[], None]
                ) -> tuple[int, set[int]]:
        """Destroy free buffers whose byte size is in `sizes` (all when None): calls
        before_destroy() first (the Context flushes) when there is any; returns (bytes freed,
        ids of the destroyed buffers)."""
        with self.lock:
            self._drain_freed()
            keys = [k for k in self._free if sizes is None or k in sizes]
            if not any(self._free[k] for k in keys):
                return 0, set()
            before_destroy()
            gone, freed = set(), 0
            for k in keys:
                for _, b in self._free.pop(k):
                    gone.add(id(b))
                    del self._serial[id(b)]
                    freed += b.size
                    b.destroy()
            self.allocated_bytes -= freed
            return freed, gone

    def reset_peak(self) -> None:
        with self.lock:
            self.peak_allocated_bytes = self.allocated_bytes
