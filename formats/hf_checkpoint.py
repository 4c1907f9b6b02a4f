"""Hugging Face `bitnet` checkpoints <-> BitNetWeights, without torch.

Format: a model directory as transformers writes it (config.json with model_type "bitnet",
model.safetensors or sharded model-XXXXX-of-YYYYY.safetensors + model.safetensors.index.json,
tokenizer.json). Tensor names are transformers' BitNetForCausalLM state-dict names
(`model.layers.{i}.self_attn.q_proj.weight`, ...; see `hf_module_name`).

Two layouts of a projection weight are read:
  * latent: float32/bfloat16/float16 (out, in) master weights, ternarized at load exactly as
    transformers' WeightQuant (integrations/bitnet.py) does in fp32:
        s = 1 / max(mean|W|, 1e-5);  codes = clamp(round_half_even(W * s), -1, 1)
    (BitNet b1.58, arXiv:2402.17764, eq. 1-3). This is what `quantization_mode: online`
    checkpoints (e.g. bitnet-b1.58-2B-4T-bf16) hold. A bitnet config WITHOUT a
    quantization_config block loads as a plain float model in transformers; bitswarm always
    ternarizes, since the model it trains is the BitNet one.
  * packed: uint8 (out/4, in), bit-pair i (bits 2i..2i+1) of packed row r is unpacked row
    i*(out/4) + r, codes 0 -> -1, 1 -> 0, 2 -> +1; plus a scalar `<module>.weight_scale`.

weight_scale conventions (bitswarm's TernaryLinear: dequantized W = codes / weight_scale,
so weight_scale = s = 1/mean|W|):
  * `linear_class: bitlinear` (transformers' default, and what `save_bitnet` writes):
    BitLinear.forward computes y = (xq @ codes^T) / (x_scale * weight_scale), i.e. the file's
    weight_scale IS s: taken as is. Verified end to end by tools/make_golden.py: transformers
    gives the same loss on tests/data/tiny-bitnet (latent, online) and on our packed save of it.
  * `linear_class: autobitlinear, quantization_mode: offline`: AutoBitLinear.forward computes
    y = (x_deq @ codes^T) * weight_scale, i.e. the file stores mean|W| = 1/s: we take the
    reciprocal.

bfloat16 is decoded without torch (safetensors' numpy framework cannot load it): the raw
little-endian uint16 words are shifted into the high half of a float32.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as st_save

from bitswarm.fsutil import fsync_dir, write_file_atomic
from bitswarm.kernels.ops.bitlinear.reference import ternarize

from bitswarm.kernels.config import (ATTN_PROJECTIONS, PROJECTIONS, BitNetConfig, BitNetWeights,
                                     LayerWeights, TernaryLinear, assemble_weights)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"


# transformers.BitNetConfig defaults (configuration_bitnet.py), used for fields config.json omits.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128256, "hidden_size": 2560, "intermediate_size": 6912,
    "num_hidden_layers": 30, "num_attention_heads": 20, "num_key_value_heads": None,
    "hidden_act": "relu2", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False,
    "attention_bias": False,
}
DEFAULT_ROPE_THETA = 500000.0   # BitNetConfig.default_theta

# safetensors dtype -> NumPy dtype for the ones safe_open(framework="numpy") can load.
_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "U8": np.uint8,
              "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


# transformers' state-dict names of the non-projection tensors ({i}: layer).
_HF_NAMES = {
    "input_layernorm": "model.layers.{i}.input_layernorm.weight",
    "post_attention_layernorm": "model.layers.{i}.post_attention_layernorm.weight",
    "attn_sub_norm": "model.layers.{i}.self_attn.attn_sub_norm.weight",
    "ffn_sub_norm": "model.layers.{i}.mlp.ffn_sub_norm.weight",
    "embed_tokens": "model.embed_tokens.weight", "norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}


def hf_module_name(layer: int, proj: str) -> str:
    """transformers module path of a projection, e.g. `model.layers.0.self_attn.q_proj`."""
    if proj not in PROJECTIONS:
        raise ValueError(f"unknown projection {proj!r}; expected one of {PROJECTIONS}")
    block = "self_attn" if proj in ATTN_PROJECTIONS else "mlp"
    return f"model.layers.{layer}.{block}.{proj}"


# ---------------------------------------------------------------------------------------------
# ternary helpers

def absmean_ternarize(w: np.ndarray) -> TernaryLinear:
    """Ternarize a latent weight (out, in) like transformers' WeightQuant, in float32: the
    bitlinear family's reference `ternarize` (s = 1 / max(mean|W|, QUANT_EPS), codes =
    clamp(round_half_even(W * s), -1, 1) int8) as a TernaryLinear(codes, s)."""
    codes, scale = ternarize(w)
    return TernaryLinear(codes=codes, weight_scale=scale)


def pack_ternary(codes: np.ndarray) -> np.ndarray:
    """int8 codes (out, in) in {-1,0,1} -> uint8 (out/4, in) in transformers' packed layout."""
    out = codes.shape[0]
    if codes.ndim != 2 or out % 4:
        raise ValueError(f"packing needs 2-D codes with out_features % 4 == 0, got {codes.shape}")
    if codes.min(initial=0) < -1 or codes.max(initial=0) > 1:
        raise ValueError("ternary codes must be in {-1, 0, 1}")
    u = (codes.astype(np.int16) + 1).astype(np.uint8)
    rows = out // 4
    packed = np.zeros((rows, codes.shape[1]), dtype=np.uint8)
    for i in range(4):
        packed |= u[i * rows:(i + 1) * rows] << np.uint8(2 * i)
    return packed


def unpack_ternary(packed: np.ndarray) -> np.ndarray:
    """uint8 (out/4, in) -> int8 codes (out, in). Raises ValueError on the unused code 3."""
    lanes = [(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(4)]
    u = np.concatenate(lanes, axis=0)
    if (u == 3).any():
        raise ValueError("packed ternary weight holds the invalid 2-bit code 3")
    return u.astype(np.int8) - 1


def _mean_absmean(S: np.float32, n: int) -> tuple[np.float32, np.float32]:
    """mean|W| of a weight whose |W| sums EXACTLY to S over n elements, as the two readers
    compute it: float32 division (torch's sum / numel, NumPy float32 mean) and bitswarm's
    float64 mean rounded to float32 (kernels/ops/bitlinear/reference.py ternarize)."""
    return np.float32(S) / np.float32(n), np.float32(np.float64(S) / np.float64(n))


def latent_weight(t: TernaryLinear) -> tuple[np.ndarray, bool]:
    """Latent float32 weight (out, in) whose absmean ternarization (transformers' WeightQuant,
    bitswarm's ternarize) gives back t.codes and t.weight_scale: the `autobitlinear` online
    layout, which PEFT can wrap (nn.Linear-based), for a ternary projection.

    Zeros stay 0; each nonzero is code * k_i * q with q a power of two and integers k_i >= 1
    summing to K <= 2^24, so every partial sum of |W| is exact in float32 in any order (torch's,
    NumPy's, float64's alike) and every reader gets the same mean|W| = fl32(K q / n). K is the
    one nearest fl32(1/weight_scale) * n / q with fl32(1 / mean|W|) == weight_scale. Returns
    (weight, exact): exact is False when no K gives the scale bit for bit (float32 may have no
    m with fl32(1/m) == weight_scale; then the nearest scale, within an ulp, is reproduced by
    every reader alike), or when the tensor has more than 2^24 nonzeros (one magnitude then;
    summation order may move the scale by an ulp).
    """
    codes = np.asarray(t.codes)
    s = np.float32(t.weight_scale)
    flat = codes.reshape(-1)
    n, nz = flat.size, np.flatnonzero(flat)
    nnz = nz.size
    if nnz == 0:
        return np.zeros(codes.shape, np.float32), bool(s == np.float32(1) / np.float32(1e-5))
    m0 = float(np.float32(1) / s)                    # the mean|W| to aim at
    if nnz <= 2**24:
        q = 2.0 ** np.ceil(np.log2(m0 * n / 2**24))  # K = m0 n / q <= 2^24
        K0 = int(round(m0 * n / q))
        best = None
        for K in sorted(range(max(nnz, K0 - 64), min(2**24, K0 + 64) + 1),
                        key=lambda k: abs(k - K0)):
            a, b = _mean_absmean(np.float32(K * q), n)
            if a != b:
                continue
            err = abs(float(np.float32(1) / max(a, np.float32(1e-5))) - float(s))
            if best is None or err < best[0]:
                best = (err, K)
            if err == 0:
                break
        if best is not None:
            base, extra = divmod(best[1], nnz)
            mags = np.full(nnz, base, np.float64)
            mags[:extra] += 1
            w = np.zeros(n, np.float32)
            w[nz] = (flat[nz] * mags * q).astype(np.float32)
            return w.reshape(codes.shape), best[0] == 0
    a = np.float32(m0 * n / nnz)
    return (codes.astype(np.float32) * a).astype(np.float32), False


# ---------------------------------------------------------------------------------------------
# config

def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object from `path`. Raises ValueError naming `what` and the path when the file is
    missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"missing {what} {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot parse {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _quant_config(raw: dict) -> dict:
    q = raw.get("quantization_config") or {}
    return {"linear_class": q.get("linear_class", "bitlinear"),
            "quantization_mode": q.get("quantization_mode", "offline"),
            "use_rms_norm": bool(q.get("use_rms_norm", False)),
            "present": bool(q)}


def read_config(model_dir: Path | str) -> BitNetConfig:
    """Parse `model_dir/config.json` into a BitNetConfig (transformers' defaults for omissions).

    Accepts RoPE theta as top-level `rope_theta` (transformers 4.x) or
    `rope_parameters: {rope_type: "default", rope_theta}` (transformers 5).
    Raises ValueError naming the file for a non-"bitnet" model_type or unsupported options
    (activation other than relu2, attention bias, scaled RoPE, RMSNorm inside BitLinear).
    """
    path = Path(model_dir) / CONFIG_FILE
    raw = read_json(path)
    if raw.get("model_type") != "bitnet":
        raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'bitnet'")
    c = {**_HF_DEFAULTS, **{k: v for k, v in raw.items() if k in _HF_DEFAULTS}}
    if c["hidden_act"] != "relu2":
        raise ValueError(f"{path}: hidden_act {c['hidden_act']!r} unsupported (need 'relu2')")
    if c["attention_bias"]:
        raise ValueError(f"{path}: attention_bias=true is unsupported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{path}: rope_type {rope.get('rope_type')!r} unsupported (need default)")
    theta = rope.get("rope_theta", raw.get("rope_theta", DEFAULT_ROPE_THETA))
    if _quant_config(raw)["use_rms_norm"]:
        raise ValueError(f"{path}: quantization_config.use_rms_norm=true is unsupported")
    heads = int(c["num_attention_heads"])
    kv = c["num_key_value_heads"]
    eos = c["eos_token_id"]
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    try:
        return BitNetConfig(
            vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(heads if kv is None else kv),
            head_dim=int(raw.get("head_dim") or int(c["hidden_size"]) // heads),
            rms_norm_eps=float(c["rms_norm_eps"]), rope_theta=float(theta),
            max_position_embeddings=int(c["max_position_embeddings"]),
            tie_word_embeddings=bool(c["tie_word_embeddings"]),
            bos_token_id=c["bos_token_id"], eos_token_id=eos)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_to_hf(config: BitNetConfig, *, packed: bool) -> dict:
    """config.json content transformers loads as BitNetForCausalLM.

    packed=True: `quantization_config` for uint8 weights + weight_scale (BitLinear, offline);
    packed=False: online AutoBitLinear over latent float weights.
    """
    out: dict[str, Any] = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "hidden_act": "relu2", "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings, "attention_bias": False,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "dtype": "float32",
        "quantization_config": (
            {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
            if packed else
            {"quant_method": "bitnet", "linear_class": "autobitlinear",
             "quantization_mode": "online"}),
    }
    return out


# ---------------------------------------------------------------------------------------------
# safetensors reading

def _st_header(path: Path) -> tuple[dict, int, dict[str, str]]:
    """(tensor entries, byte offset of the data section, __metadata__) of a safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            size = os.fstat(f.fileno()).st_size
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds file size {size}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ValueError(f"missing weight file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read safetensors file {path}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"cannot read safetensors file {path}: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"cannot read safetensors file {path}: header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"cannot read safetensors file {path}: __metadata__ must map str -> str")
    return header, 8 + n, metadata


class _TensorSource:
    """Name -> tensor lookup over one or several safetensors files of a model directory."""

    def __init__(self, model_dir: Path, files: list[Path] | None = None):
        if files is not None:
            self._index(files)
            return
        single = model_dir / WEIGHTS_FILE
        index = model_dir / INDEX_FILE
        if single.is_file():
            files = [single]
        elif index.is_file():
            wmap = read_json(index).get("weight_map")
            if not isinstance(wmap, dict):
                raise ValueError(f"{index}: no weight_map object")
            files = [model_dir / f for f in sorted(set(wmap.values()))]
        else:
            files = sorted(model_dir.glob("model-*.safetensors"))
        if not files:
            raise ValueError(f"no {WEIGHTS_FILE} (or sharded model-*.safetensors) in {model_dir}")
        self._index(files)

    def _index(self, files: list[Path]) -> None:
        self.metadata: dict[str, str] = {}
        self.where: dict[str, tuple[Path, dict, int]] = {}
        for f in files:
            header, data_start, self.metadata = _st_header(f)
            for name, info in header.items():
                ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                      and isinstance(info.get("shape"), list)
                      and all(isinstance(d, int) and d >= 0 for d in info["shape"])
                      and isinstance(info.get("data_offsets"), list)
                      and len(info["data_offsets"]) == 2
                      and all(isinstance(o, int) and o >= 0 for o in info["data_offsets"]))
                if not ok:
                    raise ValueError(f"cannot read safetensors file {f}: bad entry for {name!r}")
                self.where[name] = (f, info, data_start)

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor as stored (bf16 decoded to float32). ValueError names tensor and file."""
        if name not in self.where:
            files = sorted({str(p) for p, _, _ in self.where.values()})
            raise ValueError(f"tensor {name!r} missing from {', '.join(files)}")
        path, info, data_start = self.where[name]
        dtype, got = info.get("dtype"), tuple(info.get("shape", ()))
        if shape is not None and got != tuple(shape):
            raise ValueError(f"tensor {name!r} in {path} has shape {got}, expected {tuple(shape)}")
        if dtype == "BF16":
            begin, end = info["data_offsets"]
            count = int(np.prod(got, dtype=np.int64))
            if end - begin != 2 * count:
                raise ValueError(f"tensor {name!r} in {path}: {end - begin} bytes for {got} bf16")
            with open(path, "rb") as f:
                f.seek(data_start + begin)
                raw = np.frombuffer(f.read(end - begin), dtype="<u2")
            if raw.size != count:
                raise ValueError(f"tensor {name!r} in {path} is truncated")
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(got)
        if dtype not in _NP_DTYPES:
            raise ValueError(f"tensor {name!r} in {path} has unsupported dtype {dtype}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                return f.get_tensor(name)
        except Exception as exc:  # safetensors raises SafetensorError (not a ValueError)
            raise ValueError(f"cannot read tensor {name!r} from {path}: {exc}") from exc

    def get_f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = self.get(name, shape)
        if t.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} in {self.where[name][0]} is {t.dtype}, need float")
        return np.ascontiguousarray(t, dtype=np.float32)


def read_safetensors(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of one safetensors file (bf16 decoded to float32) and its __metadata__.

    Raises ValueError naming the file (and tensor) for a malformed or truncated file.
    """
    src = _TensorSource(Path(path).parent, files=[Path(path)])
    return {name: src.get(name) for name in src.where}, dict(src.metadata)


def read_safetensors_metadata(path: Path | str) -> dict[str, str]:
    """The __metadata__ (str -> str) of a safetensors file, reading only its header. Raises
    ValueError naming the file when it is missing or its header is malformed."""
    return dict(_st_header(Path(path))[2])


def _load_projection(src: _TensorSource, module: str, out_in: tuple[int, int],
                     quant: dict) -> TernaryLinear:
    out, inp = out_in
    wname, sname = f"{module}.weight", f"{module}.weight_scale"
    path = src.where[wname][0] if src.has(wname) else None
    if src.has(wname) and src.where[wname][1].get("dtype") == "U8":
        if out % 4:
            raise ValueError(f"tensor {wname!r} in {path} is packed but out_features={out} "
                             "is not a multiple of 4")
        packed = src.get(wname, (out // 4, inp))
        try:
            codes = unpack_ternary(packed)
        except ValueError as exc:
            raise ValueError(f"tensor {wname!r} in {path}: {exc}") from exc
        stored = src.get(sname)
        if stored.size != 1 or stored.dtype.kind != "f":
            raise ValueError(f"tensor {sname!r} in {src.where[sname][0]} must be one float, "
                             f"got {stored.dtype} {stored.shape}")
        stored = np.float32(stored.reshape(()))
        if not np.isfinite(stored) or stored <= 0:
            raise ValueError(f"tensor {sname!r} in {src.where[sname][0]} is {stored}, need > 0")
        # See module docstring: AutoBitLinear multiplies by the stored scale, BitLinear divides.
        scale = np.float32(1.0) / stored if quant["linear_class"] == "autobitlinear" else stored
        return TernaryLinear(codes=codes, weight_scale=np.float32(scale))
    w = src.get_f32(wname, (out, inp))
    if src.has(sname):
        # Unpacked offline checkpoint: weights already ternary, scale alongside.
        if not np.isin(w, (-1.0, 0.0, 1.0)).all():
            raise ValueError(f"tensor {wname!r} in {path} has a weight_scale but is not ternary")
        stored = np.float32(src.get(sname).astype(np.float32).reshape(-1)[0])
        scale = np.float32(1.0) / stored if quant["linear_class"] == "autobitlinear" else stored
        return TernaryLinear(codes=w.astype(np.int8), weight_scale=np.float32(scale))
    return absmean_ternarize(w)


def load_bitnet(model_dir: Path | str) -> BitNetWeights:
    """Load a Hugging Face `bitnet` model directory into host weights.

    Projections become TernaryLinear (codes int8 (out, in), weight_scale float32 = 1/mean|W|,
    layout and scale conventions in the module docstring); norms, embeddings and an untied
    lm_head become float32. Raises ValueError naming the file (and tensor) for a bad config,
    a missing tensor or a wrong shape.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    quant = _quant_config(read_json(model_dir / CONFIG_FILE))
    src = _TensorSource(model_dir)

    def tensor(name: str, layer: int | None, shape: tuple[int, ...]) -> np.ndarray:
        return src.get_f32(_HF_NAMES[name].format(i=layer), shape)

    def projection(layer: int, proj: str, shape: tuple[int, int]) -> TernaryLinear:
        return _load_projection(src, hf_module_name(layer, proj), shape, quant)

    return assemble_weights(config, tensor, projection)


# ---------------------------------------------------------------------------------------------
# saving

def state_dict(weights: BitNetWeights, *, latent: bool = False) -> dict[str, np.ndarray]:
    """transformers state dict of `weights`: the PACKED layout (uint8 (out/4, in) + float32 (1,)
    scales), or with latent=True float32 (out, in) latent weights (`latent_weight`) for the
    online autobitlinear layout."""
    c = weights.config
    sd: dict[str, np.ndarray] = {"model.embed_tokens.weight": weights.embed_tokens,
                                 "model.norm.weight": weights.norm}
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = layer.input_layernorm
        sd[f"{p}.post_attention_layernorm.weight"] = layer.post_attention_layernorm
        sd[f"{p}.self_attn.attn_sub_norm.weight"] = layer.attn_sub_norm
        sd[f"{p}.mlp.ffn_sub_norm.weight"] = layer.ffn_sub_norm
        for proj in PROJECTIONS:
            t = layer.proj[proj]
            if t.shape != c.proj_shape(proj):
                raise ValueError(f"layer {i} {proj}: codes {t.shape}, config wants "
                                 f"{c.proj_shape(proj)}")
            m = hf_module_name(i, proj)
            if latent:
                sd[f"{m}.weight"] = latent_weight(t)[0]
                continue
            sd[f"{m}.weight"] = pack_ternary(t.codes)
            # BitLinear convention (divides by it) == ours: store s itself, shape (1,) like
            # BitLinear's weight_scale buffer.
            sd[f"{m}.weight_scale"] = np.asarray([t.weight_scale], dtype=np.float32)
    if not c.tie_word_embeddings:
        if weights.lm_head is None:
            raise ValueError("config.tie_word_embeddings is false but weights.lm_head is None")
        sd["lm_head.weight"] = weights.lm_head
    return {k: np.ascontiguousarray(v, dtype=v.dtype if v.dtype == np.uint8 else np.float32)
            for k, v in sd.items()}


def save_bitnet(weights: BitNetWeights, model_dir: Path | str, *,
                tokenizer_json: str | None = None, latent: bool = False) -> None:
    """Write `weights` as a transformers `bitnet` checkpoint into `model_dir`.

    Files: model.safetensors, tokenizer.json (if given), then config.json. Packed (default):
    uint8 (out/4, in) codes + float32 (1,) weight_scale per projection (BitLinear convention =
    ours), quantization_config bitnet/bitlinear/offline: 2 bits a weight, but transformers
    builds its `BitLinear`, which PEFT cannot wrap. latent=True: float32 (out, in) latent
    weights chosen by `latent_weight` (absmean ternarization gives back the codes and, where
    float32 allows, the scale bit for bit), quantization_config bitnet/autobitlinear/online:
    nn.Linear-based AutoBitLinear, which PEFT wraps; 32 bits a weight. Each file is replaced atomically (temp file,
    fsync, os.replace); config.json is written last, so a reader never sees a new config with
    old weights. Raises ValueError for shapes that disagree with the config or out % 4 != 0.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = state_dict(weights, latent=latent)
    write_file_atomic(model_dir / WEIGHTS_FILE, st_save(tensors, metadata={"format": "pt"}))
    if tokenizer_json is not None:
        write_file_atomic(model_dir / TOKENIZER_FILE, tokenizer_json.encode("utf-8"))
    cfg = json.dumps(config_to_hf(weights.config, packed=not latent), indent=2,
                     sort_keys=True) + "\n"
    write_file_atomic(model_dir / CONFIG_FILE, cfg.encode("utf-8"))
    fsync_dir(model_dir)


def model_hash(model_dir: Path | str) -> str:
    """Hex SHA-256 identifying a base model: config.json and the weight files, by sorted name.

    Each file contributes its name, its byte length and its bytes, so renaming or moving bytes
    between files changes the hash. tokenizer.json is not included. ValueError if config.json
    or every weight file is missing.
    """
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        raise ValueError(f"missing file {model_dir / CONFIG_FILE}")
    weights = sorted(p.name for p in model_dir.iterdir() if p.is_file() and (
        p.name in (WEIGHTS_FILE, INDEX_FILE)
        or (p.name.startswith("model-") and p.name.endswith(".safetensors"))))
    if not weights:
        raise ValueError(f"no weight files ({WEIGHTS_FILE} or model-*.safetensors) in {model_dir}")
    h = hashlib.sha256()
    for name in sorted([CONFIG_FILE, *weights]):
        path = model_dir / name
        h.update(name.encode("utf-8") + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def random_bitnet(config: BitNetConfig, seed: int) -> BitNetWeights:
    """Seeded random BitNet weights (the default model until a pretrained one ships).

    Latent projection weights ~ N(0, 0.02^2) ternarized with absmean; all norm weights 1;
    embeddings (and an untied lm_head) ~ N(0, 0.02^2). float32, NumPy PCG64(seed), drawn in the
    order embed_tokens, then per layer the PROJECTIONS in order, then lm_head.
    """
    rng = np.random.default_rng(seed)
    D, I, V = config.hidden_size, config.intermediate_size, config.vocab_size

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    embed = normal((V, D))
    layers = []
    for _ in range(config.num_hidden_layers):
        layer = LayerWeights(input_layernorm=np.ones(D, np.float32),
                             post_attention_layernorm=np.ones(D, np.float32),
                             attn_sub_norm=np.ones(D, np.float32),
                             ffn_sub_norm=np.ones(I, np.float32))
        for proj in PROJECTIONS:
            layer.proj[proj] = absmean_ternarize(normal(config.proj_shape(proj)))
        layers.append(layer)
    lm_head = None if config.tie_word_embeddings else normal((V, D))
    return BitNetWeights(config=config, embed_tokens=embed, layers=layers,
                         norm=np.ones(D, np.float32), lm_head=lm_head)
