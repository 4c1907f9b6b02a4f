"""The op registry (kernels/ops/registry.py) is the one vocabulary: every Backend op is
registered, every registered op has a NumPy reference in its family, WGSL entry points that
exist in shaders that load, a uniform struct that parses, and a test in its family's file; both
backends implement every op. Packing a kernel's params with a wrong name fails, naming the
shader."""
from __future__ import annotations

import inspect
from importlib import import_module
from pathlib import Path

import pytest

from bitswarm.kernels.backend import Backend, CpuBackend
from bitswarm.kernels.gpu_backend import GpuBackend
from bitswarm.kernels.ops import registry

TRANSFERS = ("tensor", "assign", "ternary", "ternary_group", "table", "numpy", "numpy_many",
             "zeros_like", "release_workspace")
SCHEDULING = ("batch_parts", "run_parts")     # how a step's work is spread, not ops
HERE = Path(__file__).parent


def backend_ops() -> list[str]:
    return [n for n, _ in inspect.getmembers(Backend, inspect.isfunction)
            if not n.startswith("_") and n not in TRANSFERS + SCHEDULING]


def test_every_backend_op_is_registered_and_implemented():
    for op in backend_ops():
        registry.spec(op)
        assert callable(getattr(CpuBackend, op)) and callable(getattr(GpuBackend, op)), op


@pytest.mark.parametrize("op", sorted(registry.OPS))
def test_registered_op_has_reference_shader_params_and_test(op):
    spec = registry.spec(op)
    fam = import_module(f"bitswarm.kernels.ops.{spec.family}.reference")
    assert spec.reference is getattr(fam, op)
    for name, k in spec.kernels.items():
        src = registry.shader_source(spec.family, k.shader)
        assert f"fn {k.entry}(" in src, (op, name)
        layout = registry.params_layout(op, name)
        assert layout is not None and layout.names, (op, name)
    assert f"{op}(" in (HERE / f"test_{spec.family}.py").read_text(), \
        f"no test calls {op} in tests/kernels/ops/test_{spec.family}.py"


def test_launch_with_a_wrong_param_name_fails(gpu):
    x = gpu.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"elementwise/add.wgsl struct Params: missing "
                                         r"\['total'\], unknown \['n'\]"):
        registry.launch(gpu.ctx, "add", [x, x, x], (1, 1, 1), dict(n=2))
    with pytest.raises(ValueError, match="has no kernel 'reduce'"):
        registry.launch(gpu.ctx, "add", [x, x, x], (1, 1, 1), dict(total=2), name="reduce")
    with pytest.raises(KeyError, match="unknown op"):
        registry.spec("conv2d")
