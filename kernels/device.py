"""The wgpu device layer: a compute API of a few nouns (after gpu.cpp).

    Context  adapter + device + queue, the buffer pool, the open command encoder.
    Tensor   a storage buffer with a shape and a dtype (float32, int32, or int8 packed 4 per u32).
    Kernel   one WGSL entry point compiled once (per override-constant set) and cached.
    dispatch record one kernel launch into the open encoder.

Ops of a step are ENCODED into one command encoder and submitted together; `Context.flush()`
submits, and `Context.read(t)` flushes and reads back (queue.read_buffer waits for the GPU:
wgpu-py 0.32's `on_submitted_work_done_sync()` is broken, see shared/FACTS.md).

Ordering rules that keep this correct:
- Uniform parameters live in persistent 256-byte slots of one uniform buffer, one slot per
  distinct parameter content (a training step repeats the same shapes, so slots are reused).
  A new slot is written with queue.write_buffer at once: it is unused by earlier work, and the
  queue orders the write before the next submit. When the slots run out, the open encoder is
  submitted first and the table starts over (queue order protects the earlier submits).
- Bind groups are cached by (pipeline, buffers, parameter slot): on a hit the dispatch skips
  create_bind_group, the largest host cost per dispatch (wgpu-py builds its structs in Python).
  The cache holds references to its buffers, so a buffer id cannot be reused while cached;
  `trim()` destroys pooled buffers and so clears the cache.
- Consecutive dispatches share one compute pass (WebGPU gives each dispatch its own usage scope,
  so wgpu still inserts the barriers between them); copies and clears end the pass.
- Every FLUSH_EVERY dispatches the encoder is submitted, so the GPU starts on a step's first
  kernels while the host is still encoding the rest.
- Uploads while an encoder is open go through a staging buffer and an in-encoder copy, so a
  pooled buffer that earlier commands of the same encoder still use is never overwritten early.
- Buffers of garbage-collected Tensors go back to a pool keyed by byte size and are reused by
  later allocations (GPU work within a queue executes in order, wgpu inserts the barriers); the
  lowest-serial free buffer goes first, so a training step gets the same buffers every time and
  the bind-group cache hits.
- UploadRing streams host data (a host-resident table) through a few mappable buffers in
  encoder order; mapping a slot waits only for the copy that last read it.

Device errors (WGSL compile, pipeline, bind group, dispatch validation) are re-raised as
`DeviceError` naming the shader and entry point.
"""
from __future__ import annotations

import heapq
import logging
import struct
import threading
from collections import defaultdict
from typing import Sequence

import numpy as np

log = logging.getLogger("bitswarm.kernels.device")

WG_MAX = 65535            # max workgroups per grid dimension (WebGPU default limit)
_UNIFORM_SLOT = 256       # >= minUniformBufferOffsetAlignment everywhere
_PARAM_SLOTS = 4096       # distinct uniform parameter blocks before the table starts over
_BG_CACHE_MAX = 16384     # cached bind groups before the cache is cleared
FLUSH_EVERY = 128         # dispatches per submit (GPU/host overlap within a step)

DTYPES = ("float32", "int32", "int8", "float16")


class DeviceError(RuntimeError):
    """A wgpu validation/compile error, with the shader and entry point that caused it."""


def _round_size(nbytes: int) -> int:
    return max(16, (nbytes + 15) // 16 * 16)


class Tensor:
    """A GPU buffer with a shape and a dtype.

    dtype "float32"/"int32": 4 bytes per element, row-major. dtype "int8": 2-D (rows, C), each row
    packed 4 values per u32 (little-endian bytes, as WGSL pack4xI8), row stride ceil(C/4) words,
    padding bytes zero. dtype "float16": IEEE binary16, row-major and flat, 2 per u32 (element i
    is half i&1 of word i>>1, as WGSL unpack2x16float reads it; no shader-f16 feature needed). The buffer returns to the Context's pool when the Tensor is collected.
    `host_min`/`host_max` record the value range of integer tensors uploaded from the host (used
    to raise IndexError for bad token ids without a readback); None when unknown. `host` keeps
    the host copy of small integer tensors (token ids, targets), so ops on a host-resident table
    can gather rows on the host; None when not kept.
    """

    __slots__ = ("ctx", "buffer", "shape", "dtype", "nbytes", "host_min", "host_max", "host",
                 "__weakref__")

    def __init__(self, ctx: "Context", buffer, shape: tuple[int, ...], dtype: str, nbytes: int):
        self.ctx, self.buffer, self.shape, self.dtype, self.nbytes = ctx, buffer, shape, dtype, nbytes
        self.host_min = self.host_max = self.host = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __del__(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None and self.buffer is not None:
            ctx._freed.append(self.buffer)   # list.append is atomic under the GIL; no lock here
            self.buffer = None

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"


def tensor_nbytes(shape: Sequence[int], dtype: str) -> int:
    if dtype == "int8":
        if len(shape) != 2:
            raise ValueError(f"int8 tensors are 2-D (rows, C), got shape {tuple(shape)}")
        return int(shape[0]) * ((int(shape[1]) + 3) // 4) * 4
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    n = int(np.prod(shape, dtype=np.int64))
    return (n + 1) // 2 * 4 if dtype == "float16" else n * 4


def pack_int8_rows(a: np.ndarray) -> np.ndarray:
    """int8 (rows, C) -> uint32 (rows, ceil(C/4)) little-endian, zero padded."""
    rows, C = a.shape
    C4 = (C + 3) // 4
    padded = np.zeros((rows, C4 * 4), np.int8)
    padded[:, :C] = a
    return padded.view(np.uint32).reshape(rows, C4)


def unpack_int8_rows(words: np.ndarray, rows: int, C: int) -> np.ndarray:
    """Inverse of pack_int8_rows."""
    C4 = (C + 3) // 4
    return np.ascontiguousarray(words[: rows * C4]).view(np.int8).reshape(rows, C4 * 4)[:, :C].copy()


class Kernel:
    """A compiled compute pipeline: one WGSL entry point with fixed override constants."""

    def __init__(self, ctx: "Context", name: str, source: str, entry: str,
                 constants: dict[str, float] | None):
        import wgpu
        self.name, self.entry = name, entry
        try:
            module = ctx.device.create_shader_module(label=name, code=source)
            compute = {"module": module, "entry_point": entry}
            if constants:
                compute["constants"] = dict(constants)
            self.pipeline = ctx.device.create_compute_pipeline(label=f"{name}:{entry}",
                                                               layout="auto", compute=compute)
            self.layout = self.pipeline.get_bind_group_layout(0)
        except wgpu.GPUError as e:
            raise DeviceError(f"shader {name}.wgsl entry {entry!r} failed to build: {e}") from e


class Context:
    """Adapter, device and queue; pool of buffers; the open command encoder.

    Requests features shader-f16 and subgroup only when the adapter has them, and the adapter's
    own maximum storage-binding and buffer sizes (128 MiB per binding on lavapipe, 2047 MiB on
    an H200). Raises RuntimeError when wgpu has no adapter.
    """

    def __init__(self, power_preference: str = "high-performance"):
        import wgpu
        self.wgpu = wgpu
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as e:  # no loader / driver: wgpu raises its own error types
            raise RuntimeError(f"wgpu found no adapter: {e}") from e
        if adapter is None:
            raise RuntimeError("wgpu found no adapter (no Vulkan/Metal/DX12 driver)")
        self.adapter = adapter
        self.info = dict(adapter.info)
        features = [f for f in ("shader-f16", "subgroup") if f in adapter.features]
        lim = adapter.limits
        wanted = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                      "max-compute-workgroup-storage-size",
                                      "max-storage-buffers-per-shader-stage") if k in lim}
        self.device = adapter.request_device_sync(required_features=features, required_limits=wanted)
        self.features = set(features)
        self.limits = dict(self.device.limits)
        self.max_binding = int(self.limits["max-storage-buffer-binding-size"])
        self.queue = self.device.queue
        U = wgpu.BufferUsage
        self._storage_usage = U.STORAGE | U.COPY_SRC | U.COPY_DST
        # Free buffers per byte size, as heaps of (serial, buffer): `alloc` hands out the
        # lowest-serial free buffer, so the same sequence of allocations and frees gets the same
        # buffers every training step whatever order they were freed in, and the bind-group
        # cache (keyed by buffers) hits from the second step on instead of creating ~half of
        # the step's bind groups anew (create_bind_group was 2/3 of host time per dispatch).
        self._pool: dict[int, list] = defaultdict(list)
        self._serial: dict[int, int] = {}           # id(buffer) -> creation serial
        self._freed: list = []
        self._kernels: dict[tuple, Kernel] = {}
        self._lock = threading.RLock()
        self._encoder = None
        self._keepalive: list = []          # staging buffers of the open encoder
        self._param_buf = self.device.create_buffer(size=_UNIFORM_SLOT * _PARAM_SLOTS,
                                                    usage=U.UNIFORM | U.COPY_DST)
        self._param_slots: dict[bytes, int] = {}     # params bytes -> byte offset in _param_buf
        self._bg_cache: dict[tuple, object] = {}
        self._pass = None                           # the open compute pass of _encoder
        self._since_flush = 0
        self.bind_group_hits = 0
        self.n_dispatches = 0
        self.n_submits = 0
        self.n_buffers_created = 0
        # Bytes of storage buffers this Context holds (live tensors + the free pool); the
        # pool keeps freed buffers, so this is what the driver sees. `peak_allocated_bytes` is
        # its high-water mark since creation or the last `reset_peak()`.
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0

    # ------------------------------------------------------------ buffers
    def _drain_freed(self) -> None:
        while self._freed:
            buf = self._freed.pop()
            heapq.heappush(self._pool[buf.size], (self._serial[id(buf)], buf))

    def alloc(self, shape: Sequence[int], dtype: str = "float32") -> Tensor:
        """An uninitialized tensor (contents undefined: possibly a recycled buffer)."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        nbytes = tensor_nbytes(shape, dtype)
        size = _round_size(nbytes)
        if size > self.max_binding:
            raise ValueError(f"tensor {shape} {dtype} needs {size} bytes, over this device's "
                             f"storage binding limit of {self.max_binding} bytes")
        with self._lock:
            self._drain_freed()
            free = self._pool.get(size)
            buf = heapq.heappop(free)[1] if free else None
        if buf is None:
            buf = self.device.create_buffer(size=size, usage=self._storage_usage)
            self.n_buffers_created += 1
            with self._lock:
                self._serial[id(buf)] = self.n_buffers_created
                self.allocated_bytes += size
                self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return Tensor(self, buf, shape, dtype, nbytes)

    def pool_bytes(self) -> int:
        """Bytes held in the free pool (for tests and memory accounting)."""
        with self._lock:
            self._drain_freed()
            return sum(k * len(v) for k, v in self._pool.items())

    def trim(self) -> None:
        """Release every pooled buffer to the driver."""
        self.release()

    def release(self, sizes=None) -> int:
        """Destroy pooled (free) buffers whose byte size is in `sizes` (all when None) and drop
        the cached bind groups that name them; returns the bytes released. Flushes first: a
        buffer freed by Python may still be named by commands of the open encoder, and a
        destroyed buffer must not reach a submit (submitted work keeps it alive in wgpu)."""
        with self._lock:
            self._drain_freed()
            keys = [k for k in self._pool if sizes is None or k in sizes]
            if not any(self._pool[k] for k in keys):
                return 0
            self.flush()
            gone, freed = set(), 0
            for k in keys:
                for _, b in self._pool.pop(k):
                    gone.add(id(b))
                    del self._serial[id(b)]
                    freed += b.size
                    b.destroy()
            self.allocated_bytes -= freed
            if sizes is None:
                self._bg_cache.clear()
            else:
                self._bg_cache = {k: v for k, v in self._bg_cache.items()
                                  if not any(id(b) in gone for b in v[2])}
            return freed

    def live_bytes(self) -> int:
        """Bytes held by live Tensors (allocated_bytes minus the free pool)."""
        return self.allocated_bytes - self.pool_bytes()

    def reset_peak(self) -> None:
        """Restart the high-water mark of allocated_bytes from its current value."""
        with self._lock:
            self.peak_allocated_bytes = self.allocated_bytes

    def upload(self, a: np.ndarray, dtype: str) -> Tensor:
        """Host array -> new Tensor. dtype int8 packs rows 4 per u32 (a must be 2-D); float16
        rounds to nearest even (values beyond +-65504 become inf)."""
        a = np.asarray(a)
        if dtype == "int8":
            if a.ndim != 2:
                raise ValueError(f"int8 upload needs a 2-D array, got shape {a.shape}")
            data = pack_int8_rows(a.astype(np.int8))
        elif dtype == "float16":
            data = np.ascontiguousarray(a, dtype=np.float16).reshape(-1)
        else:
            data = np.ascontiguousarray(a, dtype=np.float32 if dtype == "float32" else np.int32)
        t = self.alloc(a.shape, dtype)
        self.write(t, data)
        return t

    def write(self, t: Tensor, data: np.ndarray) -> None:
        """Copy host bytes into t (in encoder order when an encoder is open)."""
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if raw.nbytes == 0:
            return
        if raw.nbytes % 4:
            raw = np.concatenate([raw, np.zeros(4 - raw.nbytes % 4, np.uint8)])
        with self._lock:
            if self._encoder is None:
                self.queue.write_buffer(t.buffer, 0, raw)
                return
            staging = self.device.create_buffer_with_data(data=raw,
                                                          usage=self.wgpu.BufferUsage.COPY_SRC)
            self._keepalive.append(staging)
            self._end_pass()
            self._encoder.copy_buffer_to_buffer(staging, 0, t.buffer, 0, raw.nbytes)

    def clear(self, t: Tensor) -> None:
        """Zero t's buffer (in encoder order)."""
        with self._lock:
            self._end_pass()
            self._enc().clear_buffer(t.buffer, 0, t.buffer.size)

    def copy(self, src: Tensor, dst: Tensor) -> None:
        """dst[:] = src (same byte size), in encoder order."""
        if src.nbytes != dst.nbytes:
            raise ValueError(f"copy size mismatch: {src.shape} {src.dtype} -> {dst.shape} {dst.dtype}")
        if src.nbytes:
            with self._lock:
                self._end_pass()
                self._enc().copy_buffer_to_buffer(src.buffer, 0, dst.buffer, 0,
                                                  _round_size(src.nbytes))

    def upload_ring(self, nbytes: int, slots: int = 2) -> "UploadRing":
        """`slots` host-writable buffers of nbytes each for streaming host data into tensors
        (UploadRing); counted in allocated_bytes until closed."""
        return UploadRing(self, nbytes, slots)

    def read(self, t: Tensor) -> np.ndarray:
        """Flush pending work and download t (blocks until the GPU is done)."""
        self.flush()
        if t.nbytes == 0:
            raw = b""
        else:
            raw = self.queue.read_buffer(t.buffer, 0, _round_size(t.nbytes))
        if t.dtype == "int8":
            words = np.frombuffer(raw, np.uint32)
            return unpack_int8_rows(words, t.shape[0], t.shape[1])
        dt = {"float32": np.float32, "int32": np.int32, "float16": np.float16}[t.dtype]
        return np.frombuffer(raw, dt)[: t.size].reshape(t.shape).copy()

    # ------------------------------------------------------------ kernels
    def kernel(self, name: str, source_fn, entry: str, constants: dict | None = None) -> Kernel:
        """The cached pipeline for (shader, entry, constants); source_fn() gives the WGSL text."""
        key = (name, entry, tuple(sorted((constants or {}).items())))
        k = self._kernels.get(key)
        if k is None:
            k = self._kernels[key] = Kernel(self, name, source_fn(), entry, constants)
        return k

    def _enc(self):
        if self._encoder is None:
            self._encoder = self.device.create_command_encoder()
        return self._encoder

    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def _param_slot(self, params: bytes) -> int:
        off = self._param_slots.get(params)
        if off is None:
            if len(self._param_slots) >= _PARAM_SLOTS:
                self.flush()                       # submits that use the old slots go first
                self._param_slots.clear()
                self._bg_cache.clear()
            off = len(self._param_slots) * _UNIFORM_SLOT
            self._param_slots[params] = off
            data = params + b"\0" * (-len(params) % 16)
            self.queue.write_buffer(self._param_buf, off, data)
        return off

    def dispatch(self, kernel: Kernel, bindings: Sequence[Tensor | object], params: bytes | None,
                 grid: tuple[int, int, int]) -> None:
        """Record kernel over `grid` workgroups into the open encoder.

        bindings: tensors (or raw wgpu buffers) in the shader's binding order 0..n-1; the
        uniform params (if any) are bound last, at binding n. Raises DeviceError on validation
        errors, ValueError for a grid over the per-dimension limit.
        """
        if any(g > WG_MAX for g in grid):
            raise ValueError(f"{kernel.name}: grid {grid} over {WG_MAX} workgroups per dimension")
        if any(g == 0 for g in grid):
            return
        with self._lock:
            bufs = tuple(b.buffer if isinstance(b, Tensor) else b for b in bindings)
            off = -1
            if params is not None:
                if len(params) > _UNIFORM_SLOT:
                    raise ValueError(f"{kernel.name}: {len(params)} bytes of params > {_UNIFORM_SLOT}")
                off = self._param_slot(bytes(params))
            key = (id(kernel), tuple(id(b) for b in bufs), off)
            try:
                bg = self._bg_cache.get(key)
                if bg is None:
                    entries = [{"binding": i, "resource": {"buffer": buf, "offset": 0,
                                                           "size": buf.size}}
                               for i, buf in enumerate(bufs)]
                    if params is not None:
                        entries.append({"binding": len(bufs), "resource": {
                            "buffer": self._param_buf, "offset": off,
                            "size": _round_size(len(params))}})
                    bg = self.device.create_bind_group(layout=kernel.layout, entries=entries)
                    if len(self._bg_cache) >= _BG_CACHE_MAX:
                        self._bg_cache.clear()
                    self._bg_cache[key] = (bg, kernel, bufs)   # keeps ids from being reused
                else:
                    bg = bg[0]
                    self.bind_group_hits += 1
                if self._pass is None:
                    self._pass = self._enc().begin_compute_pass()
                cp = self._pass
                cp.set_pipeline(kernel.pipeline)
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(*grid)
            except self.wgpu.GPUError as e:
                raise DeviceError(f"dispatch of shader {kernel.name}.wgsl entry {kernel.entry!r} "
                                  f"failed: {e}") from e
            self.n_dispatches += 1
            self._since_flush += 1
            if self._since_flush >= FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        """Submit the open encoder to the queue. Does not wait."""
        with self._lock:
            self._since_flush = 0
            if self._encoder is None:
                return
            try:
                self._end_pass()
                self.queue.submit([self._encoder.finish()])
            except self.wgpu.GPUError as e:
                raise DeviceError(f"submit failed: {e}") from e
            finally:
                self._pass = None
                self._encoder = None
                self._keepalive.clear()
            self.n_submits += 1

    def sync(self) -> None:
        """Flush and wait until the GPU has finished everything submitted (reads back 16 bytes)."""
        self.flush()
        if not hasattr(self, "_sync_buf"):
            self._sync_buf = self.device.create_buffer(size=16, usage=self._storage_usage)
        self.queue.read_buffer(self._sync_buf, 0, 16)


class UploadRing:
    """Host-writable upload buffers (MAP_WRITE | COPY_SRC) used in turn to stream host data into
    GPU tensors in encoder order, with a bounded footprint: the host writes slot i while the
    GPU still copies from the others, and mapping slot i waits only for the copy that last read
    it. Counted in the Context's allocated_bytes: with a resizable BAR (measured on an H200)
    the driver places mappable buffers in device memory. Close it (or use it as a context
    manager) to destroy the slots."""

    def __init__(self, ctx: "Context", nbytes: int, slots: int = 2):
        U, self.ctx = ctx.wgpu.BufferUsage, ctx
        self.size = _round_size(nbytes)
        self.bufs = [ctx.device.create_buffer(size=self.size, usage=U.MAP_WRITE | U.COPY_SRC,
                                              mapped_at_creation=True) for _ in range(slots)]
        self.fresh = [True] * slots          # mapped at creation: no wait the first time
        self.i = 0
        with ctx._lock:
            ctx.allocated_bytes += self.size * slots
            ctx.peak_allocated_bytes = max(ctx.peak_allocated_bytes, ctx.allocated_bytes)

    def copy(self, data: np.ndarray, dst: Tensor) -> None:
        """dst's first bytes = data's bytes (at most the slot size), in encoder order."""
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
        with self.ctx._lock:
            self.ctx._end_pass()
            self.ctx._enc().copy_buffer_to_buffer(buf, 0, dst.buffer, 0, n4)
            self.ctx._keepalive.append(buf)

    def close(self) -> None:
        if self.bufs:
            self.ctx.flush()                 # submitted work keeps destroyed buffers alive
            for b in self.bufs:
                b.destroy()
            with self.ctx._lock:
                self.ctx.allocated_bytes -= self.size * len(self.bufs)
            self.bufs = []

    def __enter__(self) -> "UploadRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pack_params(fmt: str, *values) -> bytes:
    """Uniform params: fmt letters u (u32), i (i32), f (f32), in the WGSL struct's field order."""
    conv = {"u": "I", "i": "i", "f": "f"}
    return struct.pack("<" + "".join(conv[c] for c in fmt), *values)


def grid_for(n_workgroups: int) -> tuple[int, int, int]:
    """Split a 1-D workgroup count over x and y (each <= 65535). Shaders recover the linear
    index as wid.x + wid.y * num_workgroups.x and skip indices >= the real count."""
    if n_workgroups <= WG_MAX:
        return (max(n_workgroups, 0), 1, 1)
    gy = -(-n_workgroups // WG_MAX)
    gx = -(-n_workgroups // gy)
    if gy > WG_MAX:
        raise ValueError(f"{n_workgroups} workgroups is over {WG_MAX}^2")
    return (gx, gy, 1)
