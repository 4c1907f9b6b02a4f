"""A LoRA adapter as a llama.cpp GGUF LoRA file (`llama-cli -m bitnet.gguf --lora adapter.gguf`).

Layout, as llama.cpp's convert_lora_to_gguf.py writes it:
    general.architecture = "bitnet"     (gguf-py MODEL_ARCH.BITNET; must equal the base model's
                                         arch: llama_adapter_lora_init checks it)
    general.type = "adapter", adapter.type = "lora", adapter.lora.alpha = alpha (float32),
    general.name = the caller's name (the base model's folder name), general.quantization_version = 2;
    per adapted projection two F32 tensors named after the base tensor (gguf-py's TensorNameMap,
    e.g. blk.{i}.attn_q.weight, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down) plus
    ".lora_a" / ".lora_b":
        lora_a = PEFT lora_A as is, NumPy (r, in)  -> GGUF ne = [in, r]
        lora_b = PEFT lora_B as is, NumPy (out, r) -> GGUF ne = [r, out]
    llama.cpp (src/llama-adapter.cpp) requires model ne[0] == a.ne[0] (in), model ne[1] ==
    b.ne[1] (out) and a.ne[1] == b.ne[0] (r), and scales B(A x) by alpha / r with r = b.ne[0].
    Neither matrix is transposed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bitswarm.formats.gguf_model import write_gguf
from bitswarm.formats.hf_checkpoint import hf_module_name
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import LoRAState

GGUF_ARCH = "bitnet"


def gguf_base_name(layer: int, proj: str, n_layers: int) -> str:
    """llama.cpp name of a projection's weight, e.g. (0, "q_proj") -> "blk.0.attn_q.weight",
    via gguf-py's TensorNameMap for arch bitnet (what convert_hf_to_gguf.py uses)."""
    import gguf
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, n_layers)
    name = tmap.get_name(f"{hf_module_name(layer, proj)}.weight", try_suffixes=(".weight",))
    if name is None:
        raise ValueError(f"gguf-py has no bitnet tensor name for layer {layer} {proj}")
    return name


def write_gguf_lora(path: Path | str, lora: LoRAState, lora_config: LoRAConfig, *,
                    name: str) -> Path:
    """Write `lora` (kernels/lora.py LoRAState: lora_A float32 (r, in), lora_B float32 (out, r))
    as a GGUF LoRA file at `path` (module docstring: layout), atomically. Returns the path.
    Raises ValueError for a key gguf-py cannot name."""
    import gguf
    path = Path(path)
    n_layers = 1 + max(int(k.split(".")[1]) for k in lora)
    w = gguf.GGUFWriter(path=None, arch=GGUF_ARCH)          # writes general.architecture
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_name(name)
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora_config.alpha))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key in (k for k in lora if k.endswith(".lora_A")):
        base = key.removesuffix(".lora_A")
        _, layer, proj = base.split(".")
        tensor = gguf_base_name(int(layer), proj, n_layers)
        w.add_tensor(f"{tensor}.lora_a", np.ascontiguousarray(lora[key], dtype=np.float32))
        w.add_tensor(f"{tensor}.lora_b", np.ascontiguousarray(lora[f"{base}.lora_B"], dtype=np.float32))
    return write_gguf(w, path)
