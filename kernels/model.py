"""BitNet b1.58 forward pass and LoRA backward pass, written once against a `Backend`.

Semantics are transformers' modeling_bitnet.py with AutoBitLinear online quantization:
    x = embed(ids)
    per layer:  a = o_proj(attn_sub_norm(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))),
                    n = input_layernorm(x);                x = x + a
                m = down_proj(ffn_sub_norm(relu(gate_proj(n))^2 * up_proj(n))),
                    n = post_attention_layernorm(x);       x = x + m
    logits = lm_head(norm(x))          (lm_head unquantized; tied to embed_tokens when configured)
Every projection is W1.58A8 BitLinear: per-token absmax int8 activations times ternary weights,
plus, where LoRA targets it, (alpha/r) * B (A n) on the unquantized input n.

Only LoRA parameters get gradients; the base model is frozen, so the backward pass carries input
gradients through every op (straight-through for the quantizers) and weight gradients only into
LoRA A and B. Shapes: ids (B, T) -> N = B*T token rows, see kernels/config.py for symbols.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bitswarm.kernels.backend import Backend
from bitswarm.kernels.config import BitNetWeights, LoRAConfig
from bitswarm.kernels.lora import LoRAState, lora_key


@dataclass
class _Proj:
    """Saved forward state of one projection for the backward pass."""

    x: Any          # unquantized input (N, in)
    h: Any = None   # LoRA hidden A x (N, r); None when the projection has no adapter


class BitNetModel:
    """A frozen base model resident on a backend, with a LoRA adapter attached.

    Args:
        weights: host-side base weights (uploaded once; ternary codes stay packed on the GPU).
        backend: where the math runs (CpuBackend or GpuBackend).
        lora: adapter configuration; `set_lora` uploads the adapter's values.
    """

    def __init__(self, weights: BitNetWeights, backend: Backend, lora: LoRAConfig) -> None:
        self.cfg = weights.config
        self.be = backend
        self.lora_cfg = lora
        be = backend
        self.embed = be.tensor(weights.embed_tokens)
        self.lm_head = self.embed if weights.lm_head is None else be.tensor(weights.lm_head)
        self.norm = be.tensor(weights.norm)
        self.layers = []
        for lw in weights.layers:
            self.layers.append({
                "input_layernorm": be.tensor(lw.input_layernorm),
                "post_attention_layernorm": be.tensor(lw.post_attention_layernorm),
                "attn_sub_norm": be.tensor(lw.attn_sub_norm),
                "ffn_sub_norm": be.tensor(lw.ffn_sub_norm),
                **{p: be.ternary(w) for p, w in lw.proj.items()},
            })
        self.lora: dict[str, Any] = {}

    # ------------------------------------------------------------------ adapter I/O
    def set_lora(self, state: LoRAState) -> None:
        """Upload adapter values (keys and shapes from kernels/lora.py)."""
        self.lora = {k: self.be.tensor(v) for k, v in state.items()}

    def get_lora(self) -> LoRAState:
        """Download the adapter as float32 host arrays."""
        return {k: np.array(self.be.numpy(v), dtype=np.float32) for k, v in self.lora.items()}

    # ------------------------------------------------------------------ projections
    def _proj_fwd(self, i: int, name: str, x, xq, xs, saved: dict):
        be, L = self.be, self.layers[i]
        y = be.bitlinear(xq, xs, L[name])
        a_key = lora_key(i, name, "A")
        if a_key in self.lora:
            s = self.lora_cfg.scaling
            h = be.matmul(x, self.lora[a_key], trans_b=True)                          # (N, r)
            y = be.matmul(h, self.lora[lora_key(i, name, "B")], trans_b=True, alpha=s, acc=y)
            saved[name] = _Proj(x, h)
        else:
            saved[name] = _Proj(x)
        return y

    def _proj_bwd(self, i: int, name: str, dy, saved: dict, grads: dict, acc=None):
        """dx of one projection (accumulated onto acc); LoRA grads into `grads`."""
        be, L = self.be, self.layers[i]
        dx = be.bitlinear_backward(dy, L[name], acc)
        sp: _Proj = saved[name]
        if sp.h is not None:
            s = self.lora_cfg.scaling
            a_key, b_key = lora_key(i, name, "A"), lora_key(i, name, "B")
            grads[b_key] = be.matmul(dy, sp.h, trans_a=True, alpha=s)                  # (out, r)
            dh = be.matmul(dy, self.lora[b_key], alpha=s)                               # (N, r)
            if not self.lora_cfg.freeze_A:
                grads[a_key] = be.matmul(dh, sp.x, trans_a=True)                        # (r, in)
            dx = be.matmul(dh, self.lora[a_key], acc=dx)                                # (N, in)
        return dx

    # ------------------------------------------------------------------ passes
    def forward(self, ids: np.ndarray, *, keep: bool = False):
        """Logits for ids int (B, T) -> backend tensor (B*T, V); with keep=True also the saved
        activations for `backward`."""
        cfg, be = self.cfg, self.be
        B, T = ids.shape
        Hq, Hkv, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        x = be.embedding(be.tensor(ids.reshape(-1).astype(np.int32)), self.embed)     # (N, D)
        acts = []
        for i, L in enumerate(self.layers):
            sv: dict = {"x0": x}
            n, sv["rstd1"] = be.rmsnorm(x, L["input_layernorm"], eps)
            xq, xs = be.quantize_act(n)
            q = self._proj_fwd(i, "q_proj", n, xq, xs, sv)                              # (N, Hq*hd)
            k = self._proj_fwd(i, "k_proj", n, xq, xs, sv)                              # (N, Hkv*hd)
            v = self._proj_fwd(i, "v_proj", n, xq, xs, sv)
            sv["q"] = q = be.rope(q, T, Hq, hd, cfg.rope_theta)
            sv["k"] = k = be.rope(k, T, Hkv, hd, cfg.rope_theta)
            sv["v"] = v
            o, sv["lse"] = be.attention(q, k, v, B, T, Hq, Hkv, hd)                    # (N, Hq*hd)
            sv["o"] = o
            n, sv["rstd2"] = be.rmsnorm(o, L["attn_sub_norm"], eps)
            xq, xs = be.quantize_act(n)
            x = be.add(x, self._proj_fwd(i, "o_proj", n, xq, xs, sv))
            sv["x1"] = x
            n, sv["rstd3"] = be.rmsnorm(x, L["post_attention_layernorm"], eps)
            xq, xs = be.quantize_act(n)
            g = self._proj_fwd(i, "gate_proj", n, xq, xs, sv)                           # (N, I)
            u = self._proj_fwd(i, "up_proj", n, xq, xs, sv)
            sv["g"], sv["u"] = g, u
            h = be.relu2_gate(g, u)
            sv["h"] = h
            n, sv["rstd4"] = be.rmsnorm(h, L["ffn_sub_norm"], eps)
            xq, xs = be.quantize_act(n)
            x = be.add(x, self._proj_fwd(i, "down_proj", n, xq, xs, sv))
            if keep:
                acts.append(sv)
        nf, rstdf = be.rmsnorm(x, self.norm, eps)
        logits = be.matmul(nf, self.lm_head, trans_b=True)                             # (N, V)
        if keep:
            return logits, {"layers": acts, "x": x, "nf": nf, "rstdf": rstdf, "B": B, "T": T}
        return logits

    def backward(self, dlogits, saved: dict) -> dict[str, Any]:
        """LoRA gradients (backend tensors keyed like the adapter) from dlogits (N, V)."""
        cfg, be = self.cfg, self.be
        B, T = saved["B"], saved["T"]
        Hq, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        grads: dict[str, Any] = {}
        dn = be.matmul(dlogits, self.lm_head)                                            # (N, D)
        dx = be.rmsnorm_backward(dn, saved["x"], self.norm, saved["rstdf"])
        for i in reversed(range(len(self.layers))):
            L, sv = self.layers[i], saved["layers"][i]
            # MLP: x2 = x1 + down(ffn_sub_norm(h))
            dn = self._proj_bwd(i, "down_proj", dx, sv, grads)
            dh = be.rmsnorm_backward(dn, sv["h"], L["ffn_sub_norm"], sv["rstd4"])
            dg, du = be.relu2_gate_backward(dh, sv["g"], sv["u"])
            dn = self._proj_bwd(i, "gate_proj", dg, sv, grads)
            dn = self._proj_bwd(i, "up_proj", du, sv, grads, acc=dn)
            dx = be.add(dx, be.rmsnorm_backward(dn, sv["x1"], L["post_attention_layernorm"], sv["rstd3"]))
            # attention: x1 = x0 + o_proj(attn_sub_norm(o))
            dn = self._proj_bwd(i, "o_proj", dx, sv, grads)
            do = be.rmsnorm_backward(dn, sv["o"], L["attn_sub_norm"], sv["rstd2"])
            dq, dk, dv = be.attention_backward(do, sv["q"], sv["k"], sv["v"], sv["o"], sv["lse"],
                                               B, T, Hq, Hkv, hd)
            dq = be.rope(dq, T, Hq, hd, cfg.rope_theta, inverse=True)
            dk = be.rope(dk, T, Hkv, hd, cfg.rope_theta, inverse=True)
            dn = self._proj_bwd(i, "q_proj", dq, sv, grads)
            dn = self._proj_bwd(i, "k_proj", dk, sv, grads, acc=dn)
            dn = self._proj_bwd(i, "v_proj", dv, sv, grads, acc=dn)
            dx = be.add(dx, be.rmsnorm_backward(dn, sv["x0"], L["input_layernorm"], sv["rstd1"]))
        return grads

    def loss(self, ids: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
        """Summed next-token cross-entropy (nats) and count of predicted positions.

        ids, targets int (B, T); target < 0 marks padding."""
        logits = self.forward(ids)
        t = targets.reshape(-1).astype(np.int32)
        loss, _ = self.be.cross_entropy(logits, self.be.tensor(t), 0.0)
        return float(np.sum(self.be.numpy(loss), dtype=np.float64)), int(np.sum(t >= 0))

    def loss_and_grads(self, ids: np.ndarray, targets: np.ndarray) -> tuple[float, int, dict]:
        """Mean loss over predicted positions, their count, and LoRA gradients of that mean."""
        t = targets.reshape(-1).astype(np.int32)
        count = int(np.sum(t >= 0))
        if count == 0:
            raise ValueError("batch has no predicted positions (all targets are padding)")
        logits, saved = self.forward(ids, keep=True)
        loss, dlogits = self.be.cross_entropy(logits, self.be.tensor(t), 1.0 / count)
        grads = self.backward(dlogits, saved)
        return float(np.sum(self.be.numpy(loss), dtype=np.float64)) / count, count, grads
