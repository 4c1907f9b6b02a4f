"""Compute backends: one op vocabulary, two implementations (NumPy on the CPU, WGSL via wgpu).

The model (kernels/model.py) is written once against `Backend`; a backend's tensors are opaque
handles (NumPy arrays here, GPU buffers in GpuBackend). Every op's semantics are those of the
same-named function in kernels/reference.py, which is also what CpuBackend runs.

`select_backend("auto")` picks the GPU only when wgpu finds a real GPU adapter: lavapipe /
llvmpipe are CPUs, where NumPy is faster (see ../shared/FACTS.md, "Speed on lavapipe").
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from bitswarm.kernels import reference as ref
from bitswarm.kernels.config import TernaryLinear

log = logging.getLogger("bitswarm.kernels.backend")

Tensor = Any  # backend-specific handle


class Backend(Protocol):
    """The op vocabulary. Shapes and semantics: kernels/reference.py."""

    name: str

    def tensor(self, a: np.ndarray) -> Tensor: ...                  # upload (float32 / int32)
    def ternary(self, w: TernaryLinear) -> Tensor: ...               # upload a frozen projection
    def ternary_group(self, ws: list[TernaryLinear]) -> list: ...   # ... several, one input
    def table(self, a: np.ndarray) -> Tensor: ...                    # upload an embedding/lm_head
    def release_workspace(self) -> None: ...                         # drop cached free buffers
    def numpy(self, t: Tensor) -> np.ndarray: ...                    # download (waits)
    def zeros_like(self, t: Tensor) -> Tensor: ...

    def embedding(self, ids: Tensor, table: Tensor) -> Tensor: ...
    def rmsnorm(self, x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]: ...
    def rmsnorm_backward(self, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> Tensor: ...
    def quantize_act(self, x: Tensor) -> tuple[Tensor, Tensor]: ...
    def bitlinear(self, xq: Tensor, x_scale: Tensor, w: Tensor) -> Tensor: ...
    def bitlinear_group(self, xq: Tensor, x_scale: Tensor, ws: list) -> list: ...
    def bitlinear_backward(self, dy: Tensor, w: Tensor, acc: Tensor | None = None) -> Tensor: ...
    def matmul(self, a: Tensor, b: Tensor, *, trans_a: bool = False, trans_b: bool = False,
               alpha: float = 1.0, acc: Tensor | None = None) -> Tensor: ...
    def add(self, a: Tensor, b: Tensor) -> Tensor: ...
    def rope(self, x: Tensor, T: int, H: int, hd: int, theta: float,
             inverse: bool = False) -> Tensor: ...
    def attention(self, q: Tensor, k: Tensor, v: Tensor, B: int, T: int, Hq: int, Hkv: int,
                  hd: int) -> tuple[Tensor, Tensor]: ...
    def attention_backward(self, do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                           lse: Tensor, B: int, T: int, Hq: int, Hkv: int,
                           hd: int) -> tuple[Tensor, Tensor, Tensor]: ...
    def relu2_gate(self, g: Tensor, u: Tensor) -> Tensor: ...
    def relu2_gate_backward(self, dh: Tensor, g: Tensor, u: Tensor) -> tuple[Tensor, Tensor]: ...
    def cross_entropy(self, logits: Tensor, targets: Tensor,
                      grad_scale: float) -> tuple[Tensor, Tensor]: ...
    def lm_head_cross_entropy(self, x: Tensor, w: Tensor, targets: Tensor, grad_scale: float,
                              chunk: int = ref.LM_CHUNK,
                              grad: bool = True) -> tuple[Tensor, Tensor | None]: ...
    def adamw_(self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, step: int, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float) -> None: ...


class DecodeBackend(Backend, Protocol):
    """Backend plus the decode (KV-cache) ops of kernels/generate.py; semantics: the "decode"
    section of kernels/reference.py. CpuBackend implements them; for GpuBackend they live in
    kernels/gpu_decode_ops.py (GpuDecodeOps), and `generate.decode_ops` picks the right one.
    A sub-protocol, so the training op vocabulary (and the registry that mirrors it) is unchanged."""

    def rope_at(self, x: Tensor, pos: int, H: int, hd: int, theta: float) -> Tensor: ...
    def kv_append_(self, cache: Tensor, x: Tensor, pos: int) -> None: ...
    def attention_decode(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, L: int, Hq: int,
                         Hkv: int, hd: int) -> Tensor: ...


class CpuBackend:
    """NumPy backend: the reference semantics, run as they are."""

    name = "cpu"

    def __init__(self) -> None:
        self._rope_cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}

    def tensor(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return np.array(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float32)

    def ternary(self, w: TernaryLinear) -> TernaryLinear:
        return w

    def ternary_group(self, ws: list[TernaryLinear]) -> list[TernaryLinear]:
        return list(ws)

    def table(self, a: np.ndarray) -> np.ndarray:
        """Embedding / lm_head table (V, D): float32 here (host memory is not the limit, and
        the NumPy backend stays the float32 reference); GpuBackend stores float16."""
        return np.array(a, dtype=np.float32)

    def release_workspace(self) -> None:
        """Nothing cached: NumPy frees arrays when they are dropped."""

    def numpy(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t)

    def zeros_like(self, t: np.ndarray) -> np.ndarray:
        return np.zeros_like(t)

    embedding = staticmethod(ref.embedding)
    rmsnorm = staticmethod(ref.rmsnorm)
    rmsnorm_backward = staticmethod(ref.rmsnorm_backward)
    quantize_act = staticmethod(ref.quantize_act)
    matmul = staticmethod(ref.matmul)
    add = staticmethod(ref.add)
    attention = staticmethod(ref.attention)
    attention_backward = staticmethod(ref.attention_backward)
    relu2_gate = staticmethod(ref.relu2_gate)
    relu2_gate_backward = staticmethod(ref.relu2_gate_backward)
    cross_entropy = staticmethod(ref.cross_entropy)
    lm_head_cross_entropy = staticmethod(ref.lm_head_cross_entropy)
    adamw_ = staticmethod(ref.adamw_)

    def bitlinear(self, xq, x_scale, w: TernaryLinear):
        return ref.bitlinear(xq, x_scale, w.codes, w.weight_scale)

    def bitlinear_group(self, xq, x_scale, ws: list[TernaryLinear]):
        return ref.bitlinear_group(xq, x_scale, [w.codes for w in ws],
                                   [w.weight_scale for w in ws])

    def bitlinear_backward(self, dy, w: TernaryLinear, acc=None):
        dx = ref.bitlinear_backward(dy, w.codes, w.weight_scale)
        return dx if acc is None else dx + acc

    def rope(self, x, T, H, hd, theta, inverse=False):
        key = (hd, theta)
        cs = self._rope_cache.get(key)
        if cs is None or cs[0].shape[0] < T:
            cs = self._rope_cache[key] = ref.rope_tables(max(T, 128), hd, theta)
        return ref.rope(x, cs[0], cs[1], T, H, hd, inverse)

    # ------------------------------------------------------------ decode (KV cache)
    kv_append_ = staticmethod(ref.kv_append_)
    attention_decode = staticmethod(ref.attention_decode)

    def rope_at(self, x, pos, H, hd, theta):
        need = pos + x.shape[0]
        key = (hd, theta)
        cs = self._rope_cache.get(key)
        if cs is None or cs[0].shape[0] < need:      # grow geometrically: one token per call
            have = 0 if cs is None else cs[0].shape[0]
            cs = self._rope_cache[key] = ref.rope_tables(max(need, 2 * have, 128), hd, theta)
        return ref.rope_at(x, cs[0], cs[1], pos, H, hd)


def real_gpu_available() -> bool:
    """True when wgpu finds a non-CPU adapter (lavapipe/llvmpipe/SwiftShader report type CPU)."""
    try:
        import wgpu
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:  # no Vulkan/Metal/DX12 loader, no driver: no GPU
        log.debug("no wgpu adapter: %s", e)
        return False
    if adapter is None:
        return False
    info = adapter.info
    kind = str(info.get("adapter_type", "")).lower()
    return kind not in ("cpu", "") and "llvmpipe" not in str(info.get("device", "")).lower()


def select_backend(device: str, embeddings: str = "gpu") -> Backend:
    """device: "auto" (GPU if a real one exists, else NumPy), "gpu" (wgpu, any adapter, lavapipe
    included), "cpu" (NumPy). embeddings: where a GPU backend keeps the embedding / lm_head
    table, "gpu" or "host" (GpuBackend's table_residency; NumPy keeps everything on the host).
    Raises ValueError for anything else, RuntimeError when "gpu" is forced and wgpu has no
    adapter."""
    if device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"--device must be auto, gpu or cpu, got {device!r}")
    if embeddings not in ("gpu", "host"):
        raise ValueError(f"--embeddings must be gpu or host, got {embeddings!r}")
    if device == "cpu" or (device == "auto" and not real_gpu_available()):
        return CpuBackend()
    from bitswarm.kernels.gpu_backend import GpuBackend
    return GpuBackend(table_residency=embeddings)
