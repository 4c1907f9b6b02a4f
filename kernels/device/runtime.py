"""Which WebGPU implementation runs the kernels: wgpu-native (wgpu-py) or Dawn (wgpudawn).

The setting (node start --gpu-runtime, BITSWARM_GPU_RUNTIME, GpuBackend / Context `runtime`):
- `auto` (default): Dawn when wgpudawn is installed (`pip install 'bitswarm[dawn]'`) and both
  runtimes see a GPU that is not a CPU rasterizer, else wgpu-native. On CPU rasterizers
  (lavapipe: CI) wgpu-native stays: Dawn does not run on them.
- `wgpu`: wgpu-py on wgpu-native.
- `dawn`: wgpudawn, the wgpu-py API on Google's Dawn (the WebGPU of Chrome), compiling WGSL
  with Tint; an error when it is not installed (ImportError) or finds no adapter.

Why Dawn: the same WGSL and host code run a 2B-4T LoRA step on an H200 1.16-1.46x faster
through Dawn than through wgpu-native 29 (docs/benchmarks.md, "GPU: the same kernels on Dawn"),
and Dawn lets WGSL use int8 tensor cores (subgroup matrices: bitlinear_tc.wgsl), which
wgpu-native refuses (its `cooperative-matrix` feature needs an opt-in no C caller can give).
The two share wgpu-py's API, so nothing above this module changes; the kernel tests pass on
both. Dawn hides shader-f16 on NVIDIA's Vulkan driver (its `vulkan_enable_f16_on_nvidia`
toggle turns it back on, and then 12 of our f16 kernel tests fail on an H200), so there the
f16 paths fall back to f32 as on any adapter without the feature.

Source: wgpudawn's README (a drop-in for wgpu-py, version for version).
"""
from __future__ import annotations

import logging
import os

from bitswarm.kernels.config import GPU_RUNTIME_CHOICES as RUNTIMES

log = logging.getLogger("bitswarm.kernels.device")

SUBGROUP_MATRIX = "chromium-experimental-subgroup-matrix"
# Dawn's subgroup matrices (int8 tensor cores: kernels/ops/bitlinear/bitlinear_tc.wgsl) are an
# experimental feature (allow_unsafe_apis) and require the Vulkan memory model (Dawn's own
# subgroup-matrix tests run with use_vulkan_memory_model).
DAWN_TOGGLES = ("allow_unsafe_apis", "use_vulkan_memory_model")
_auto_choice: str | None = None      # what `auto` resolved to: decided once per process


def check_runtime(setting: str | None) -> str:
    """The setting, or BITSWARM_GPU_RUNTIME when None (`auto` when unset), lower-cased.
    Raises ValueError naming the accepted values for anything else."""
    if setting is None:
        setting = os.environ.get("BITSWARM_GPU_RUNTIME", "auto")
    name = setting.strip().lower() or "auto"
    if name not in RUNTIMES:
        raise ValueError(f"GPU runtime (--gpu-runtime / BITSWARM_GPU_RUNTIME) must be one of "
                         f"{', '.join(RUNTIMES)}, got {setting!r}")
    return name


def _module(name: str):
    if name == "wgpu":
        import wgpu
        return wgpu
    try:
        import wgpudawn
        from wgpudawn.backends.dawn import extras
    except ImportError as e:
        raise ImportError("the dawn GPU runtime needs wgpudawn: pip install 'bitswarm[dawn]'") from e
    try:
        extras.set_instance_extras(enable_toggles=list(DAWN_TOGGLES))
    except RuntimeError:     # the instance exists already (made before by this process)
        pass
    return wgpudawn


def has_real_gpu(module) -> bool:
    """Whether a runtime's wgpu-py-API module finds an adapter that is not a CPU rasterizer
    (lavapipe / llvmpipe / SwiftShader / WARP; an adapter without a type counts as none)."""
    from .context import is_cpu_adapter
    try:
        adapter = module.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:   # no loader / driver; Dawn raises when it has only its Null backend
        log.debug("%s found no adapter: %s", module.__name__, e)
        return False
    if adapter is None:
        return False
    info = dict(adapter.info)
    return bool(str(info.get("adapter_type", ""))) and not is_cpu_adapter(info)


def _auto() -> str:
    try:
        if not has_real_gpu(_module("wgpu")):
            return "wgpu"                # CPU rasterizer or no GPU: Dawn would not do better
        dawn = _module("dawn")
    except ImportError:
        return "wgpu"
    return "dawn" if has_real_gpu(dawn) else "wgpu"


def resolve(setting: str | None = None) -> tuple[str, object]:
    """(`wgpu` or `dawn`, that runtime's wgpu-py-API module) for a setting (None: the
    environment's, see check_runtime). Raises ValueError for an unknown setting, ImportError
    (naming the extra) for `dawn` without wgpudawn installed."""
    global _auto_choice
    name = check_runtime(setting)
    if name == "auto":
        if _auto_choice is None:
            _auto_choice = _auto()
        name = _auto_choice
    return name, _module(name)


def subgroup_matrix_configs(runtime: str, adapter) -> list[dict]:
    """The adapter's subgroup matrix configurations on Dawn ([] elsewhere): dicts with
    component_type and result_component_type ("i8", "i32", "f16", ...), m, n, k (a left
    m x k times a right k x n matrix) and min/max_subgroup_size. An H200 (driver 580) lists
    i8 / u8 at 16 x 16 x 32 and 16 x 8 x 32 with 32-bit results, and no f16."""
    if runtime != "dawn" or SUBGROUP_MATRIX not in adapter.features:
        return []
    from wgpudawn.backends.dawn import extras
    return list(extras.get_adapter_properties(adapter).get("subgroup_matrix_configs", []))


def device_memory(runtime: str, adapter) -> int | None:
    """Bytes of a discrete GPU's own memory: the largest device-local heap Dawn reports
    (feature adapter-properties-memory-heaps; Vulkan's VkMemoryHeap with
    VK_MEMORY_HEAP_DEVICE_LOCAL_BIT). None on wgpu-native (it has no such query), for an
    integrated GPU or CPU rasterizer (its device-local heap is the host's RAM, shared with
    everything else), and where no heap is reported."""
    if runtime != "dawn" or "adapter-properties-memory-heaps" not in adapter.features:
        return None
    from wgpudawn.backends.dawn import extras
    return dedicated_memory(adapter.info, extras.get_adapter_properties(adapter).get(
        "memory_heaps", []))


def dedicated_memory(info: dict, heaps: list[dict]) -> int | None:
    """device_memory's rule on an adapter's info and Dawn's heap list ({"size": bytes,
    "properties": ["device-local", ...]} each): the largest device-local heap of a discrete
    GPU, else None."""
    if "discrete" not in str(info.get("adapter_type", "")).lower():
        return None
    sizes = [int(h["size"]) for h in heaps if "device-local" in h["properties"]]
    return max(sizes) if sizes else None
