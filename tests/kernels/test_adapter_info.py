"""The device each backend reports for the node's log: the wgpu adapter by name, with a warning
when it is a CPU rasterizer (lavapipe / llvmpipe on CI), where --device cpu is faster."""
from __future__ import annotations

from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.device import describe_adapter, is_cpu_adapter


def test_cpu_rasterizers_are_recognised():
    assert is_cpu_adapter({"device": "llvmpipe (LLVM 15.0.6, 256 bits)", "adapter_type": "CPU"})
    assert is_cpu_adapter({"device": "SwiftShader Device (Subzero)", "adapter_type": "Unknown"})
    h200 = {"device": "NVIDIA H200", "adapter_type": "DiscreteGPU", "backend_type": "Vulkan",
            "vendor": "NVIDIA"}
    assert not is_cpu_adapter(h200)
    assert describe_adapter(h200) == "NVIDIA H200 (DiscreteGPU, Vulkan, NVIDIA)"


def test_backends_describe_their_device(gpu):
    cpu = CpuBackend()
    assert "NumPy" in cpu.device_info and cpu.device_warning is None
    assert gpu.ctx.info["device"] in gpu.device_info
    assert f"via {'Dawn' if gpu.ctx.runtime == 'dawn' else 'wgpu-native'}" in gpu.device_info
    if is_cpu_adapter(gpu.ctx.info):              # lavapipe on CI
        assert "CPU rasterizer" in gpu.device_warning and "--device cpu" in gpu.device_warning
    else:
        assert gpu.device_warning is None
