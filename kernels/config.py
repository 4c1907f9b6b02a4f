"""Model and adapter configuration, and the host-side container for BitNet b1.58 weights.

Symbols used in shapes across bitswarm.kernels:
    B = batch (sequences), T = sequence length, N = B*T tokens, D = hidden size,
    I = intermediate (FFN) size, V = vocab size, Hq / Hkv = query / key-value heads,
    hd = head dim, r = LoRA rank.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# The STE input gradient's arithmetic on a GPU (GpuBackend `ste`, BITSWARM_GPU_STE, node start
# --gpu-ste; kernels/ops/bitlinear/gpu.py ste_precision says what each means).
GPU_STE_CHOICES = ("auto", "f32", "f16", "i16", "i8")
# ... and on the CPU (CpuBackend `ste`, BITSWARM_CPU_STE, node start --cpu-ste;
# kernels/ops/bitlinear/cpu.py ste_mode says what each means).
CPU_STE_CHOICES = ("auto", "f32", "i24", "i16")
# The WebGPU implementation (BITSWARM_GPU_RUNTIME, node start --gpu-runtime;
# kernels/device/runtime.py says what each means).
GPU_RUNTIME_CHOICES = ("auto", "wgpu", "dawn")

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class BitNetConfig:
    """Architecture of a Hugging Face `bitnet` model (transformers' BitNetConfig fields)."""

    vocab_size: int = 32000
    hidden_size: int = 2560            # D
    intermediate_size: int = 6912      # I
    num_hidden_layers: int = 30
    num_attention_heads: int = 20      # Hq
    num_key_value_heads: int = 5       # Hkv (GQA: Hq % Hkv == 0)
    head_dim: int = 128                # hd; D == Hq * hd in every released model
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")

    def num_parameters(self) -> int:
        """Parameters of the model: embedding, norms, projections, plus an untied lm_head (a
        tied lm_head is the embedding, counted once)."""
        D, I, V = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = 3 * D + I + sum(o * i for o, i in map(self.proj_shape, PROJECTIONS))
        return V * D * (1 if self.tie_word_embeddings else 2) + D + self.num_hidden_layers * per_layer

    def proj_shape(self, name: str) -> tuple[int, int]:
        """(out_features, in_features) of a BitLinear projection."""
        D, I, hd = self.hidden_size, self.intermediate_size, self.head_dim
        return {
            "q_proj": (self.num_attention_heads * hd, D),
            "k_proj": (self.num_key_value_heads * hd, D),
            "v_proj": (self.num_key_value_heads * hd, D),
            "o_proj": (D, self.num_attention_heads * hd),
            "gate_proj": (I, D),
            "up_proj": (I, D),
            "down_proj": (D, I),
        }[name]


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA (Hu et al. 2021, arXiv:2106.09685): y = W x + (alpha / r) * B (A x).

    A (r, in) starts random (N(0, init_std)), B (out, r) starts at zero, so training starts from
    the base model exactly. `freeze_A` trains B only (FFA-LoRA, Sun et al. 2024): FedAvg of the
    adapters is then the exact average of the products B·A.
    """

    rank: int = 8                                   # r
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ATTN_PROJECTIONS
    init_std: float = 0.02
    freeze_A: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        bad = [m for m in self.target_modules if m not in PROJECTIONS]
        if bad or not self.target_modules:
            raise ValueError(f"unknown LoRA target modules {bad}; choose from {PROJECTIONS}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class TernaryLinear:
    """A frozen W1.58 projection: dequantized weight = codes / weight_scale.

    codes: int8 (out, in), values in {-1, 0, +1}.
    weight_scale: float32 scalar; absmean quantization gives 1 / max(mean|W|, 1e-5) (BitNet
        b1.58, arXiv:2402.17764, eq. 1-3; transformers' WeightQuant). The layer output is
        (xq @ codes^T) / (x_scale * weight_scale) with xq the int8 absmax activations.
    """

    codes: np.ndarray
    weight_scale: np.float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]


@dataclass
class LayerWeights:
    input_layernorm: np.ndarray            # float32 (D,)
    post_attention_layernorm: np.ndarray   # float32 (D,)
    attn_sub_norm: np.ndarray              # float32 (D,)
    ffn_sub_norm: np.ndarray               # float32 (I,)
    proj: dict[str, TernaryLinear] = field(default_factory=dict)  # keys: PROJECTIONS


@dataclass
class BitNetWeights:
    """Frozen base-model weights on the host, float32 except the ternary codes."""

    config: BitNetConfig
    embed_tokens: np.ndarray               # float32 (V, D)
    layers: list[LayerWeights]
    norm: np.ndarray                       # float32 (D,)
    lm_head: np.ndarray | None = None      # float32 (V, D); None when tied to embed_tokens

    @property
    def lm_head_weight(self) -> np.ndarray:
        return self.embed_tokens if self.lm_head is None else self.lm_head


NORMS = ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm")


def assemble_weights(config: BitNetConfig,
                     tensor: Callable[[str, int | None, tuple[int, ...]], np.ndarray],
                     projection: Callable[[int, str, tuple[int, int]], TernaryLinear]) -> BitNetWeights:
    """BitNetWeights from a file reader's two callbacks, in the one order every format loads:
    per layer its NORMS then its PROJECTIONS, then embed_tokens, norm and (untied) lm_head.

    tensor(name, layer, shape) -> float32 array of that shape, for name in NORMS (layer i) and
    "embed_tokens" / "norm" / "lm_head" (layer None); projection(layer, proj, (out, in)) ->
    TernaryLinear. Both raise ValueError naming the file and tensor when it is missing or wrong.
    """
    D, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    layers = []
    for i in range(config.num_hidden_layers):
        layer = LayerWeights(*(tensor(n, i, (I,) if n == "ffn_sub_norm" else (D,)) for n in NORMS))
        for p in PROJECTIONS:
            layer.proj[p] = projection(i, p, config.proj_shape(p))
        layers.append(layer)
    return BitNetWeights(
        config=config, embed_tokens=tensor("embed_tokens", None, (V, D)), layers=layers,
        norm=tensor("norm", None, (D,)),
        lm_head=None if config.tie_word_embeddings else tensor("lm_head", None, (V, D)))
