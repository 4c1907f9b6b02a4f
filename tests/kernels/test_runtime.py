"""The GPU runtime switch (kernels/device/runtime.py): wgpu-native or Dawn behind one API.

On CI (lavapipe, no wgpudawn) these check the choices a user meets there: unknown names fail
fast, `auto` keeps wgpu-native on a CPU rasterizer without loading Dawn, `dawn` without
wgpudawn is an error naming the extra, before `node start` writes anything. On a GPU machine
with wgpudawn installed (benchmarks/gpu_machine.sh carries it) the last test runs the same
kernels on both runtimes and compares them: exactly for the integer W1.58A8 core, within fp32
reordering for a LoRA training step.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from bitswarm.kernels.device.runtime import check_runtime

HAS_DAWN = importlib.util.find_spec("wgpudawn") is not None


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_unknown_runtime_names_fail_fast(monkeypatch):
    assert check_runtime(" Dawn ") == "dawn" and check_runtime("") == "auto"
    with pytest.raises(ValueError, match="auto, wgpu, dawn"):
        check_runtime("vulkan")
    monkeypatch.setenv("BITSWARM_GPU_RUNTIME", "metal")
    from bitswarm.kernels.device import Context
    with pytest.raises(ValueError, match="got 'metal'"):
        Context()
    from bitswarm.kernels.backend import select_backend
    with pytest.raises(ValueError, match="got 'opengl'"):
        select_backend("cpu", runtime="opengl")


def test_auto_on_a_cpu_rasterizer_keeps_wgpu_native_without_loading_dawn(gpu):
    from bitswarm.kernels.device import is_cpu_adapter
    if not is_cpu_adapter(gpu.ctx.info):
        pytest.skip("this machine has a real GPU: auto may pick Dawn here")
    r = _python("import sys\nfrom bitswarm.kernels.device import Context\n"
                "c = Context(runtime='auto')\nprint(c.runtime, 'wgpudawn' in sys.modules)",
                BITSWARM_GPU_RUNTIME="dawn")      # the explicit argument wins over the env
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["wgpu", "False"], r.stdout


@pytest.mark.skipif(HAS_DAWN, reason="wgpudawn is installed here")
def test_dawn_without_wgpudawn_names_the_extra(tmp_path):
    from bitswarm.kernels.device import Context
    with pytest.raises(ImportError, match=r"bitswarm\[dawn\]"):
        Context(runtime="dawn")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("some text to train on\n" * 20)
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, "-m", "bitswarm.node.cli", "start", "--swarm", "s",
                        "--data", str(docs), "--data-dir", str(state), "--device", "gpu",
                        "--gpu-runtime", "dawn"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--gpu-runtime dawn" in lines[0] and "bitswarm[dawn]" in lines[0]
    assert not state.exists()                     # failed before any side effect


@pytest.mark.skipif(not HAS_DAWN, reason="wgpudawn is not installed")
def test_both_runtimes_run_the_same_kernels(gpu, close):
    """W1.58A8's exact int32 core is bit-identical on Dawn and on wgpu-native; a float
    attention block forward + backward + AdamW step agrees within fp32 reordering (Tint and
    naga may order sums differently), as each does with the NumPy references."""
    from bitswarm.kernels.device import Context, is_cpu_adapter
    from bitswarm.kernels.gpu_backend import GpuBackend
    from bitswarm.kernels.ops.bitlinear import reference as ref

    from .ops.helpers import ternary
    from .test_backends_agree import _attention_block, attention_block_case
    try:
        dawn = GpuBackend(Context(runtime="dawn"), ste="f32")
    except RuntimeError as e:             # Dawn runs on neither lavapipe nor SwiftShader
        pytest.skip(f"Dawn has no adapter here: {e}")
    native = GpuBackend(Context(runtime="wgpu"), ste="f32")
    assert (dawn.ctx.runtime, native.ctx.runtime) == ("dawn", "wgpu")
    assert not is_cpu_adapter(dawn.ctx.info) and "via Dawn" in dawn.device_info
    rng = np.random.default_rng(3)
    xq = rng.integers(-128, 128, (300, 2560)).astype(np.int8)
    w = ternary(rng, 700, 2560)
    want = ref.bitlinear_int(xq, w.codes)
    for be in (dawn, native):
        np.testing.assert_array_equal(be.numpy(be.bitlinear_int(be.tensor(xq), be.ternary(w))),
                                      want, err_msg=be.ctx.runtime)
    case = attention_block_case(rng)
    a, b = _attention_block(dawn, *case), _attention_block(native, *case)
    for key in a:
        close(a[key], b[key], 1e-5 * max(1.0, np.abs(b[key]).max()), 1e-4, f"block {key}")


def test_dedicated_memory_is_a_discrete_gpus_largest_device_local_heap(gpu):
    """recompute auto's default budget comes from a discrete GPU's own memory (Dawn's heaps):
    the largest device-local heap (an H200 also lists a small device-local, host-visible BAR
    heap); None for an integrated GPU or CPU rasterizer, whose device-local heap is host RAM,
    and for no heaps. wgpu-native has no heap query: its Context reports None."""
    from bitswarm.kernels.device.runtime import dedicated_memory
    heaps = [{"size": 150 * 2**30, "properties": ["device-local"]},
             {"size": 256 * 2**20, "properties": ["device-local", "host-visible"]},
             {"size": 500 * 2**30, "properties": ["host-visible", "host-coherent"]}]
    assert dedicated_memory({"adapter_type": "DiscreteGPU"}, heaps) == 150 * 2**30
    assert dedicated_memory({"adapter_type": "discrete GPU"}, heaps[1:]) == 256 * 2**20
    assert dedicated_memory({"adapter_type": "IntegratedGPU"}, heaps) is None
    assert dedicated_memory({"adapter_type": "CPU"}, heaps) is None
    assert dedicated_memory({"adapter_type": "DiscreteGPU"}, heaps[2:]) is None
    if gpu.ctx.runtime == "wgpu":
        assert gpu.ctx.device_memory is None and gpu.device_memory is None
