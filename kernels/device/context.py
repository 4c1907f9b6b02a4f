"""Context: the wgpu adapter, device and queue, and the open command encoder (after gpu.cpp).

The device layer's nouns (kernels/device/): Context (this module: encoder, dispatch, parameter
slots, bind-group cache), BufferPool (pool.py: buffers by size class, byte accounting), Tensor
(tensor.py), Kernel (one WGSL entry point compiled once per override-constant set, cached here),
ParamLayout (params.py: named uniform parameters), UploadRing (upload_ring.py).

Ops of a step are ENCODED into one command encoder and submitted together; `Context.flush()`
submits, and `Context.read(t)` flushes and reads back (queue.read_buffer waits for the GPU:
wgpu-py 0.32's `on_submitted_work_done_sync()` is broken, a wgpu-py 0.32 quirk).

Ordering rules that keep this correct:
- Uniform parameters live in persistent 256-byte slots of one uniform buffer, one slot per
  distinct parameter content (a training step repeats the same shapes, so slots are reused).
  A new slot is written with queue.write_buffer at once: it is unused by earlier work, and the
  queue orders the write before the next submit. When the slots run out, the open encoder is
  submitted first and the table starts over (queue order protects the earlier submits).
- Bind groups are cached by (pipeline, buffers, parameter slot): on a hit the dispatch skips
  create_bind_group, the largest host cost per dispatch (wgpu-py builds its structs in Python).
  The cache holds references to its buffers, so a buffer id cannot be reused while cached;
  `release()` destroys pooled buffers and drops the cached bind groups naming them.
- Consecutive dispatches share one compute pass (WebGPU gives each dispatch its own usage scope,
  so wgpu still inserts the barriers between them); copies and clears end the pass.
- Every FLUSH_EVERY dispatches the encoder is submitted, so the GPU starts on a step's first
  kernels while the host is still encoding the rest.
- Uploads while an encoder is open go through a staging buffer and an in-encoder copy, so a
  pooled buffer that earlier commands of the same encoder still use is never overwritten early.
- Buffers of garbage-collected Tensors go back to the BufferPool and are reused by later
  allocations of the same size (GPU work within a queue executes in order, wgpu inserts the
  barriers).

Device errors (WGSL compile, pipeline, bind group, dispatch validation) are re-raised as
`DeviceError` naming the shader and entry point.
"""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np

from .pool import BufferPool
from .tensor import Tensor, from_bytes, host_array, round_size, tensor_nbytes
from .upload_ring import UploadRing

log = logging.getLogger("bitswarm.kernels.device")

WG_MAX = 65535            # max workgroups per grid dimension (WebGPU default limit)
_UNIFORM_SLOT = 256       # >= minUniformBufferOffsetAlignment everywhere
_PARAM_SLOTS = 4096       # distinct uniform parameter blocks before the table starts over
_BG_CACHE_MAX = 16384     # cached bind groups before the cache is cleared
FLUSH_EVERY = 128         # dispatches per submit (GPU/host overlap within a step)

class DeviceError(RuntimeError):
    """A wgpu validation/compile error, with the shader and entry point that caused it."""


class Kernel:
    """A compiled compute pipeline: one WGSL entry point with fixed override constants."""

    def __init__(self, ctx: "Context", name: str, source: str, entry: str,
                 constants: dict[str, float] | None):
        wgpu = ctx.wgpu
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


CPU_ADAPTER_NAMES = ("llvmpipe", "lavapipe", "swiftshader", "softpipe", "warp")


def is_cpu_adapter(info: dict) -> bool:
    """Whether wgpu adapter info (`adapter.info`) describes a CPU rasterizer (Mesa's lavapipe /
    llvmpipe, SwiftShader, Microsoft WARP): adapter_type "CPU" or a known name. On those the
    WGSL kernels run on the CPU, slower than NumPy (docs/benchmarks.md)."""
    kind = str(info.get("adapter_type", "")).lower()
    names = " ".join(str(info.get(k, "")) for k in ("device", "description")).lower()
    return kind == "cpu" or any(n in names for n in CPU_ADAPTER_NAMES)


def describe_adapter(info: dict) -> str:
    """One line naming an adapter: 'device (adapter_type, backend_type, vendor)'."""
    parts = [str(info.get(k)) for k in ("adapter_type", "backend_type", "vendor") if info.get(k)]
    return f"{info.get('device') or info.get('description') or 'unknown adapter'}" + (
        f" ({', '.join(parts)})" if parts else "")


class Context:
    """Adapter, device and queue; pool of buffers; the open command encoder.

    `runtime`: auto, wgpu or dawn (runtime.py; None reads BITSWARM_GPU_RUNTIME); the one used
    is `self.runtime`. Requests features shader-f16, subgroups (wgpu-native: `subgroup`) and
    (Dawn) subgroup matrices only when the adapter has them (`subgroup_matrix_configs` lists
    the latter's shapes; `device_memory` is a discrete GPU's memory in bytes on Dawn, else
    None), and the adapter's own maximum storage-binding and buffer
    sizes (128 MiB per binding on lavapipe, 2047 MiB on an H200). Raises RuntimeError when the
    runtime has no adapter, ValueError / ImportError from runtime.resolve.
    """

    def __init__(self, power_preference: str = "high-performance", runtime: str | None = None):
        from .runtime import SUBGROUP_MATRIX, device_memory, resolve, subgroup_matrix_configs
        self.runtime, wgpu = resolve(runtime)
        self.wgpu = wgpu
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as e:  # no loader / driver: wgpu raises its own error types
            raise RuntimeError(f"{self.runtime} found no adapter: {e}") from e
        if adapter is None:
            raise RuntimeError(f"{self.runtime} found no adapter (no Vulkan/Metal/DX12 driver)")
        self.adapter = adapter
        self.info = dict(adapter.info)
        features = [f for f in ("shader-f16", "subgroup", "subgroups", SUBGROUP_MATRIX)
                    if f in adapter.features]
        self.subgroup_matrix_configs = subgroup_matrix_configs(self.runtime, adapter)
        self.device_memory = device_memory(self.runtime, adapter)   # bytes, or None
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
        self._kernels: dict[tuple, Kernel] = {}
        self._lock = threading.RLock()
        self.pool = BufferPool(lambda size: self.device.create_buffer(
            size=size, usage=self._storage_usage), self._lock)
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

    # Byte accounting lives in the pool; these read it (benchmarks and tests report them).
    @property
    def allocated_bytes(self) -> int:
        """Bytes of storage buffers this Context holds: live tensors, the free pool and open
        UploadRings (what the driver sees)."""
        return self.pool.allocated_bytes

    @property
    def peak_allocated_bytes(self) -> int:
        """High-water mark of allocated_bytes since creation or the last `reset_peak()`."""
        return self.pool.peak_allocated_bytes

    @property
    def n_buffers_created(self) -> int:
        return self.pool.n_buffers_created

    # ------------------------------------------------------------ buffers
    def alloc(self, shape: Sequence[int], dtype: str = "float32") -> Tensor:
        """An uninitialized tensor (contents undefined: possibly a recycled buffer)."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        nbytes = tensor_nbytes(shape, dtype)
        size = round_size(nbytes)
        if size > self.max_binding:
            raise ValueError(f"tensor {shape} {dtype} needs {size} bytes, over this device's "
                             f"storage binding limit of {self.max_binding} bytes")
        return Tensor(self.pool.freed, self.pool.take(size), shape, dtype, nbytes)

    def pool_bytes(self) -> int:
        """Bytes held in the free pool (for tests and memory accounting)."""
        return self.pool.free_bytes()

    def trim(self) -> None:
        """Release every pooled buffer to the driver."""
        self.release()

    def release(self, sizes=None) -> int:
        """Destroy pooled (free) buffers whose byte size is in `sizes` (all when None) and drop
        the cached bind groups that name them; returns the bytes released. Flushes first: a
        buffer freed by Python may still be named by commands of the open encoder, and a
        destroyed buffer must not reach a submit (submitted work keeps it alive in wgpu)."""
        with self._lock:
            freed, gone = self.pool.release(sizes, self.flush)
            if not freed:
                return 0
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
        self.pool.reset_peak()

    def upload(self, a: np.ndarray, dtype: str) -> Tensor:
        """Host array -> new Tensor. dtype int8 packs rows 4 per u32 (a must be 2-D); float16
        rounds to nearest even (values beyond +-65504 become inf)."""
        a = np.asarray(a)
        data = host_array(a, dtype)
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
            self.encode_copy(src.buffer, dst.buffer, round_size(src.nbytes))

    def encode_copy(self, src, dst, nbytes: int, keepalive: bool = False) -> None:
        """Record a copy of nbytes from wgpu buffer src to dst into the open encoder (ending
        the compute pass); keepalive holds src until the encoder is submitted."""
        with self._lock:
            self._end_pass()
            self._enc().copy_buffer_to_buffer(src, 0, dst, 0, nbytes)
            if keepalive:
                self._keepalive.append(src)

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
            raw = self.queue.read_buffer(t.buffer, 0, round_size(t.nbytes))
        return from_bytes(raw, t)

    def read_many(self, ts: list[Tensor]) -> list[np.ndarray]:
        """Flush pending work and download every tensor of ts with ONE map: each is copied
        into one staging buffer (16-byte aligned slots), which is read back once. A read is a
        round trip through the driver (~1-3 ms on an H200 under Dawn), so a LoRA adapter's
        96-240 tensors read one by one cost a round of `node start` hundreds of ms."""
        sizes = [round_size(t.nbytes) if t.nbytes else 0 for t in ts]
        total = sum(sizes)
        if total == 0:
            return [from_bytes(b"", t) for t in ts]
        staging = self.device.create_buffer(size=total, usage=self._storage_usage)
        off = 0
        for t, n in zip(ts, sizes):
            if n:
                with self._lock:
                    self._end_pass()
                    self._enc().copy_buffer_to_buffer(t.buffer, 0, staging, off, n)
            off += n
        self.flush()
        raw = memoryview(self.queue.read_buffer(staging, 0, total))
        staging.destroy()
        out, off = [], 0
        for t, n in zip(ts, sizes):
            out.append(from_bytes(bytes(raw[off:off + n]), t))
            off += n
        return out

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
                            "size": round_size(len(params))}})
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
