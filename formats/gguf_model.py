"""GGUF BitNet b1.58 models (llama.cpp arch "bitnet") -> BitNetWeights (writing: gguf_export).

Format: GGUF v2/v3 as read by gguf-py's `GGUFReader` (ggml-org/llama.cpp gguf-py). Metadata keys
and tensor names are llama.cpp's for MODEL_ARCH.BITNET (gguf-py constants.py; the graph is
src/models/bitnet.cpp):

    {arch}.embedding_length D, .block_count L, .feed_forward_length I,
    .attention.head_count Hq, .attention.head_count_kv Hkv, .attention.key_length hd,
    .attention.layer_norm_rms_epsilon, .rope.freq_base, .rope.dimension_count, .context_length,
    .hidden_activation; tokenizer.ggml.bos_token_id / eos_token_id
    token_embd (V, D), output_norm (D), blk.N.{attn_norm, attn_sub_norm, ffn_norm (D),
    ffn_sub_norm (I), attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down},
    optional output (V, D) (absent: tied to token_embd, as llama.cpp's bitnet graph always is)
    and optional per-projection blk.N.<proj>.scale (1,) multiplying the projection's output.

How llama.cpp's converter writes BitNet (convert_hf_to_gguf.py / conversion/bitnet.py,
BitnetModel): each projection becomes its DEQUANTIZED ternary weight, codes * mean|W|
(`weight_quant`: round(W / mean|W|).clamp(-1, 1) * mean|W|; a packed HF checkpoint is unpacked
and multiplied by its weight_scale), which TQ1_0/TQ2_0 then store exactly: every block's scale d
is the block absmax = mean|W| as fp16 (a block of all-zero codes gets d = 0). So per tensor

    codes = the block trits,  weight_scale = 1 / d  (TernaryLinear: W = codes / weight_scale).

BitnetModel subclasses TextModel, not LlamaModel, so Q/K rows are NOT permuted, and
llama_model_rope_type() returns LLAMA_ROPE_TYPE_NEOX for LLM_ARCH_BITNET: the rotate_half RoPE
of transformers and of bitswarm. Nothing to undo.

Activation: llama.cpp's bitnet graph uses SiLU unless `{arch}.hidden_activation` says otherwise
("Default to SiLU for backward compatibility", for the 1bitLLM models); bitswarm computes relu^2
(bitnet-b1.58-2B-4T). A file without the key therefore needs `hidden_act="relu2"` from the
caller, who knows which model it holds.

Exactness: codes are exact. weight_scale = fl32(1 / d) (correctly rounded), so codes /
weight_scale equals gguf's dequantization codes * d bit for bit whenever any float32 reciprocal
maps back to d; for ~18% of fp16 values none does, and it is then 1 ulp (6e-8 relative) off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bitswarm.fsutil import atomic_file
from bitswarm.kernels.config import (BitNetConfig, BitNetWeights, TernaryLinear,
                                     assemble_weights)

ARCH = "bitnet"
QK_K = 256                      # elements per TQ1_0 / TQ2_0 block
TQ1_0_BYTES = 54                # qs[48] (5 trits/byte), qh[4] (4 trits/byte), d fp16
TQ2_0_BYTES = 66                # qs[64] (4 crumbs/byte), d fp16
ZERO_TENSOR_SCALE = np.float32(1e5)   # 1 / max(mean|W|, 1e-5) of an all-zero tensor

# bitswarm projection name -> llama.cpp tensor base name (gguf-py MODEL_TENSOR for BITNET)
GGUF_PROJ = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
             "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
             "down_proj": "ffn_down"}
RELU2_NAMES = ("relu2", "relu_sqr", "relu_squared", "squared_relu")
DEFAULT_ROPE_FREQ_BASE = 10000.0    # llama.cpp's default when rope.freq_base is absent


# ---------------------------------------------------------------------------------------------
# block decoders (ggml-quants.c dequantize_row_tq1_0 / _tq2_0; gguf-py quants.py TQ1_0 / TQ2_0)

def write_gguf(w, path: Path) -> Path:
    """Write a filled gguf-py GGUFWriter `w` (header, key-values, tensors) to `path`
    atomically (a crash leaves the old file or none, never half a file); returns the path."""
    path = Path(path)
    with atomic_file(path) as tmp:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def decode_tq2_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ2_0 blocks uint8 (n, 66) -> (codes int8 (n, 256) in {-1,0,1}, d float16 (n,)).

    In each 32-byte half h of qs[64], byte m holds elements h*128 + 32*l + m at bit shift 2*l,
    value (q - 1) * d. Raises ValueError on the unused 2-bit code 3 (it would decode as +2).
    """
    n = blocks.shape[0]
    qs = blocks[:, :64].reshape(n, 2, 1, 32)
    q = (qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    if (q == 3).any():
        raise ValueError("TQ2_0 data holds the 2-bit code 3, which is not a ternary value")
    codes = q.reshape(n, QK_K).astype(np.int8) - np.int8(1)
    d = np.ascontiguousarray(blocks[:, 64:66]).view(np.float16).reshape(n)
    return codes, d


_POW3_5 = np.array([1, 3, 9, 27, 81], np.uint8)
_POW3_4 = np.array([1, 3, 9, 27], np.uint8)


def _trits(q: np.ndarray, pow3: np.ndarray) -> np.ndarray:
    """Bytes (n, k) holding len(pow3) trits as ceil(t*256/243) -> uint8 (n, len(pow3)*k).

    Trit j (most significant first) of byte q is ((uint8)(q * 3^j) * 3) >> 8; the uint8
    wrap-around of q * 3^j is part of the format. Output index j*k + m for byte m.
    """
    n, k = q.shape
    shifted = q.reshape(n, 1, k) * pow3.reshape(1, -1, 1)          # uint8, wraps mod 256
    return ((shifted.astype(np.uint16) * 3) >> 8).astype(np.uint8).reshape(n, -1)


def decode_tq1_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0 blocks uint8 (n, 54) -> (codes int8 (n, 256) in {-1,0,1}, d float16 (n,)).

    Elements 0..159 from qs[0:32] (5 trits/byte), 160..239 from qs[32:48] (5 trits/byte),
    240..255 from qh[4] (4 trits/byte); trit t stands for t - 1.
    """
    n = blocks.shape[0]
    t = np.concatenate([_trits(blocks[:, 0:32], _POW3_5), _trits(blocks[:, 32:48], _POW3_5),
                        _trits(blocks[:, 48:52], _POW3_4)], axis=1)
    codes = t.astype(np.int8) - np.int8(1)
    d = np.ascontiguousarray(blocks[:, 52:54]).view(np.float16).reshape(n)
    return codes, d


def ternary_scale(d: np.ndarray, codes: np.ndarray, what: str) -> np.float32:
    """The one per-tensor weight_scale = fl32(1/d) of blocks codes (n, 256) with scales d (n,).

    Blocks whose codes are all zero carry d = 0 (absmax quantization) and are ignored. Raises
    ValueError naming `what` if the other blocks' d differ (bitswarm's kernels take one scale
    per tensor) or if d is not finite and > 0. An all-zero tensor gets ZERO_TENSOR_SCALE.
    """
    used = d[np.any(codes != 0, axis=1)]
    if used.size == 0:
        return ZERO_TENSOR_SCALE
    bits = used.view(np.uint16)
    if (bits != bits[0]).any():
        vals = np.unique(used.astype(np.float32))
        raise ValueError(f"{what}: blocks carry {vals.size} different scales d "
                         f"({vals[:4].tolist()}...), but a BitNet tensor has one absmean "
                         "scale; per-block scales are unsupported")
    d0 = np.float32(used[0])
    if not np.isfinite(d0) or d0 <= 0:
        raise ValueError(f"{what}: block scale d = {d0}, need finite and > 0")
    return np.float32(np.float32(1.0) / d0)


# ---------------------------------------------------------------------------------------------
# file access

class _GgufFile:
    """A GGUFReader with typed, error-checked access; every error names the file."""

    def __init__(self, path: Path):
        import gguf  # imported here so the rest of bitswarm does not need it

        self.gguf = gguf
        self.path = path
        if not path.is_file():
            raise ValueError(f"missing file {path}")
        try:
            self.reader = gguf.GGUFReader(path, "r")
        except Exception as exc:  # ValueError, KeyError, struct/numpy errors on a bad file
            raise ValueError(f"cannot parse GGUF file {path}: {type(exc).__name__}: {exc}") \
                from exc
        self.fields = self.reader.fields
        self.tensors = {t.name: t for t in self.reader.tensors}

    # ---- metadata
    def has(self, key: str) -> bool:
        return key in self.fields

    def value(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        """Scalar metadata `key` as int/float/str/bool; ValueError if missing (when required)
        or of another type. Arrays are accepted when all their elements are equal (per-layer
        head counts)."""
        if key not in self.fields:
            if required:
                raise ValueError(f"{self.path}: missing metadata key {key!r}")
            return default
        f = self.fields[key]
        VT = self.gguf.GGUFValueType
        try:
            main = f.types[0]
            if main == VT.ARRAY:
                vals = f.contents()
                if not vals or any(v != vals[0] for v in vals):
                    raise ValueError(f"per-layer values {vals[:8]} are not all equal")
                v = vals[0]
                main = f.types[-1]
            else:
                v = f.contents()
        except (IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path}: metadata key {key!r} unreadable: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{self.path}: metadata key {key!r}: {exc}") from exc
        is_str, is_bool = main == VT.STRING, main == VT.BOOL
        is_int = main in (VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32,
                          VT.UINT64, VT.INT64)
        ok = {str: is_str, bool: is_bool, int: is_int,
              float: is_int or main in (VT.FLOAT32, VT.FLOAT64)}[kind]
        if not ok:
            raise ValueError(f"{self.path}: metadata key {key!r} has type {main.name}, "
                             f"expected {kind.__name__}")
        if main == VT.FLOAT32:
            # GGUF stores float32: take its shortest decimal (1e-05, not 9.99999974e-06),
            # which is what the converter was given and rounds back to the same float32.
            v = float(str(np.float32(v)))
        return kind(v)

    # ---- tensors
    def tensor(self, name: str, shape: tuple[int, ...]):
        """The ReaderTensor `name` with NumPy shape `shape` (ggml's dims reversed)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor {name!r} missing")
        t = self.tensors[name]
        got = tuple(int(x) for x in reversed(t.shape.tolist()))
        while len(got) > len(shape) and got[0] == 1:      # ggml pads dims with 1s
            got = got[1:]
        if got != tuple(shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {got}, expected {shape}")
        return t

    def float_tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A tensor of any type gguf-py can dequantize, as float32 `shape`."""
        t = self.tensor(name, shape)
        try:
            out = self.gguf.quants.dequantize(t.data, t.tensor_type)
            # copy: for F32 gguf returns a view into the file's memory map
            out = np.array(out, dtype=np.float32, copy=True).reshape(shape)
        except NotImplementedError as exc:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported type "
                             f"{t.tensor_type.name}: {exc}") from exc
        except ValueError as exc:   # truncated data: reshape fails
            raise ValueError(f"{self.path}: tensor {name!r} ({t.tensor_type.name}) "
                             f"is malformed: {exc}") from exc
        if not np.isfinite(out).all():
            raise ValueError(f"{self.path}: tensor {name!r} holds non-finite values")
        return out

    def ternary_tensor(self, name: str, shape: tuple[int, int]) -> TernaryLinear:
        """A TQ1_0 / TQ2_0 projection (out, in) -> TernaryLinear (see module docstring).

        F32/F16/BF16 projections (the converter's float outtypes) are accepted when they hold
        exactly {0, +a, -a} for one a > 0: weight_scale = fl32(1/a). Any other type, or a
        tensor that is not ternary with one scale, raises ValueError naming file and tensor.
        """
        Q = self.gguf.GGMLQuantizationType
        t = self.tensor(name, shape)
        what = f"{self.path}: tensor {name!r}"
        out, inp = shape
        if t.tensor_type in (Q.TQ1_0, Q.TQ2_0):
            nbytes = TQ1_0_BYTES if t.tensor_type == Q.TQ1_0 else TQ2_0_BYTES
            nblocks = out * inp // QK_K
            raw = np.asarray(t.data, dtype=np.uint8).reshape(-1)
            if inp % QK_K or raw.size != nblocks * nbytes:
                raise ValueError(f"{what} ({t.tensor_type.name}): {raw.size} bytes for "
                                 f"{shape}, expected {nblocks * nbytes}")
            blocks = raw.reshape(nblocks, nbytes)
            try:
                decode = decode_tq1_0 if t.tensor_type == Q.TQ1_0 else decode_tq2_0
                codes, d = decode(blocks)
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from exc
            scale = ternary_scale(d, codes, f"{what} ({t.tensor_type.name})")
            return TernaryLinear(codes=codes.reshape(out, inp), weight_scale=scale)
        if t.tensor_type in (Q.F32, Q.F16, Q.BF16):
            w = self.float_tensor(name, shape)
            a = np.abs(w)
            nz = a[a != 0]
            if nz.size and (nz != nz[0]).any():
                raise ValueError(f"{what} ({t.tensor_type.name}) is not ternary: its nonzero "
                                 f"magnitudes take {np.unique(nz).size} values")
            codes = np.sign(w).astype(np.int8)
            scale = ZERO_TENSOR_SCALE if nz.size == 0 else np.float32(np.float32(1) / nz[0])
            return TernaryLinear(codes=codes, weight_scale=np.float32(scale))
        raise ValueError(f"{what} has type {t.tensor_type.name}; ternary projections must be "
                         "TQ1_0 or TQ2_0 (or F32/F16/BF16 holding ternary values)")

    def close(self) -> None:
        # Drop every reference into the memory map; NumPy unmaps it when the last one goes.
        self.reader = None
        self.fields, self.tensors = {}, {}


# ---------------------------------------------------------------------------------------------
# config

def read_gguf_config(f: _GgufFile, hidden_act: str | None = None) -> BitNetConfig:
    """BitNetConfig from the metadata of an arch-"bitnet" file (keys in the module docstring).

    vocab_size comes from token_embd; tie_word_embeddings is false only when an `output`
    tensor exists. Raises ValueError naming the file for another architecture, an activation
    other than relu^2 (or none stated and `hidden_act` not given), partial or scaled RoPE, or
    key/value head dims that differ.
    """
    p = f.path
    arch = f.value("general.architecture", str, required=True)
    if arch != ARCH:
        raise ValueError(f"{p}: general.architecture is {arch!r}, expected {ARCH!r} "
                         "(llama.cpp MODEL_ARCH.BITNET)")
    k = lambda s: f"{ARCH}.{s}"  # noqa: E731
    act = f.value(k("hidden_activation"), str)
    if act is None:
        if hidden_act is None:
            raise ValueError(
                f"{p}: no {k('hidden_activation')} key; llama.cpp then runs SiLU (1bitLLM "
                "models), bitswarm only relu^2. Pass hidden_act='relu2' if this file holds a "
                "relu^2 model such as bitnet-b1.58-2B-4T")
        act = hidden_act
    elif hidden_act is not None and hidden_act != act:
        raise ValueError(f"{p}: file says {k('hidden_activation')}={act!r}, "
                         f"caller passed hidden_act={hidden_act!r}")
    if act not in RELU2_NAMES:
        raise ValueError(f"{p}: hidden activation {act!r} unsupported (bitswarm computes relu^2)")

    D = f.value(k("embedding_length"), int, required=True)
    L = f.value(k("block_count"), int, required=True)
    I = f.value(k("feed_forward_length"), int, required=True)
    Hq = f.value(k("attention.head_count"), int, required=True)
    Hkv = f.value(k("attention.head_count_kv"), int, default=Hq)
    if Hq <= 0 or Hkv <= 0:
        raise ValueError(f"{p}: head counts {Hq} / {Hkv} must be > 0")
    if D % Hq and not f.has(k("attention.key_length")):
        raise ValueError(f"{p}: embedding_length {D} is not a multiple of head_count {Hq}")
    hd = f.value(k("attention.key_length"), int, default=D // Hq)
    vd = f.value(k("attention.value_length"), int, default=hd)
    if vd != hd:
        raise ValueError(f"{p}: attention.value_length {vd} != key_length {hd}")
    n_rot = f.value(k("rope.dimension_count"), int, default=hd)
    if n_rot != hd:
        raise ValueError(f"{p}: rope.dimension_count {n_rot} != head dim {hd}; "
                         "partial RoPE is unsupported")
    rtype = f.value(k("rope.scaling.type"), str, default="none")
    factor = f.value(k("rope.scaling.factor"), float, default=1.0)
    linear = f.value(k("rope.scale_linear"), float, default=1.0)
    if rtype not in ("none", "linear") or factor not in (0.0, 1.0) or linear != 1.0:
        raise ValueError(f"{p}: RoPE scaling {rtype!r} factor {factor} (scale_linear {linear}) "
                         "unsupported; only unscaled RoPE")
    if "token_embd.weight" not in f.tensors:
        raise ValueError(f"{p}: tensor 'token_embd.weight' missing")
    emb_dims = f.tensors["token_embd.weight"].shape.tolist()
    V = int(emb_dims[1]) if len(emb_dims) >= 2 else -1
    vocab_key = f.value(k("vocab_size"), int, default=V)
    if vocab_key != V:
        raise ValueError(f"{p}: {k('vocab_size')}={vocab_key} but token_embd has {V} rows")
    try:
        return BitNetConfig(
            vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=L,
            num_attention_heads=Hq, num_key_value_heads=Hkv, head_dim=hd,
            rms_norm_eps=f.value(k("attention.layer_norm_rms_epsilon"), float, required=True),
            rope_theta=f.value(k("rope.freq_base"), float, default=DEFAULT_ROPE_FREQ_BASE),
            max_position_embeddings=f.value(k("context_length"), int,
                                            default=BitNetConfig.max_position_embeddings),
            tie_word_embeddings="output.weight" not in f.tensors,
            bos_token_id=f.value("tokenizer.ggml.bos_token_id", int),
            eos_token_id=f.value("tokenizer.ggml.eos_token_id", int))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: {exc}") from exc


def load_gguf_config(path: Path | str, *, hidden_act: str | None = None) -> BitNetConfig:
    """BitNetConfig of a GGUF file's metadata alone (read_gguf_config), no tensor data read.
    Raises ValueError naming the file as read_gguf_config does."""
    f = _GgufFile(Path(path))
    try:
        return read_gguf_config(f, hidden_act)
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# loading

def _projection(f: _GgufFile, i: int, proj: str, shape: tuple[int, int]) -> TernaryLinear:
    base = f"blk.{i}.{GGUF_PROJ[proj]}"
    w = f.ternary_tensor(f"{base}.weight", shape)
    if f"{base}.scale" in f.tensors:
        # llama.cpp's build_lora_mm multiplies the projection's output by this scalar.
        extra = f.float_tensor(f"{base}.scale", (1,))[0]
        if not np.isfinite(extra) or extra <= 0:
            raise ValueError(f"{f.path}: tensor {base + '.scale'!r} is {extra}, need > 0")
        w.weight_scale = np.float32(w.weight_scale / extra)
    return w


# llama.cpp tensor names of the non-projection tensors ({i}: layer).
_GGUF_NAMES = {
    "input_layernorm": "blk.{i}.attn_norm.weight", "post_attention_layernorm": "blk.{i}.ffn_norm.weight",
    "attn_sub_norm": "blk.{i}.attn_sub_norm.weight", "ffn_sub_norm": "blk.{i}.ffn_sub_norm.weight",
    "embed_tokens": "token_embd.weight", "norm": "output_norm.weight", "lm_head": "output.weight",
}


def load_gguf(path: Path | str, *, hidden_act: str | None = None) -> BitNetWeights:
    """Load a llama.cpp arch-"bitnet" GGUF file into host weights.

    Projections (TQ1_0 or TQ2_0; see `_GgufFile.ternary_tensor` for float ones) become
    TernaryLinear(codes int8 (out, in), weight_scale float32 = 1/d); norms, token_embd and an
    optional untied `output` become float32 via gguf-py's dequantization (any type it knows).
    `hidden_act` states the FFN activation when the file has no `bitnet.hidden_activation`
    key (see module docstring); only relu^2 is supported.

    Raises ValueError naming the file (and tensor) for a malformed file, another architecture,
    a missing tensor, a wrong shape, an unsupported tensor type, or block scales that differ
    within one projection.
    """
    f = _GgufFile(Path(path))
    try:
        config = read_gguf_config(f, hidden_act)
        return assemble_weights(
            config, lambda name, i, shape: f.float_tensor(_GGUF_NAMES[name].format(i=i), shape),
            lambda i, proj, shape: _projection(f, i, proj, shape))
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# tokenizer

# Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` names (llama-vocab.cpp), for the
# byte-level BPE ("gpt2") vocabularies bitswarm can rebuild exactly.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3")
_PRE_GPT2 = ("gpt-2", "gpt2", "default")


def load_gguf_tokenizer(path: Path | str):
    """Rebuild a `tokenizers.Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata.

    Supported: model "gpt2" (byte-level BPE: tokens, merges "a b", token_type) with pre
    "llama-bpe" (Llama 3, the bitnet-b1.58-2B-4T tokenizer: llama3 split regex, then byte
    level; ignore_merges as in its tokenizer.json) or "gpt-2"/"default" (GPT-2's byte-level
    regex). CONTROL tokens become special added tokens, USER_DEFINED plain added tokens. Like
    bitswarm's other tokenizers, encoding adds no BOS/EOS. Returns None for files without a
    tokenizer or with another model/pre (e.g. SentencePiece "llama"). ValueError naming the
    file for inconsistent tokenizer metadata or an unreadable file.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    f = _GgufFile(Path(path))
    try:
        model = f.value("tokenizer.ggml.model", str)
        pre = f.value("tokenizer.ggml.pre", str, default="default")
        if model != "gpt2" or pre not in _PRE_LLAMA3 + _PRE_GPT2:
            return None
        if "tokenizer.ggml.tokens" not in f.fields:
            raise ValueError(f"{f.path}: tokenizer model 'gpt2' without 'tokenizer.ggml.tokens'")
        try:
            tokens = f.fields["tokenizer.ggml.tokens"].contents()
            # absent merges: a pure byte-level vocabulary (gguf-py writes no empty arrays)
            merges = (f.fields["tokenizer.ggml.merges"].contents()
                      if "tokenizer.ggml.merges" in f.fields else [])
            types = (f.fields["tokenizer.ggml.token_type"].contents()
                     if "tokenizer.ggml.token_type" in f.fields else [1] * len(tokens))
        except (IndexError, UnicodeDecodeError, TypeError) as exc:
            raise ValueError(f"{f.path}: unreadable tokenizer metadata: {exc}") from exc
        if len(types) != len(tokens):
            raise ValueError(f"{f.path}: {len(types)} token types for {len(tokens)} tokens")
        pairs = []
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep or not a or not b:
                raise ValueError(f"{f.path}: malformed merge {m!r}")
            pairs.append((a, b))
        vocab = {t: i for i, t in enumerate(tokens)}
        llama3 = pre in _PRE_LLAMA3
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=llama3))
        if llama3:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        CONTROL, USER_DEFINED = 3, 4        # gguf TokenType
        special = [AddedToken(t, special=True, normalized=False)
                   for t, ty in zip(tokens, types) if ty == CONTROL]
        user = [AddedToken(t, special=False, normalized=False)
                for t, ty in zip(tokens, types) if ty == USER_DEFINED]
        tok.add_special_tokens(special)
        tok.add_tokens(user)
        return tok
    finally:
        f.close()
