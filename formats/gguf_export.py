"""BitNetWeights + a byte-level BPE tokenizer.json -> a llama.cpp arch-"bitnet" GGUF model.

Format: GGUF v3 written with gguf-py's GGUFWriter (ggml-org/llama.cpp gguf-py); keys and tensor
names are llama.cpp's for MODEL_ARCH.BITNET (gguf-py constants.py; src/llama-model.cpp loads
them), the same layout formats/gguf_model.py reads back:

    general.architecture "bitnet", general.name, general.file_type (LlamaFileType: ALL_F32,
    MOSTLY_F16, MOSTLY_TQ1_0, MOSTLY_TQ2_0), general.quantization_version;
    bitnet.{context_length, embedding_length, block_count, feed_forward_length,
    attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
    attention.layer_norm_rms_epsilon, rope.dimension_count, rope.freq_base, vocab_size},
    bitnet.rope.scaling.type "linear" + factor 1.0 (as convert_hf_to_gguf.py's BitnetModel),
    bitnet.hidden_activation "relu2";
    tokenizer.ggml.{model "gpt2", pre, tokens, token_type, merges, bos/eos_token_id,
    add_bos_token false, add_eos_token false} (bitswarm encodes without BOS/EOS).

Tensors: token_embd (V, D), output_norm (D), blk.N.{attn_norm, attn_sub_norm, ffn_norm (D),
ffn_sub_norm (I)} (1-D tensors are always F32), and per projection

    blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight = the ternary
        codes {-1, 0, +1} themselves (TQ1_0 / TQ2_0 blocks with d = 1, or F16 / F32), and
    blk.N.<...>.scale (1,) F32 = 1 / weight_scale = mean|W|,

which llama.cpp's bitnet graph multiplies into the projection's output (`wq_scale` etc.,
optional tensors of LLM_ARCH_BITNET). Unlike convert_hf_to_gguf.py, which folds mean|W| into the
weight (so TQ*_0 stores it as an fp16 block scale), this keeps the per-tensor scale in float32:
codes are exact and the scale is within 1 ulp for every type.

--type: f32 (every tensor F32), f16 (token_embd and projections F16), tq1_0 / tq2_0
(projections whose rows (in_features) are a multiple of 256 as TQ1_0 / TQ2_0, the others F16,
token_embd F16, as convert_hf_to_gguf.py falls back). An untied lm_head is written as
`output.weight`, which formats/gguf_model.py reads but stock llama.cpp's bitnet graph (always
tied) does not load.

Tokenizer: the Hugging Face tokenizer.json must be byte-level BPE that llama.cpp's "gpt2" model
reproduces: pre_tokenizer ByteLevel(add_prefix_space=false, use_regex=true) -> pre "gpt-2"
(GPT-2's split regex; also accepted with use_regex=false when there are no merges, where the
split changes nothing), or the Llama 3 Split + ByteLevel(use_regex=false) -> "llama-bpe"; no
normalizer. A vocabulary without merges (a pure byte-level one) gets no tokenizer.ggml.merges
key (gguf-py cannot write an empty array): formats/gguf_model.py reads that as no merges, but
llama.cpp requires the key. Added special tokens are CONTROL, other added tokens USER_DEFINED; ids missing below
vocab_size are "[PAD{id}]" tokens of type UNUSED (as convert_hf_to_gguf.py pads).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from bitswarm.formats.gguf_model import ARCH, GGUF_PROJ, LLAMA3_SPLIT, QK_K, write_gguf
from bitswarm.kernels.config import PROJECTIONS, BitNetWeights

log = logging.getLogger("bitswarm.formats")

TYPES = ("f32", "f16", "tq1_0", "tq2_0")
HIDDEN_ACTIVATION = "relu2"
# gguf TokenType values (gguf-py constants.py)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def gguf_tokenizer_fields(tokenizer_json: str | dict, vocab_size: int, where: str) -> dict:
    """The tokenizer.ggml.* values for a byte-level BPE tokenizer.json (module docstring).

    Returns {"pre": str, "tokens": [str] (len vocab_size), "types": [int], "merges": ["a b"]}.
    Raises ValueError naming `where` (the file) for a tokenizer llama.cpp's "gpt2" model would
    not reproduce, ids beyond vocab_size, or duplicate / missing ids.
    """
    t = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json
    model, pre = t.get("model") or {}, t.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{where}: tokenizer model {model.get('type')!r}; GGUF export needs "
                         "byte-level BPE")
    if t.get("normalizer") is not None:
        raise ValueError(f"{where}: a normalizer is set; GGUF export needs none")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("dropout"):
        raise ValueError(f"{where}: BPE options byte_fallback / continuing_subword_prefix / "
                         "end_of_word_suffix / dropout are not expressible in GGUF")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ignore_merges = bool(model.get("ignore_merges", False))
    if pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", False) \
            and (pre.get("use_regex", True) or not merges) and not ignore_merges:
        pre_name = "gpt-2"
    elif (pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2
          and pre["pretokenizers"][0].get("type") == "Split"
          and pre["pretokenizers"][0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT
          and pre["pretokenizers"][1].get("type") == "ByteLevel"
          and not pre["pretokenizers"][1].get("use_regex", True) and ignore_merges):
        pre_name = "llama-bpe"
    else:
        raise ValueError(f"{where}: pre-tokenizer {json.dumps(pre)[:120]} (ignore_merges "
                         f"{ignore_merges}) is neither GPT-2's ByteLevel nor Llama 3's split; "
                         "llama.cpp would tokenize it differently")
    tokens: list[str | None] = [None] * vocab_size
    types = [_UNUSED] * vocab_size
    entries = [(tok, int(i), _NORMAL) for tok, i in model.get("vocab", {}).items()]
    entries += [(a["content"], int(a["id"]), _CONTROL if a.get("special") else _USER_DEFINED)
                for a in t.get("added_tokens", [])]
    for tok, i, ty in entries:
        if not 0 <= i < vocab_size:
            raise ValueError(f"{where}: token {tok!r} has id {i}, outside the model's "
                             f"vocab_size {vocab_size}")
        if tokens[i] is not None and tokens[i] != tok:
            raise ValueError(f"{where}: id {i} is both {tokens[i]!r} and {tok!r}")
        tokens[i], types[i] = tok, ty
    tokens = [f"[PAD{i}]" if tok is None else tok for i, tok in enumerate(tokens)]
    return {"pre": pre_name, "tokens": tokens, "types": types, "merges": merges}


def _proj_type(qtype: str, in_features: int):
    import gguf
    Q = gguf.GGMLQuantizationType
    if qtype == "f32":
        return Q.F32
    if qtype in ("tq1_0", "tq2_0") and in_features % QK_K == 0:
        return Q.TQ1_0 if qtype == "tq1_0" else Q.TQ2_0
    return Q.F16


def write_gguf_model(path: Path | str, weights: BitNetWeights, tokenizer_json: str | dict, *,
                     qtype: str = "tq2_0", name: str = "bitnet", tokenizer_where: str = "tokenizer.json") -> Path:
    """Write `weights` and its tokenizer as a llama.cpp arch-"bitnet" GGUF file at `path`,
    atomically (bitswarm.fsutil.atomic_file). Layout and types: module docstring.

    weights: BitNetWeights (codes int8 (out, in), weight_scale float32 = 1/mean|W|; float32
    norms (D,) / (I,), embed_tokens (V, D)). qtype: one of TYPES. Raises ValueError naming
    --type for another qtype, and naming `tokenizer_where` for a tokenizer GGUF cannot hold
    (gguf_tokenizer_fields). Returns the path.
    """
    import gguf
    if qtype not in TYPES:
        raise ValueError(f"--type must be one of {', '.join(TYPES)}, got {qtype!r}")
    c = weights.config
    tok = gguf_tokenizer_fields(tokenizer_json, c.vocab_size, tokenizer_where)
    Q, FT = gguf.GGMLQuantizationType, gguf.LlamaFileType
    table_type = Q.F32 if qtype == "f32" else Q.F16
    w = gguf.GGUFWriter(path=None, arch=ARCH)             # writes general.architecture
    w.add_name(name)
    w.add_file_type({"f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "tq1_0": FT.MOSTLY_TQ1_0,
                     "tq2_0": FT.MOSTLY_TQ2_0}[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)   # as BitnetModel.set_gguf_parameters
    w.add_rope_scaling_factor(1.0)
    w.add_vocab_size(c.vocab_size)
    w.add_string(f"{ARCH}.hidden_activation", HIDDEN_ACTIVATION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if tok["merges"]:
        w.add_token_merges(tok["merges"])
    else:   # gguf-py cannot write an empty array
        log.warning("%s has no BPE merges: tokenizer.ggml.merges is left out, which "
                    "formats/gguf_model.py reads as none but llama.cpp refuses", tokenizer_where)
    if c.bos_token_id is not None:
        w.add_bos_token_id(c.bos_token_id)
    if c.eos_token_id is not None:
        w.add_eos_token_id(c.eos_token_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    def table(a: np.ndarray):
        return np.ascontiguousarray(a, dtype=np.float32 if table_type == Q.F32 else np.float16)

    w.add_tensor("token_embd.weight", table(weights.embed_tokens))
    w.add_tensor("output_norm.weight", np.ascontiguousarray(weights.norm, np.float32))
    if weights.lm_head is not None:
        w.add_tensor("output.weight", table(weights.lm_head))
    for i, layer in enumerate(weights.layers):
        b = f"blk.{i}"
        for gname, arr in (("attn_norm", layer.input_layernorm),
                           ("ffn_norm", layer.post_attention_layernorm),
                           ("attn_sub_norm", layer.attn_sub_norm),
                           ("ffn_sub_norm", layer.ffn_sub_norm)):
            w.add_tensor(f"{b}.{gname}.weight", np.ascontiguousarray(arr, np.float32))
        for proj in PROJECTIONS:
            t = layer.proj[proj]
            ty = _proj_type(qtype, t.shape[1])
            codes = t.codes.astype(np.float32)
            data = gguf.quants.quantize(codes, ty)       # ternary blocks: d = 1 exactly
            w.add_tensor(f"{b}.{GGUF_PROJ[proj]}.weight", data, raw_dtype=ty)
            w.add_tensor(f"{b}.{GGUF_PROJ[proj]}.scale",
                         np.asarray([np.float32(1) / np.float32(t.weight_scale)], np.float32))
    return write_gguf(w, path)
