"""Compute backends: one op vocabulary, two implementations (NumPy on the CPU, WGSL via wgpu).

The model, generation and pretraining (kernels/model.py, generate.py, pretrain.py) are written
once against `Backend`; a backend's tensors are opaque handles (NumPy arrays here, GPU buffers
in GpuBackend). Every op's semantics are those of its family's reference
(kernels/ops/<family>/reference.py, listed in kernels/ops/registry.py), which is what
CpuBackend runs; GpuBackend binds each family's GPU launcher. Callers branch on `caps`
(`BackendCaps`), never on `name` (for display and logs only).

`select_backend("auto")` picks the GPU only when wgpu finds a real GPU adapter: lavapipe /
llvmpipe are CPUs, where NumPy is faster (measured on lavapipe with 2 cores: the best W1.58A8
kernel ~45 GOP/s, NumPy's fp32 matmul ~200 GFLOP/s).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from bitswarm.kernels.config import TernaryLinear
from bitswarm.kernels.ops.adamw import reference as _adamw
from bitswarm.kernels.ops.attention import cpu as _attention_cpu
from bitswarm.kernels.ops.attention import reference as _attention
from bitswarm.kernels.ops.bitlinear import cpu as _bitlinear_cpu
from bitswarm.kernels.ops.bitlinear import reference as _bitlinear
from bitswarm.kernels.ops.elementwise import cpu as _elementwise
from bitswarm.kernels.ops.embedding import reference as _embedding
from bitswarm.kernels.ops.lm_head import cpu as _lm_head_cpu
from bitswarm.kernels.ops.lm_head import reference as _lm_head
from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK
from bitswarm.kernels.ops.matmul import cpu as _matmul
from bitswarm.kernels.ops.rmsnorm import cpu as _rmsnorm_cpu
from bitswarm.kernels.ops.rmsnorm import reference as _rmsnorm
from bitswarm.kernels.ops.rope import cpu as _rope
from bitswarm.kernels.ops.rope import reference as _rope_ref
from bitswarm.kernels.ops.rope.reference import RopeTables
from bitswarm.kernels.ops import threads as _threads

log = logging.getLogger("bitswarm.kernels.backend")

Tensor = Any  # backend-specific handle


@dataclass(frozen=True)
class BackendCaps:
    """What callers may branch on.

    device_memory_limited: activation memory is the limit (a GPU: recompute activations rather
    than hold them when a step would need more than kernels/model.py RECOMPUTE_ABOVE); False
    where tensors live in host memory (NumPy: time is the limit, never recompute)."""

    device_memory_limited: bool


CPU_CAPS = BackendCaps(device_memory_limited=False)
GPU_CAPS = BackendCaps(device_memory_limited=True)


def check_assign(shape, is_f32: bool, a: np.ndarray) -> None:
    """Raises ValueError unless a can overwrite a float32 tensor of `shape`."""
    if not is_f32:
        raise ValueError("assign: only float32 tensors are overwritten in place")
    if tuple(np.shape(a)) != tuple(shape):
        raise ValueError(f"assign: shape {tuple(np.shape(a))} != tensor shape {tuple(shape)}")


class Backend(Protocol):
    """The op vocabulary. Shapes, dtypes and semantics: each op's reference (registry.OPS)."""

    name: str
    caps: BackendCaps
    device_info: str               # the device in one line, for logs
    device_warning: str | None     # why the device is slow (a CPU rasterizer), else None

    # transfers (not ops: no kernel)
    def tensor(self, a: np.ndarray) -> Tensor: ...                  # upload (float32 / int32)
    def assign(self, t: Tensor, a: np.ndarray) -> None: ...         # overwrite a float32 tensor
    def ternary(self, w: TernaryLinear) -> Tensor: ...               # upload a frozen projection
    def ternary_group(self, ws: list[TernaryLinear]) -> list: ...   # ... several, one input
    def table(self, a: np.ndarray) -> Tensor: ...                    # upload an embedding/lm_head
    def release_workspace(self) -> None: ...                         # drop cached free buffers
    def numpy(self, t: Tensor) -> np.ndarray: ...                    # download (waits)
    def numpy_many(self, ts: list) -> list[np.ndarray]: ...         # ... several, one wait
    def zeros_like(self, t: Tensor) -> Tensor: ...
    # batch parts: sequence ranges whose training steps run concurrently (run_parts)
    def batch_parts(self, B: int, T: int) -> list[tuple[int, int]]: ...
    def run_parts(self, fns: list) -> list: ...

    # embedding
    def embedding(self, ids: Tensor, table: Tensor) -> Tensor: ...
    def embedding_backward(self, ids: np.ndarray, dy: Tensor, vocab_size: int) -> Tensor: ...
    # rmsnorm
    def rmsnorm(self, x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]: ...
    def rmsnorm_backward(self, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> Tensor: ...
    def rmsnorm_weight_grad(self, dy: Tensor, x: Tensor, rstd: Tensor) -> Tensor: ...
    # bitlinear (W1.58A8)
    def quantize_act(self, x: Tensor) -> tuple[Tensor, Tensor]: ...
    def bitlinear(self, xq: Tensor, x_scale: Tensor, w: Tensor) -> Tensor: ...
    def bitlinear_group(self, xq: Tensor, x_scale: Tensor, ws: list) -> list: ...
    def bitlinear_backward(self, dy: Tensor, w: Tensor, acc: Tensor | None = None) -> Tensor: ...
    def ternarize_all(self, ws: Sequence[Tensor]) -> list: ...       # latent -> ternary handles
    def dequantize_act(self, xq: Tensor, x_scale: Tensor) -> Tensor: ...
    # matmul, elementwise
    def matmul(self, a: Tensor, b: Tensor, *, trans_a: bool = False, trans_b: bool = False,
               alpha: float = 1.0, acc: Tensor | None = None) -> Tensor: ...
    def add(self, a: Tensor, b: Tensor) -> Tensor: ...
    def relu2_gate(self, g: Tensor, u: Tensor) -> Tensor: ...
    def relu2_gate_backward(self, dh: Tensor, g: Tensor, u: Tensor) -> tuple[Tensor, Tensor]: ...
    # rope
    def rope(self, x: Tensor, T: int, H: int, hd: int, theta: float,
             inverse: bool = False) -> Tensor: ...
    def rope_at(self, x: Tensor, pos: int, H: int, hd: int, theta: float) -> Tensor: ...
    # attention (training, and decoding over a KV cache)
    def attention(self, q: Tensor, k: Tensor, v: Tensor, B: int, T: int, Hq: int, Hkv: int,
                  hd: int) -> tuple[Tensor, Tensor]: ...
    def attention_backward(self, do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                           lse: Tensor, B: int, T: int, Hq: int, Hkv: int,
                           hd: int) -> tuple[Tensor, Tensor, Tensor]: ...
    def kv_append_(self, cache: Tensor, x: Tensor, pos: int) -> None: ...
    def attention_decode(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, L: int, Hq: int,
                         Hkv: int, hd: int) -> Tensor: ...
    # lm_head / loss
    def cross_entropy(self, logits: Tensor, targets: Tensor,
                      grad_scale: float) -> tuple[Tensor, Tensor]: ...
    def lm_head_cross_entropy(self, x: Tensor, w: Tensor, targets: Tensor, grad_scale: float,
                              chunk: int = LM_CHUNK,
                              grad: bool = True) -> tuple[Tensor, Tensor | None]: ...
    # optimizer
    def adamw_(self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, step: int, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float) -> None: ...


class CpuBackend:
    """NumPy backend: each op family's CPU path (kernels/ops/<family>/cpu.py where one exists,
    else the family's reference). The CPU paths are the references' arithmetic restructured
    for float32 BLAS (frozen ternary codes held once as float32, q/k/v as one GEMM, in-place
    elementwise work, GQA attention without repeated K/V; with numba, fused loops with the
    NumPy passes' bits, kernels/ops/jit.py), each splitting its rows over the cores with BLAS
    held to one thread (kernels/ops/threads.py); tests/kernels/test_cpu_ops.py holds each to its
    reference (bit-identical where stated there, else a float32 tolerance or a stated bound)."""

    name = "cpu"
    caps = CPU_CAPS

    def __init__(self, ste: str | None = None) -> None:
        """ste: the STE input gradient's arithmetic (auto, f32, i24, i16; None: BITSWARM_CPU_STE
        or auto; kernels/ops/bitlinear/cpu.py ste_mode). Raises ValueError for another."""
        self._rope = RopeTables()
        self.ste = _bitlinear_cpu.ste_setting(ste)
        _threads.own_blas()      # BLAS on one thread: the ops split rows over the cores

    @property
    def device_info(self) -> str:
        """The device in one line (for the node's log)."""
        mode = _bitlinear_cpu.ste_mode(setting=self.ste)
        return (f"NumPy on {_threads.workers()} CPU thread(s), STE input gradient "
                f"{mode}{' (auto)' if self.ste == 'auto' else ''}")

    device_warning = None   # why this device is slow (GpuBackend on a CPU rasterizer)

    def tensor(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return np.array(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float32)

    def assign(self, t: np.ndarray, a: np.ndarray) -> None:
        """Overwrite float32 tensor t with host array a (same shape) in place."""
        check_assign(t.shape, t.dtype == np.float32, a)
        np.copyto(t, a, casting="same_kind")

    def ternary(self, w: TernaryLinear) -> TernaryLinear:
        """A frozen projection with its codes held once as a float32 matrix (CpuTernary)."""
        return _bitlinear_cpu.ternary(w)

    def ternary_group(self, ws: list[TernaryLinear]) -> list[TernaryLinear]:
        """Projections of one input sharing one stacked float32 codes matrix (one GEMM)."""
        return _bitlinear_cpu.ternary_group(ws)

    def table(self, a: np.ndarray) -> np.ndarray:
        """Embedding / lm_head table (V, D): float32 here (host memory is not the limit, and
        the NumPy backend stays the float32 reference); GpuBackend stores float16."""
        return np.array(a, dtype=np.float32)

    def release_workspace(self) -> None:
        """Nothing cached: NumPy frees arrays when they are dropped."""

    def numpy(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t)

    def numpy_many(self, ts: list) -> list[np.ndarray]:
        return [np.asarray(t) for t in ts]

    def zeros_like(self, t: np.ndarray) -> np.ndarray:
        return np.zeros_like(t)

    def batch_parts(self, B: int, T: int) -> list[tuple[int, int]]:
        """Sequence ranges [b0, b1) of a batch (B, T) that run as concurrent parts, one per
        worker thread while each keeps >= threads.PART_MIN_ROWS token rows (kernels/ops/
        threads.py batch_parts)."""
        return _threads.batch_parts(B, T)

    @staticmethod
    def run_parts(fns: list) -> list:
        """fns (no arguments) concurrently, one thread each -> their results (threads.run_parts)."""
        return _threads.run_parts(fns)

    embedding = staticmethod(_embedding.embedding)
    embedding_backward = staticmethod(_embedding.embedding_backward)
    rmsnorm = staticmethod(_rmsnorm_cpu.rmsnorm)
    rmsnorm_backward = staticmethod(_rmsnorm_cpu.rmsnorm_backward)
    rmsnorm_weight_grad = staticmethod(_rmsnorm.rmsnorm_weight_grad)
    # xq is float32 holding the int8 values (what the float32 GEMM multiplies)
    quantize_act = staticmethod(_bitlinear_cpu.quantize_act)
    dequantize_act = staticmethod(_bitlinear.dequantize_act)
    matmul = staticmethod(_matmul.matmul)
    add = staticmethod(_elementwise.add)
    relu2_gate = staticmethod(_elementwise.relu2_gate)
    relu2_gate_backward = staticmethod(_elementwise.relu2_gate_backward)
    attention = staticmethod(_attention_cpu.attention)
    attention_backward = staticmethod(_attention_cpu.attention_backward)
    kv_append_ = staticmethod(_attention.kv_append_)
    attention_decode = staticmethod(_attention.attention_decode)
    cross_entropy = staticmethod(_lm_head.cross_entropy)
    lm_head_cross_entropy = staticmethod(_lm_head_cpu.lm_head_cross_entropy)
    adamw_ = staticmethod(_adamw.adamw_)

    # ternary projections are CpuTernary (codes, weight_scale, float32 codes) on the host
    bitlinear = staticmethod(_bitlinear_cpu.bitlinear)
    bitlinear_group = staticmethod(_bitlinear_cpu.bitlinear_group)
    def bitlinear_backward(self, dy: np.ndarray, w, acc: np.ndarray | None = None) -> np.ndarray:
        return _bitlinear_cpu.bitlinear_backward(dy, w, acc, self.ste)

    def ternarize(self, w: np.ndarray) -> TernaryLinear:
        """One latent weight -> TernaryLinear (ternarize_all's step; a test hook overrides it)."""
        codes, scale = _bitlinear.ternarize(w)
        return _bitlinear_cpu.ternary(TernaryLinear(codes, scale))

    def ternarize_all(self, ws) -> list[TernaryLinear]:
        return [self.ternarize(w) for w in ws]

    def rope(self, x, T, H, hd, theta, inverse=False):
        cos, sin = self._rope.get(T, hd, theta)
        return _rope.rope(x, cos, sin, T, H, hd, inverse)

    def rope_at(self, x, pos, H, hd, theta):
        cos, sin = self._rope.get(pos + x.shape[0], hd, theta, grow=True)
        return _rope_ref.rope_at(x, cos, sin, pos, H, hd)


def real_gpu_available(runtime: str | None = None) -> bool:
    """True when the GPU runtime (kernels/device/runtime.py: auto, wgpu, dawn; None reads
    BITSWARM_GPU_RUNTIME) finds a non-CPU adapter (lavapipe/llvmpipe/SwiftShader report type
    CPU); False too when that runtime is not installed. Raises ValueError for an unknown
    runtime."""
    from bitswarm.kernels.device.runtime import check_runtime, has_real_gpu, resolve
    check_runtime(runtime)
    try:
        module = resolve(runtime)[1]
    except ImportError as e:
        log.debug("GPU runtime not installed: %s", e)
        return False
    return has_real_gpu(module)


def select_backend(device: str, embeddings: str = "gpu", ste: str | None = None,
                   runtime: str | None = None, cpu_ste: str | None = None) -> Backend:
    """device: "auto" (GPU if a real one exists, else NumPy), "gpu" (wgpu, any adapter, lavapipe
    included), "cpu" (NumPy). embeddings: where a GPU backend keeps the embedding / lm_head
    table, "gpu" or "host" (GpuBackend's table_residency; NumPy keeps everything on the host).
    ste: a GPU backend's STE input-gradient arithmetic (GpuBackend's `ste`: auto, f32, f16, i16,
    i8; None: BITSWARM_GPU_STE or auto). cpu_ste: NumPy's (CpuBackend's `ste`: auto, f32, i24,
    i16; None: BITSWARM_CPU_STE or auto). runtime: the WebGPU implementation
    (auto, wgpu, dawn; None: BITSWARM_GPU_RUNTIME or auto; kernels/device/runtime.py). Raises
    ValueError for anything else, RuntimeError when "gpu" is forced and the runtime has no
    adapter, ImportError for runtime dawn without wgpudawn installed."""
    if device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"--device must be auto, gpu or cpu, got {device!r}")
    if embeddings not in ("gpu", "host"):
        raise ValueError(f"--embeddings must be gpu or host, got {embeddings!r}")
    from bitswarm.kernels.device.runtime import check_runtime
    check_runtime(runtime)
    if device == "cpu" or (device == "auto" and not real_gpu_available(runtime)):
        return CpuBackend(cpu_ste)
    from bitswarm.kernels.gpu_backend import GpuBackend
    return GpuBackend(table_residency=embeddings, ste=ste, runtime=runtime)
