"""GPU launchers of the elementwise ops (add.wgsl, relu2_gate.wgsl) for GpuBackend; semantics:
reference.py beside this file."""
from __future__ import annotations

from bitswarm.kernels.device import Tensor
from bitswarm.kernels.ops.check import check


def add(be, a: Tensor, b: Tensor) -> Tensor:
    """a + b, f32, same shapes."""
    check(a.shape == b.shape, f"add shapes differ: {a.shape} {b.shape}")
    out = be._new(a.shape)
    be._launch("add", [a, b, out], be._ew_grid(a.size), dict(total=a.size))
    return out


def relu2_gate(be, g: Tensor, u: Tensor) -> Tensor:
    """h = relu(g)^2 * u, f32, same shapes."""
    check(g.shape == u.shape, f"relu2_gate shapes differ: {g.shape} {u.shape}")
    h = be._new(g.shape)
    be._launch("relu2_gate", [g, u, h], be._ew_grid(g.size), dict(total=g.size))
    return h


def relu2_gate_backward(be, dh: Tensor, g: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(dg, du) of relu2_gate, f32, same shapes."""
    check(dh.shape == g.shape == u.shape,
           f"relu2_gate_backward shapes differ: {dh.shape} {g.shape} {u.shape}")
    dg, du = be._new(g.shape), be._new(g.shape)
    be._launch("relu2_gate_backward", [dh, g, u, dg, du], be._ew_grid(g.size), dict(total=g.size))
    return dg, du
