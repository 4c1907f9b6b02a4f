"""Quantization-aware pretraining of a BitNet b1.58 from scratch: gradients for EVERY parameter.

The forward pass is kernels/model.py's (W1.58A8 BitLinear everywhere, unquantized tied
lm_head). What changes for pretraining:
  * every projection keeps a latent float32 weight; each step it is ternarized per tensor with
    absmean (`Backend.ternarize`) and the forward runs on the ternary codes, exactly as the
    shipped packed checkpoint will;
  * the backward pass is the straight-through estimator through both quantizers (BitNet b1.58,
    arXiv:2402.17764; transformers' AutoBitLinear online mode): the latent weight receives the
    gradient of the dequantized weight, dW = dy^T @ (xq / x_scale), and inputs receive
    dy @ (codes / s);
  * RMSNorm weights get dw = sum_n dy * x * rstd; the tied embedding gets the scatter of the
    input gradient plus the lm_head term dlogits^T @ norm(x).

Latent parameters are a flat dict of backend tensors keyed like `param_shapes` ("embed_tokens",
"norm", "layers.{i}.input_layernorm", "layers.{i}.q_proj", ...). Training-only ops
(ternarize_all, dequantize_act, rmsnorm_weight_grad, embedding_backward) are Backend methods,
so the model code is written once, like BitNetModel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bitswarm.kernels.ops.bitlinear import reference as rt
from bitswarm.kernels.backend import Backend
from bitswarm.kernels.config import (NORMS, PROJECTIONS, BitNetConfig, BitNetWeights, LayerWeights,
                                     LoRAConfig, TernaryLinear)
from bitswarm.kernels.model import BitNetModel
from bitswarm.kernels.optim import AdamW, AdamWConfig



# ------------------------------------------------------------------------- latent parameters
def param_shapes(cfg: BitNetConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable tensor's key and shape (tied lm_head: no separate key)."""
    if not cfg.tie_word_embeddings:
        raise ValueError("pretraining supports tied embeddings only (tie_word_embeddings=true)")
    D, I = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens": (cfg.vocab_size, D), "norm": (D,)}
    for i in range(cfg.num_hidden_layers):
        for n in NORMS:
            shapes[f"layers.{i}.{n}"] = (I,) if n == "ffn_sub_norm" else (D,)
        for p in PROJECTIONS:
            shapes[f"layers.{i}.{p}"] = cfg.proj_shape(p)
    return shapes


def count_params(cfg: BitNetConfig) -> int:
    """Number of trainable parameters: BitNetConfig.num_parameters (tied embedding once)."""
    return cfg.num_parameters()


def init_latent(cfg: BitNetConfig, seed: int, std: float = 0.02) -> dict[str, np.ndarray]:
    """Fresh latent parameters: matrices ~ N(0, std^2), norm weights 1; float32, PCG64(seed),
    drawn in param_shapes order."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in param_shapes(cfg).items():
        out[k] = (np.ones(s, np.float32) if len(s) == 1
                  else (rng.standard_normal(s) * std).astype(np.float32))
    return out


def to_weights(cfg: BitNetConfig, latent: dict[str, np.ndarray]) -> BitNetWeights:
    """Host latent parameters -> BitNetWeights (projections ternarized with absmean), the form
    formats/hf_checkpoint.save_bitnet writes as a packed checkpoint."""
    layers = []
    for i in range(cfg.num_hidden_layers):
        lw = LayerWeights(*(np.asarray(latent[f"layers.{i}.{n}"], np.float32) for n in NORMS))
        for p in PROJECTIONS:
            codes, scale = rt.ternarize(latent[f"layers.{i}.{p}"])
            lw.proj[p] = TernaryLinear(codes, scale)
        layers.append(lw)
    return BitNetWeights(cfg, np.asarray(latent["embed_tokens"], np.float32), layers,
                         np.asarray(latent["norm"], np.float32))


# ------------------------------------------------------------------------- the model
@dataclass
class _Saved:
    x: Any            # unquantized projection input (N, in)
    xq: Any           # its int8 activations and per-token scales, as the forward used them
    xs: Any
    h: Any = None     # LoRA hidden (unused in pretraining; BitNetModel's field)


class PretrainModel(BitNetModel):
    """BitNetModel whose base weights are trainable latent tensors on the backend.

    Args:
        cfg: architecture (tied embeddings).
        latent: host float32 arrays keyed like param_shapes (uploaded once; the model's norm and
            embedding tensors ARE the latent tensors, so in-place optimizer updates are seen by
            the next forward).
        backend, ops: where the math runs and its training ops (default: the backend).
    Call `refresh()` after every optimizer step to re-ternarize the projections.
    """

    def __init__(self, cfg: BitNetConfig, latent: dict[str, np.ndarray], backend: Backend,
                 ops: Backend | None = None) -> None:
        shapes = param_shapes(cfg)
        missing = sorted(set(shapes) - set(latent))
        if missing:
            raise ValueError(f"latent parameters missing: {missing[:4]}...")
        for k, s in shapes.items():
            if tuple(np.shape(latent[k])) != s:
                raise ValueError(f"latent {k!r} has shape {np.shape(latent[k])}, expected {s}")
        # The latent tensors are the parameters; the ternary handles are derived from them by
        # refresh(), so the frozen-weight upload of BitNetModel.__init__ does not apply.
        self.ops = ops if ops is not None else backend
        self.params = {k: backend.tensor(np.asarray(latent[k], np.float32)) for k in shapes}
        embed = self.params["embed_tokens"]
        self._bind(cfg, backend, LoRAConfig(), embed=embed, lm_head=embed,
                   norm=self.params["norm"],
                   layers=[{n: self.params[f"layers.{i}.{n}"] for n in NORMS}
                           for i in range(cfg.num_hidden_layers)])
        self.refresh()

    def refresh(self) -> None:
        """Ternarize every latent projection (absmean, per tensor) for the next forward."""
        keys = [(i, p) for i in range(len(self.layers)) for p in PROJECTIONS]
        handles = self.ops.ternarize_all([self.params[f"layers.{i}.{p}"] for i, p in keys])
        for (i, p), h in zip(keys, handles):
            self.layers[i][p] = h

    def latent_numpy(self) -> dict[str, np.ndarray]:
        """Download every latent parameter as float32 host arrays."""
        return {k: np.array(self.be.numpy(v), dtype=np.float32) for k, v in self.params.items()}

    # ------------------------------------------------------------------ projections
    def _proj_fwd(self, i: int, name: str, x, xq, xs, saved: dict, y=None):
        saved[name] = _Saved(x, xq, xs)
        return self.be.bitlinear(xq, xs, self.layers[i][name]) if y is None else y

    def _proj_bwd(self, i: int, name: str, dy, saved: dict, grads: dict, acc=None):
        """Input gradient (accumulated onto acc) and the latent weight gradient of a projection,
        dW = dy^T @ (xq / x_scale) (straight-through through both quantizers)."""
        sp: _Saved = saved.pop(name)
        cache = saved.setdefault("_xdq", {})           # q/k/v and gate/up share one input
        xdq = cache.get(id(sp.xq))
        if xdq is None:
            cache.clear()
            xdq = cache[id(sp.xq)] = self.ops.dequantize_act(sp.xq, sp.xs)
        grads[f"layers.{i}.{name}"] = self.be.matmul(dy, xdq, trans_a=True)          # (out, in)
        return self.be.bitlinear_backward(dy, self.layers[i][name], acc)

    def _norm_bwd(self, i: int | None, name: str, dy, x, rstd, grads: dict):
        """Input gradient of an RMSNorm plus its weight gradient dw = sum_n dy * x * rstd."""
        grads[name if i is None else f"layers.{i}.{name}"] = self.ops.rmsnorm_weight_grad(dy, x, rstd)
        return super()._norm_bwd(i, name, dy, x, rstd, grads)

    # ------------------------------------------------------------------ passes
    def backward_full(self, ids: np.ndarray, dlogits, saved: dict) -> dict[str, Any]:
        """Gradients of every latent parameter (keys of param_shapes) from dlogits (N, V) and
        the activations of forward(keep=True): the shared layer backward of BitNetModel with
        this class's _proj_bwd / _norm_bwd, plus the tied embedding's two terms."""
        be = self.be
        g: dict[str, Any] = {}
        # Tied lm_head: logits = nf @ E^T -> dE += dlogits^T @ nf, dnf = dlogits @ E.
        d_head = be.matmul(dlogits, saved["nf"], trans_a=True)                     # (V, D)
        dx = self.backward_to_embedding(dlogits, saved, g)
        g["embed_tokens"] = be.add(d_head, self.ops.embedding_backward(ids.reshape(-1), dx,
                                                                       self.cfg.vocab_size))
        return g

    def loss_and_full_grads(self, ids: np.ndarray, targets: np.ndarray):
        """Mean next-token loss (backend scalar tensor handle downloaded lazily by the caller:
        returned as the per-token loss tensor), predicted count and every parameter's gradient.

        ids, targets int (B, T), target < 0 = padding. -> (loss_rows tensor (N,), count, grads).
        Raises ValueError when every target is padding.
        """
        t = targets.reshape(-1).astype(np.int32)
        count = int(np.sum(t >= 0))
        if count == 0:
            raise ValueError("batch has no predicted positions (all targets are padding)")
        logits, saved = self.forward(ids, keep=True)
        loss_rows, dlogits = self.be.cross_entropy(logits, self.be.tensor(t), 1.0 / count)
        del logits
        grads = self.backward_full(ids, dlogits, saved)
        return loss_rows, count, grads


# ------------------------------------------------------------------------- optimizer
# AdamW settings of pretraining (beta2 0.95 and decay 0.05, as is usual for LLM pretraining).
PRETRAIN_ADAMW = AdamWConfig(lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.05)


class PretrainOptimizer:
    """kernels.optim.AdamW over PretrainModel.params (weight decay on matrices only, norm
    weights not decayed), re-ternarizing the projections after every step."""

    def __init__(self, model: PretrainModel, cfg: AdamWConfig) -> None:
        shapes = param_shapes(model.cfg)
        self.model = model
        self.adamw = AdamW(model.be, cfg, decays=lambda k: len(shapes[k]) == 2)

    @property
    def t(self) -> int:
        return self.adamw.t

    def step(self, grads: dict[str, Any], lr: float) -> None:
        """One AdamW step on every parameter, then re-ternarize the projections."""
        self.adamw.step(self.model.params, grads, lr)
        self.model.refresh()
