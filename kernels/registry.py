"""The op table: each op's WGSL shader, entry points, NumPy reference and backward op.

The only module that knows shader paths (tinygrad's one-vocabulary rule). Shaders ship in the
wheel as package data of `bitswarm.wgsl` and load through importlib.resources.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from bitswarm.kernels import reference as ref


@dataclass(frozen=True)
class OpSpec:
    """shader: file in bitswarm.wgsl; entries: its entry points, in launch order; reference:
    the NumPy semantics (kernels/reference.py); backward: the op computing its input gradient
    (None for ops with no gradient or where the backward is the same op, as rope inverse)."""

    shader: str
    entries: tuple[str, ...]
    reference: Callable
    backward: str | None = None


OPS: dict[str, OpSpec] = {
    "embedding": OpSpec("embedding.wgsl", ("main",), ref.embedding),
    "rmsnorm": OpSpec("rmsnorm.wgsl", ("forward",), ref.rmsnorm, "rmsnorm_backward"),
    "rmsnorm_backward": OpSpec("rmsnorm.wgsl", ("backward",), ref.rmsnorm_backward),
    # quantize_act + bitlinear form the W1.58A8 forward; its STE backward is bitlinear_backward.
    "quantize_act": OpSpec("quantize_act.wgsl", ("main",), ref.quantize_act),
    # bitlinear's split-K (few output tiles) runs main with SPLIT=1, then reduce
    "bitlinear": OpSpec("bitlinear.wgsl", ("main", "reduce"), ref.bitlinear,
                        "bitlinear_backward"),
    "bitlinear_int": OpSpec("bitlinear.wgsl", ("main", "reduce"), ref.bitlinear_int),  # INT_OUT=1
    # q/k/v or gate/up of one layer as one GEMM (its STE backward: bitlinear_backward per part)
    "bitlinear_group": OpSpec("bitlinear.wgsl", ("main3",), ref.bitlinear_group,
                              "bitlinear_backward"),
    "bitlinear_backward": OpSpec("bitlinear_backward.wgsl", ("main",), ref.bitlinear_backward),
    "matmul": OpSpec("matmul.wgsl", ("main", "reduce"), ref.matmul, "matmul"),
    "add": OpSpec("add.wgsl", ("main",), ref.add),
    "rope": OpSpec("rope.wgsl", ("main",), ref.rope, "rope"),                 # inverse=True
    "attention": OpSpec("attention.wgsl", ("forward",), ref.attention, "attention_backward"),
    "attention_backward": OpSpec("attention.wgsl", ("backward_dq", "backward_dkv",
                                                    "backward_reduce"),
                                 ref.attention_backward),
    "relu2_gate": OpSpec("relu2_gate.wgsl", ("forward",), ref.relu2_gate, "relu2_gate_backward"),
    "relu2_gate_backward": OpSpec("relu2_gate.wgsl", ("backward",), ref.relu2_gate_backward),
    "cross_entropy": OpSpec("cross_entropy.wgsl", ("main",), ref.cross_entropy),
    # lm_head matmuls of each vocab chunk run on matmul.wgsl (b = table rows, f16 or f32)
    "lm_head_cross_entropy": OpSpec("lm_head.wgsl", ("stats", "finish"),
                                    ref.lm_head_cross_entropy),
    "adamw_": OpSpec("adamw.wgsl", ("main",), ref.adamw_),
}


@lru_cache(maxsize=None)
def shader_source(shader: str) -> str:
    """WGSL text of a shader file in bitswarm.wgsl. Raises FileNotFoundError if missing."""
    return resources.files("bitswarm.wgsl").joinpath(shader).read_text(encoding="utf-8")


def spec(op: str) -> OpSpec:
    try:
        return OPS[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r}; known: {sorted(OPS)}") from None


def kernel(ctx, op: str, entry: str | None = None, constants: dict | None = None):
    """The compiled Kernel for op's entry point (default: its first) on a device Context."""
    s = spec(op)
    entry = entry or s.entries[0]
    if entry not in s.entries:
        raise ValueError(f"op {op!r} has no entry point {entry!r}; it has {s.entries}")
    name = s.shader.removesuffix(".wgsl")
    return ctx.kernel(name, lambda: shader_source(s.shader), entry, constants)
