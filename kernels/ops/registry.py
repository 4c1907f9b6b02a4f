"""The one op table: every op's family, NumPy reference and WGSL kernels (shader file, entry
point, uniform struct), and the launch path every GPU launcher goes through.

The only module that knows shader paths (tinygrad's one-vocabulary rule). A shader lives in its
family's folder (kernels/ops/<family>/<file>.wgsl), ships in the wheel as package data and
loads through importlib.resources. Parameters are packed by name against the shader's own
`struct` (kernels/device/params.py), so a launcher that names a field wrong fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from bitswarm.kernels.device import Context, ParamLayout, grid_for, parse_params
from bitswarm.kernels.ops.adamw import reference as adamw
from bitswarm.kernels.ops.attention import reference as attention
from bitswarm.kernels.ops.bitlinear import reference as bitlinear
from bitswarm.kernels.ops.elementwise import reference as elementwise
from bitswarm.kernels.ops.embedding import reference as embedding
from bitswarm.kernels.ops.lm_head import reference as lm_head
from bitswarm.kernels.ops.matmul import reference as matmul
from bitswarm.kernels.ops.rmsnorm import reference as rmsnorm
from bitswarm.kernels.ops.rope import reference as rope

EW = 256   # invocations per workgroup of the elementwise shaders (@workgroup_size(256))


@dataclass(frozen=True)
class KernelSpec:
    """One WGSL entry point: shader file in the op's family folder, entry point, and the name
    of the uniform struct it reads (None: no uniform)."""

    shader: str
    entry: str
    params: str | None = "Params"


@dataclass(frozen=True)
class OpSpec:
    """family: folder under kernels/ops/; reference: the NumPy semantics (its reference.py);
    kernels: launch name -> KernelSpec, in launch order (the first is the default)."""

    family: str
    reference: Callable
    kernels: dict[str, KernelSpec]


def _op(family: str, reference: Callable, shader: str, *entries: str, **named: KernelSpec
        ) -> OpSpec:
    """OpSpec whose kernels are `entries` of `shader` (struct Params) plus `named` others."""
    ks = {e: KernelSpec(shader, e) for e in entries}
    ks.update(named)
    return OpSpec(family, reference, ks)


_BL_REDUCE = KernelSpec("bitlinear.wgsl", "reduce", "RParams")
_BL_TC = KernelSpec("bitlinear_tc.wgsl", "main")

OPS: dict[str, OpSpec] = {
    "embedding": _op("embedding", embedding.embedding, "embedding.wgsl", "main"),
    "embedding_backward": _op("embedding", embedding.embedding_backward,
                              "embedding_backward.wgsl", "main"),
    "rmsnorm": _op("rmsnorm", rmsnorm.rmsnorm, "rmsnorm.wgsl", "forward"),
    "rmsnorm_backward": _op("rmsnorm", rmsnorm.rmsnorm_backward, "rmsnorm.wgsl", "backward"),
    "rmsnorm_weight_grad": _op("rmsnorm", rmsnorm.rmsnorm_weight_grad,
                               "rmsnorm_weight_grad.wgsl", "partial",
                               finish=KernelSpec("rmsnorm_weight_grad_finish.wgsl", "main")),
    # quantize_act + bitlinear form the W1.58A8 forward; its STE backward is bitlinear_backward.
    "quantize_act": _op("bitlinear", bitlinear.quantize_act, "quantize_act.wgsl", "main"),
    # bitlinear's split-K (few output tiles) runs main with SPLIT=1, then reduce
    # main8: 128 x 128 tiles for large N and OUT (unsplit)
    # tc: int8 tensor cores (Dawn subgroup matrices; bitlinear_tc.wgsl, generated), same bits
    "bitlinear": _op("bitlinear", bitlinear.bitlinear, "bitlinear.wgsl", "main", "main8",
                     reduce=_BL_REDUCE, tc=_BL_TC),
    "bitlinear_int": _op("bitlinear", bitlinear.bitlinear_int, "bitlinear.wgsl", "main",
                         "main8", reduce=_BL_REDUCE, tc=_BL_TC),                   # INT_OUT=1
    # q/k/v or gate/up of one layer as one GEMM (its STE backward: bitlinear_backward per part)
    "bitlinear_group": _op("bitlinear", bitlinear.bitlinear_group, "bitlinear.wgsl", "main3",
                           "main3_8", tc=_BL_TC),
    # main: 64 x 64 tiles; main8: 128 x 128 (large N and K)
    "bitlinear_backward": _op("bitlinear", bitlinear.bitlinear_backward,
                              "bitlinear_backward.wgsl", "main", "main8"),
    # the same gradient with f16 partial sums (GpuBackend.ste_precision "f16"): rows (per-row
    # exponent, dy as scaled f16), then main (64 x 64) or main8 (128 x 128); needs shader-f16
    "bitlinear_backward_f16": _op("bitlinear", bitlinear.bitlinear_backward_f16,
                                  "bitlinear_backward_f16.wgsl", "main", "main8",
                                  rows=KernelSpec("bitlinear_backward_f16.wgsl", "rows",
                                                  "RParams")),
    # the same gradient on int8 dot products (ste_precision "i16" / "i8"): rows (per-row
    # exponent, dy as one or two i8x4 word arrays), then main (64 x 64) or main8 (128 x 128),
    # or tc_i8 / tc_i16 on int8 tensor cores (bitlinear_backward_tc_*.wgsl, generated), same bits
    "bitlinear_backward_int": _op("bitlinear", bitlinear.bitlinear_backward_int,
                                  "bitlinear_backward_int.wgsl", "main", "main8",
                                  rows=KernelSpec("bitlinear_backward_int.wgsl", "rows",
                                                  "RParams"),
                                  reduce=KernelSpec("bitlinear_backward_int.wgsl", "reduce",
                                                    "SParams"),
                                  tc_i8=KernelSpec("bitlinear_backward_tc_i8.wgsl", "main_i8"),
                                  tc_i16=KernelSpec("bitlinear_backward_tc_i16.wgsl", "main_i16")),
    "ternarize_all": _op("bitlinear", bitlinear.ternarize_all, "ternarize.wgsl", "absmean",
                         pack=KernelSpec("ternarize_pack.wgsl", "main")),
    "dequantize_act": _op("bitlinear", bitlinear.dequantize_act, "dequantize_act.wgsl", "main"),
    # skinny_*: LoRA's rank-r shapes (r <= 16 output columns, rows or contraction); gpu.py picks
    # main: 64 x 64 tiles; main8: 128 x 128 (large M and N: the lm_head), same bits
    "matmul": _op("matmul", matmul.matmul, "matmul.wgsl", "main", "main8",
                  reduce=KernelSpec("matmul.wgsl", "reduce", "RParams"),
                  widen=KernelSpec("matmul.wgsl", "widen", "WParams"),
                  rows=KernelSpec("skinny_rows.wgsl", "main"),
                  cols=KernelSpec("skinny_cols.wgsl", "main"),
                  cols_reduce=KernelSpec("skinny_cols.wgsl", "reduce", "RParams"),
                  update=KernelSpec("skinny_update.wgsl", "main")),
    "add": _op("elementwise", elementwise.add, "add.wgsl", "main"),
    "relu2_gate": _op("elementwise", elementwise.relu2_gate, "relu2_gate.wgsl", "forward"),
    "relu2_gate_backward": _op("elementwise", elementwise.relu2_gate_backward,
                               "relu2_gate.wgsl", "backward"),
    "rope": _op("rope", rope.rope, "rope.wgsl", "main"),                   # inverse: sign -1
    "rope_at": _op("rope", rope.rope_at, "rope_at.wgsl", "main"),
    "attention": _op("attention", attention.attention, "attention.wgsl", "forward"),
    "attention_backward": _op("attention", attention.attention_backward, "attention.wgsl",
                              "backward_dq", "backward_dkv", "backward_reduce"),
    "attention_decode": _op("attention", attention.attention_decode, "attention_decode.wgsl",
                            "main"),
    "kv_append_": _op("attention", attention.kv_append_, "kv_append.wgsl", "main"),
    "cross_entropy": _op("lm_head", lm_head.cross_entropy, "cross_entropy.wgsl", "main"),
    # lm_head matmuls of each vocab chunk run on matmul.wgsl (b = table rows, f16 or f32)
    "lm_head_cross_entropy": OpSpec("lm_head", lm_head.lm_head_cross_entropy, {
        "stats": KernelSpec("lm_head.wgsl", "stats", "SParams"),
        "finish": KernelSpec("lm_head.wgsl", "finish", "FParams")}),
    "adamw_": _op("adamw", adamw.adamw_, "adamw.wgsl", "main"),
}


def spec(op: str) -> OpSpec:
    """The OpSpec of op. Raises KeyError naming the known ops."""
    try:
        return OPS[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r}; known: {sorted(OPS)}") from None


def kernel_spec(op: str, name: str | None = None) -> KernelSpec:
    """op's kernel `name` (default: its first). Raises ValueError for a name op does not have."""
    ks = spec(op).kernels
    if name is None:
        return next(iter(ks.values()))
    try:
        return ks[name]
    except KeyError:
        raise ValueError(f"op {op!r} has no kernel {name!r}; it has {tuple(ks)}") from None


@lru_cache(maxsize=None)
def shader_source(family: str, shader: str) -> str:
    """WGSL text of `shader` in kernels/ops/<family>/. Raises FileNotFoundError if missing."""
    pkg = f"bitswarm.kernels.ops.{family}"
    return resources.files(pkg).joinpath(shader).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def params_layout(op: str, name: str | None = None) -> ParamLayout | None:
    """The parsed uniform struct of op's kernel `name` (None when it takes no uniform)."""
    k = kernel_spec(op, name)
    if k.params is None:
        return None
    return parse_params(f"{spec(op).family}/{k.shader}", shader_source(spec(op).family, k.shader),
                        k.params)


def kernel(ctx: Context, op: str, name: str | None = None, constants: dict | None = None):
    """The compiled device Kernel of op's kernel `name` (default: its first)."""
    fam, k = spec(op).family, kernel_spec(op, name)
    return ctx.kernel(k.shader.removesuffix(".wgsl"), lambda: shader_source(fam, k.shader),
                      k.entry, constants)


def launch(ctx: Context, op: str, bindings, grid, params: dict | None = None,
           name: str | None = None, constants: dict | None = None) -> None:
    """Encode op's kernel `name` over `grid` workgroups: bindings in the shader's binding order,
    params packed by field name into its uniform struct (ValueError naming the shader and the
    missing / unknown fields), override `constants`. Only encodes; reading a result submits."""
    layout = params_layout(op, name)
    if (layout is None) != (params is None):
        raise ValueError(f"op {op!r} kernel {name or 'default'}: params "
                         f"{'given to a kernel without a uniform' if layout is None else 'missing'}")
    data = layout.pack(**params) if layout is not None else None
    ctx.dispatch(kernel(ctx, op, name, constants), bindings, data, grid)


def ew_grid(total: int) -> tuple[int, int, int]:
    """The grid of an elementwise shader over `total` invocations (EW per workgroup)."""
    return grid_for(-(-total // EW))
