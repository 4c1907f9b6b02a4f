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
from functools import partial
from typing import Any, Protocol

import numpy as np

from bitswarm.kernels.backend import Backend
from bitswarm.kernels.config import NORMS, BitNetConfig, BitNetWeights, LoRAConfig
from bitswarm.kernels.lora import LoRAState, lora_key


@dataclass
class _Proj:
    """Saved forward state of one projection for the backward pass."""

    x: Any          # unquantized input (N, in), for dA; None without an adapter (or frozen A)
    h: Any = None   # LoRA hidden A x (N, r); None when the projection has no adapter


# Auto recomputation without an activation budget: every layer is recomputed once the saved
# activations would exceed this many bytes, none below (BitNetModel.recomputed_layers).
RECOMPUTE_ABOVE = 512 * 2**20
# ... unless the backend knows a discrete GPU's memory (Dawn's memory heaps: `device_memory`):
# then the budget is this share of it. An H200's 141 GB gives 35 GB, all of 2B-4T's 30 layers
# at 16 x 128 (~11 GiB); an 8 GiB laptop GPU, 2 GiB (a third of them).
DEVICE_MEMORY_SHARE = 4
_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")
# Projection groups run as one GEMM (bitlinear_group). q/k/v only: on an H200 at 2B-4T the fused
# q/k/v GEMM took 0.302 ms for 0.387 ms of separate launches (42% of the dp4a peak; k/v alone
# 24%), while fused gate+up took 1.052 ms for 2 x 0.493 (benchmarks/results/kernels-h200.json).
_GROUPS = (_QKV,)


class Attention(Protocol):
    """RoPE + self-attention of one layer, the part of `_layer` that differs between whole
    sequences and cached decoding: (model, layer i, q (N, Hq*hd), k, v (N, Hkv*hd)) ->
    (q and k after RoPE, v, o (N, Hq*hd), lse (Hq*N,) or None when no backward follows)."""

    def __call__(self, model: "BitNetModel", i: int, q, k, v) -> tuple: ...


class CausalAttention:
    """Causal attention within each of B sequences of T tokens, RoPE positions 0..T-1."""

    def __init__(self, B: int, T: int) -> None:
        self.B, self.T = B, T

    def __call__(self, model: "BitNetModel", i: int, q, k, v) -> tuple:
        c, be = model.cfg, model.be
        Hq, Hkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q = be.rope(q, self.T, Hq, hd, c.rope_theta)
        k = be.rope(k, self.T, Hkv, hd, c.rope_theta)
        o, lse = be.attention(q, k, v, self.B, self.T, Hq, Hkv, hd)
        return q, k, v, o, lse


class _Discard(dict):
    """A dict that keeps nothing: `_layer` saves into it when no backward will follow, so every
    temporary is freed as soon as its last name is rebound."""

    def __setitem__(self, key, value) -> None:
        pass


_DISCARD = _Discard()


class BitNetModel:
    """A frozen base model resident on a backend, with a LoRA adapter attached.

    Args:
        weights: host-side base weights (uploaded once; ternary codes stay packed on the GPU).
        backend: where the math runs (CpuBackend or GpuBackend).
        lora: adapter configuration; `set_lora` uploads the adapter's values.
    """

    # Activation recomputation in loss_and_grads (see there): True (every layer), False (none),
    # or None = auto, where `activation_budget` (bytes, or None) sets how many layers are saved.
    recompute: bool | None = None
    activation_budget: int | None = None

    def __init__(self, weights: BitNetWeights, backend: Backend, lora: LoRAConfig) -> None:
        be = backend
        # Tables in the backend's table storage (float16 on the GPU, float32 on NumPy); the
        # embedding gather and the lm_head read the same (tied) tensor.
        embed = be.table(weights.embed_tokens)
        layers = []
        for lw in weights.layers:
            L = {n: be.tensor(getattr(lw, n)) for n in NORMS}
            # Projections that read the same input share one upload and run as one GEMM.
            for group in _GROUPS:
                L.update(zip(group, be.ternary_group([lw.proj[p] for p in group])))
            L.update({p: be.ternary(w) for p, w in lw.proj.items() if p not in L})
            layers.append(L)
        self._bind(weights.config, backend, lora, embed=embed,
                   lm_head=embed if weights.lm_head is None else be.table(weights.lm_head),
                   norm=be.tensor(weights.norm), layers=layers)

    def _bind(self, cfg: BitNetConfig, backend: Backend, lora: LoRAConfig, *, embed, lm_head,
              norm, layers: list[dict]) -> None:
        """Set the model's fields from tensors already resident on `backend` (the one place
        they are set: __init__ uploads frozen weights, PretrainModel binds latent ones).
        layers[i] maps NORMS and PROJECTIONS names to backend tensors / ternary handles."""
        self.cfg, self.be, self.lora_cfg = cfg, backend, lora
        self.embed, self.lm_head, self.norm, self.layers = embed, lm_head, norm, layers
        self.lora: dict[str, Any] = {}
        self.recompute = None
        self.activation_budget = None

    def layer_activation_bytes(self, N: int) -> int:
        """Estimated bytes one layer's `_layer` saves for the backward pass at N token rows, its
        input x0 included: the residuals x0 and x1 (D each), the LoRA inputs of q/k/v (D, one
        shared tensor), o (qd), gate/up (D) and down (I), q/k/v after RoPE (qd + 2 kvd), o
        (qd) and g/u/h (3 I), float32: every (N, width) tensor saved with LoRA on all seven
        projections; fewer targets or a frozen A save less. rstd, lse and the rank-r hiddens
        are left out."""
        c = self.cfg
        qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        per_row = 4 * c.hidden_size + 3 * qd + 2 * kvd + 4 * c.intermediate_size
        return N * per_row * 4

    def layer_input_bytes(self, N: int) -> int:
        """Bytes a recomputed layer keeps from the forward pass: its input residual (N, D) f32."""
        return N * self.cfg.hidden_size * 4

    def saved_activation_bytes(self, N: int) -> int:
        """Estimated bytes of activations the plain (no recomputation) training step holds at
        its peak for N token rows: every layer's `layer_activation_bytes` (the layers have one
        shape, so this is L times one layer's). Within ~1.5x of the measured difference."""
        return len(self.layers) * self.layer_activation_bytes(N)

    def layers_within(self, budget: int, N: int) -> int:
        """How many layers' full activations loss_and_grads saves in `budget` bytes at N token
        rows, the others recomputed: L when all fit (L * layer_activation_bytes <= budget),
        else the most k >= 1 with
            k * layer_activation_bytes + (L - k) * layer_input_bytes <= budget
        (a saved layer's activations include its input; a recomputed layer still keeps its
        (N, D) input). That sum is the activation memory at the end of the forward, the peak
        (the last k layers are saved, see loss_and_grads). At least one: recomputing every
        layer peaks at L - 1 inputs plus one recomputed layer's activations in the backward,
        the same bytes as saving the last layer (measured, tiny model on lavapipe: 8 KiB less;
        tests/kernels/test_model_memory.py), so a
        budget below that floor buys nothing by recomputing the last layer too."""
        L, S, R = len(self.layers), self.layer_activation_bytes(N), self.layer_input_bytes(N)
        if L * S <= budget:
            return L
        return max(1, min(L - 1, (budget - L * R) // (S - R)))

    def recomputed_layers(self, N: int) -> int:
        """How many layers loss_and_grads recomputes for N token rows (the first ones; the
        others' activations are saved). `recompute` True: all, False: none. Auto (None): none
        on NumPy (host memory is plentiful, time is not); on a device-memory-limited backend,
        with a budget (effective_activation_budget, bytes) all but `layers_within(budget, N)`
        (at least the last layer is saved), and without one all or none: all when the saved
        activations would exceed RECOMPUTE_ABOVE (2B-4T at 512 tokens: ~2.7 GiB -> all, which
        keeps its 1 GiB peak-memory target; 125M: ~0.35 GiB -> none, the faster path)."""
        L = len(self.layers)
        if self.recompute is not None:
            return L if self.recompute else 0
        if not self.be.caps.device_memory_limited:
            return 0
        budget = self.effective_activation_budget()
        if budget is None:
            return L if self.saved_activation_bytes(N) > RECOMPUTE_ABOVE else 0
        return L - self.layers_within(budget, N)

    def effective_activation_budget(self) -> int | None:
        """The bytes recompute auto may spend on saved activations: `activation_budget` when
        set, else 1 / DEVICE_MEMORY_SHARE of the backend's `device_memory` (a discrete GPU's
        memory, known on Dawn), else None (the RECOMPUTE_ABOVE rule)."""
        if self.activation_budget is not None:
            return self.activation_budget
        mem = getattr(self.be, "device_memory", None)
        return None if mem is None else int(mem) // DEVICE_MEMORY_SHARE

    def recomputes(self, N: int) -> bool:
        """Whether loss_and_grads recomputes any layer for N token rows (recomputed_layers)."""
        return self.recomputed_layers(N) > 0

    # ------------------------------------------------------------------ adapter I/O
    def set_lora(self, state: LoRAState) -> None:
        """Upload adapter values (keys and shapes from kernels/lora.py). When `state` has the
        current adapter's keys and shapes (every round after the first), the values overwrite
        the same tensors in place: on the GPU the buffers, and so the bind groups naming them,
        stay cached (a round's first step built ~100 new ones per 12 layers). Measured on the
        H200, 125M 16 x 128: set_adapter ~1 ms either way, no step-time change beyond noise."""
        cur = self.lora
        if (cur and cur.keys() == state.keys()
                and all(tuple(cur[k].shape) == tuple(np.shape(v)) for k, v in state.items())):
            for k, v in state.items():
                self.be.assign(cur[k], v)
            return
        self.lora = {k: self.be.tensor(v) for k, v in state.items()}

    def get_lora(self) -> LoRAState:
        """Download the adapter as float32 host arrays (one GPU round trip for all of them)."""
        keys = list(self.lora)
        arrays = self.be.numpy_many([self.lora[k] for k in keys])
        return {k: np.array(a, dtype=np.float32) for k, a in zip(keys, arrays)}

    # ------------------------------------------------------------------ projections
    def _proj_fwd(self, i: int, name: str, x, xq, xs, saved: dict, y=None):
        """One projection of x (y: its BitLinear output when already computed by a group) plus
        its LoRA term; saves what the backward needs."""
        be, L = self.be, self.layers[i]
        if y is None:
            y = be.bitlinear(xq, xs, L[name])
        a_key = lora_key(i, name, "A")
        if a_key in self.lora:
            s = self.lora_cfg.scaling
            h = be.matmul(x, self.lora[a_key], trans_b=True)                          # (N, r)
            y = be.matmul(h, self.lora[lora_key(i, name, "B")], trans_b=True, alpha=s, acc=y)
            saved[name] = _Proj(x if not self.lora_cfg.freeze_A else None, h)
        else:
            saved[name] = _Proj(None)      # the STE input gradient needs no saved input
        return y

    def _group_fwd(self, i: int, names: tuple, x, xq, xs, saved: dict) -> list:
        ys = self.be.bitlinear_group(xq, xs, [self.layers[i][p] for p in names])
        return [self._proj_fwd(i, p, x, xq, xs, saved, y) for p, y in zip(names, ys)]

    def _proj_bwd(self, i: int, name: str, dy, saved: dict, grads: dict, acc=None):
        """dx of one projection (accumulated onto acc); LoRA grads into `grads`."""
        be, L = self.be, self.layers[i]
        dx = be.bitlinear_backward(dy, L[name], acc)
        sp: _Proj = saved.pop(name)          # dropped here: its input dies with this backward
        if sp.h is not None:
            s = self.lora_cfg.scaling
            a_key, b_key = lora_key(i, name, "A"), lora_key(i, name, "B")
            grads[b_key] = be.matmul(dy, sp.h, trans_a=True, alpha=s)                  # (out, r)
            dh = be.matmul(dy, self.lora[b_key], alpha=s)                               # (N, r)
            if not self.lora_cfg.freeze_A:
                grads[a_key] = be.matmul(dh, sp.x, trans_a=True)                        # (r, in)
            dx = be.matmul(dh, self.lora[a_key], acc=dx)                                # (N, in)
        return dx

    def _norm_bwd(self, i: int | None, name: str, dy, x, rstd, grads: dict):
        """Input gradient of RMSNorm `name` of layer i (i None: the final norm); the frozen base
        model gives its weight no gradient (PretrainModel's override does)."""
        w = self.norm if i is None else self.layers[i][name]
        return self.be.rmsnorm_backward(dy, x, w, rstd)

    # ------------------------------------------------------------------ passes
    def _layer(self, i: int, x, attn: "Attention", sv: dict | None):
        """Decoder layer i on the residual stream x (N, D) -> x (N, D); `attn` applies RoPE and
        attention (CausalAttention for whole sequences, generate.CachedAttention with a KV
        cache). With a dict `sv`, the activations the backward pass needs are saved into it;
        with None nothing is kept and every temporary is freed as soon as it is dead (names are
        rebound or deleted). Training, evaluation, generation and pretraining all run this."""
        be, L, eps = self.be, self.layers[i], self.cfg.rms_norm_eps
        sv = _DISCARD if sv is None else sv
        sv["x0"] = x
        n, sv["rstd1"] = be.rmsnorm(x, L["input_layernorm"], eps)
        xq, xs = be.quantize_act(n)
        q, k, v = self._group_fwd(i, _QKV, n, xq, xs, sv)            # (N, Hq*hd), (N, Hkv*hd) x2
        del n, xq, xs
        sv["q"], sv["k"], sv["v"], o, sv["lse"] = attn(self, i, q, k, v)  # q, k after RoPE
        del q, k, v
        sv["o"] = o                                                    # (N, Hq*hd)
        n, sv["rstd2"] = be.rmsnorm(o, L["attn_sub_norm"], eps)
        del o
        xq, xs = be.quantize_act(n)
        x = be.add(x, self._proj_fwd(i, "o_proj", n, xq, xs, sv))
        sv["x1"] = x
        n, sv["rstd3"] = be.rmsnorm(x, L["post_attention_layernorm"], eps)
        xq, xs = be.quantize_act(n)
        g, u = self._group_fwd(i, _GATE_UP, n, xq, xs, sv)      # (N, I) x2; separate launches
        del n, xq, xs
        sv["g"], sv["u"] = g, u
        h = be.relu2_gate(g, u)
        del g, u
        sv["h"] = h
        n, sv["rstd4"] = be.rmsnorm(h, L["ffn_sub_norm"], eps)
        del h
        xq, xs = be.quantize_act(n)
        y = self._proj_fwd(i, "down_proj", n, xq, xs, sv)
        del n, xq, xs
        return be.add(x, y)

    def _layer_backward(self, i: int, dx, sv: dict, B: int, T: int, grads: dict):
        """Backward of decoder layer i: dx (N, D) at its output -> dx at its input; gradients
        (LoRA, or every latent parameter in PretrainModel, through the _proj_bwd / _norm_bwd
        hooks) into `grads`. `sv` is what `_layer` saved; its entries are dropped as they die,
        so the layer's temporaries are freed during its own backward."""
        cfg, be = self.cfg, self.be
        Hq, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # MLP: x2 = x1 + down(ffn_sub_norm(h))
        dn = self._proj_bwd(i, "down_proj", dx, sv, grads)
        dh = self._norm_bwd(i, "ffn_sub_norm", dn, sv.pop("h"), sv["rstd4"], grads)
        del dn
        dg, du = be.relu2_gate_backward(dh, sv.pop("g"), sv.pop("u"))
        del dh
        dn = self._proj_bwd(i, "gate_proj", dg, sv, grads)
        del dg
        dn = self._proj_bwd(i, "up_proj", du, sv, grads, acc=dn)
        del du
        dx = be.add(dx, self._norm_bwd(i, "post_attention_layernorm", dn, sv.pop("x1"),
                                       sv["rstd3"], grads))
        del dn
        # attention: x1 = x0 + o_proj(attn_sub_norm(o))
        dn = self._proj_bwd(i, "o_proj", dx, sv, grads)
        do = self._norm_bwd(i, "attn_sub_norm", dn, sv["o"], sv["rstd2"], grads)
        del dn
        dq, dk, dv = be.attention_backward(do, sv.pop("q"), sv.pop("k"), sv.pop("v"),
                                           sv.pop("o"), sv["lse"], B, T, Hq, Hkv, hd)
        del do
        dq = be.rope(dq, T, Hq, hd, cfg.rope_theta, inverse=True)
        dk = be.rope(dk, T, Hkv, hd, cfg.rope_theta, inverse=True)
        dn = self._proj_bwd(i, "q_proj", dq, sv, grads)
        del dq
        dn = self._proj_bwd(i, "k_proj", dk, sv, grads, acc=dn)
        del dk
        dn = self._proj_bwd(i, "v_proj", dv, sv, grads, acc=dn)
        del dv
        return be.add(dx, self._norm_bwd(i, "input_layernorm", dn, sv.pop("x0"), sv["rstd1"],
                                         grads))

    def _trunk(self, ids: np.ndarray, saves: list | None = None, recompute: int = 0):
        """Embedding and every layer -> final residual x (N, D). With a list `saves`, per layer
        its input (the first `recompute` layers) or its saved activations (the others) is
        appended."""
        B, T = ids.shape
        attn = CausalAttention(B, T)
        x = self.be.embedding(self.be.tensor(ids.reshape(-1).astype(np.int32)), self.embed)
        for i in range(len(self.layers)):
            if saves is None or i < recompute:
                if saves is not None:
                    saves.append(x)
                x = self._layer(i, x, attn, None)
            else:
                sv: dict = {}
                x = self._layer(i, x, attn, sv)
                saves.append(sv)
        return x

    def forward(self, ids: np.ndarray, *, keep: bool = False):
        """Logits for ids int (B, T) -> backend tensor (B*T, V); with keep=True also every
        layer's saved activations for `backward`. (Training and evaluation use `loss_and_grads`
        / `loss`, which never hold the whole logits nor every layer's activations.)"""
        B, T = ids.shape
        acts: list | None = [] if keep else None
        x = self._trunk(ids, acts)
        nf, rstdf = self.be.rmsnorm(x, self.norm, self.cfg.rms_norm_eps)
        logits = self.be.matmul(nf, self.lm_head, trans_b=True)                        # (N, V)
        if keep:
            return logits, {"layers": acts, "x": x, "nf": nf, "rstdf": rstdf, "B": B, "T": T}
        return logits

    def backward(self, dlogits, saved: dict, grads: dict | None = None) -> dict[str, Any]:
        """Gradients (backend tensors keyed like the adapter) from dlogits (N, V) and the
        activations of forward(keep=True), into `grads` when given."""
        grads = {} if grads is None else grads
        self.backward_to_embedding(dlogits, saved, grads)
        return grads

    def backward_to_embedding(self, dlogits, saved: dict, grads: dict):
        """The backward pass from dlogits (N, V) down to the embedding output: returns dx
        (N, D) there; gradients into `grads`. `saved` (forward(keep=True)) is not modified."""
        be = self.be
        dn = be.matmul(dlogits, self.lm_head)                                            # (N, D)
        dx = self._norm_bwd(None, "norm", dn, saved["x"], saved["rstdf"], grads)
        del dn
        for i in reversed(range(len(self.layers))):
            dx = self._layer_backward(i, dx, dict(saved["layers"][i]), saved["B"], saved["T"],
                                      grads)
        return dx

    def loss(self, ids: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
        """Summed next-token cross-entropy (nats) and count of predicted positions.

        ids, targets int (B, T); target < 0 marks padding. The lm_head runs in vocab chunks
        fused with the loss (`lm_head_cross_entropy`): no (N, V) logits are held."""
        be = self.be
        t = targets.reshape(-1).astype(np.int32)
        x = self._trunk(ids)
        nf, _ = be.rmsnorm(x, self.norm, self.cfg.rms_norm_eps)
        del x
        loss, _ = be.lm_head_cross_entropy(nf, self.lm_head, be.tensor(t), 0.0, grad=False)
        return float(np.sum(be.numpy(loss), dtype=np.float64)), int(np.sum(t >= 0))

    def loss_and_grads(self, ids: np.ndarray, targets: np.ndarray) -> tuple[float, int, dict]:
        """Mean loss over predicted positions, their count, and LoRA gradients of that mean.

        ids, targets int (B, T) (target < 0: padding). Raises ValueError when no position is
        predicted. The backend's `batch_parts` may split the batch into sequence ranges that
        run concurrently (CpuBackend: one per core); each part's gradients are of its share of
        the same mean (scaled by 1 / the whole batch's count) and are summed, so a split
        changes float32 rounding only (summation order), never the result's meaning.

        Memory: the first `recomputed_layers(B*T)` layers keep only their residual input (N, D)
        from the forward pass, and the backward pass recomputes their activations one layer at
        a time from it (activation checkpointing, Chen et al. 2016, arXiv:1604.06174; each
        costs one more layer forward); the other layers keep their full activations
        (`layer_activation_bytes`). The lm_head + loss run in vocab chunks. The recomputed
        forward is the same op sequence on the same input, so the gradients are bit-identical
        whatever the recomputation, and those of forward(keep=True) + backward."""
        be = self.be
        t = np.asarray(targets).astype(np.int32)
        count = int(np.sum(t >= 0))
        if count == 0:
            raise ValueError("batch has no predicted positions (all targets are padding)")
        B, T = ids.shape
        recompute = self.recomputed_layers(B * T)
        done = be.run_parts([partial(self._part_loss_and_grads, ids[b0:b1], t[b0:b1], count,
                                     recompute) for b0, b1 in be.batch_parts(B, T)])
        loss, grads = done[0]
        for part_loss, part_grads in done[1:]:
            loss += part_loss
            for k, g in part_grads.items():
                grads[k] = be.add(grads[k], g)
        return loss / count, count, grads

    def _part_loss_and_grads(self, ids: np.ndarray, t: np.ndarray, count: int,
                             recompute: int) -> tuple[float, dict]:
        """Summed loss (float64, nats) of sequences ids (b, T) with targets t (b, T) int32, and
        the gradients of loss / count (count: the whole batch's predicted positions)."""
        be = self.be
        B, T = ids.shape
        t = t.reshape(-1)
        # The LAST layers are the saved ones: the backward reaches them first and frees each
        # dict as it goes, so no saved dict is alive when a recomputed layer's activations
        # exist and the peak stays the end of the forward (k S + (L - k) R). Saving the first
        # layers instead would hold their dicts through every recomputation: one more layer's
        # activations on top.
        saves: list = []
        x = self._trunk(ids, saves, recompute)
        nf, rstdf = be.rmsnorm(x, self.norm, self.cfg.rms_norm_eps)
        loss, dn = be.lm_head_cross_entropy(nf, self.lm_head, be.tensor(t), 1.0 / count)
        del nf
        grads: dict[str, Any] = {}
        dx = self._norm_bwd(None, "norm", dn, x, rstdf, grads)
        del dn, x
        attn = CausalAttention(B, T)
        for i in reversed(range(len(self.layers))):
            sv = saves.pop()
            if i < recompute:
                x_in, sv = sv, {}
                self._layer(i, x_in, attn, sv)            # recompute; its output is not needed
                del x_in
            dx = self._layer_backward(i, dx, sv, B, T, grads)
            del sv
        del dx
        return float(np.sum(be.numpy(loss), dtype=np.float64)), grads
