"""`node export`: a saved adapter as a PEFT directory or as a llama.cpp GGUF LoRA adapter, or a
base model as a llama.cpp GGUF model.

Adapters (--adapter DIR):
  peft  The native format (formats/peft_adapter.py): the adapter is validated with `load_adapter`,
        its weights copied byte for byte (metadata, base_model_sha256 included) and its
        adapter_config.json rewritten so base_model_name_or_path stays relative to the NEW
        folder (the base it named is found from there); the new directory replaces --out
        atomically (bitswarm.fsutil.replace_dir_atomic, as save_adapter does).
  gguf  A GGUF LoRA adapter for llama.cpp, written by formats/gguf_lora.py (layout there).
Base models (--model DIR or FILE.gguf):
  gguf  llama.cpp's arch-"bitnet" layout, written by formats/gguf_export.py; --type f32, f16,
        tq1_0 or tq2_0 (default tq2_0).
  hf    a Hugging Face `bitnet` folder in the online autobitlinear layout (float32 latent
        weights that ternarize back to the model: formats/hf_checkpoint.save_bitnet latent=True),
        which transformers loads as nn.Linear-based AutoBitLinear and PEFT can wrap; the
        folder replaces --out atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bitswarm.formats.gguf_export import TYPES, write_gguf_model
from bitswarm.formats.gguf_lora import write_gguf_lora
from bitswarm.formats.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, base_model_ref, load_adapter
from bitswarm.formats.hf_checkpoint import read_json, save_bitnet
from bitswarm.fsutil import replace_dir_atomic, write_file_durable
from bitswarm.node.models import load_model

FORMATS = ("peft", "gguf")
MODEL_FORMATS = ("gguf", "hf")
DEFAULT_TYPE = "tq2_0"


def _check_out(src: Path, out: Path, what: str = "adapter") -> None:
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the {what} itself")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: parent directory {out.parent} does not exist")


def _relocated_config(adapter_dir: Path, out: Path) -> bytes:
    """adapter_config.json of adapter_dir with a relative local base_model_name_or_path
    re-expressed relative to `out` (and an absolute one made relative)."""
    cfg = read_json(adapter_dir / CONFIG_FILE, "adapter config")
    base = cfg.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        local = Path(base) if os.path.isabs(base) else adapter_dir / base
        if os.path.isabs(base) or local.exists():
            cfg["base_model_name_or_path"] = base_model_ref(str(local.resolve()), out)
    return (json.dumps(cfg, indent=2) + "\n").encode("utf-8")


def export_peft(adapter_dir: Path | str, out: Path | str) -> Path:
    """Copy a valid adapter directory to `out` (replacing any directory there atomically); the
    weights byte for byte, the config with its base model path relative to `out`.

    Raises ValueError naming the adapter file for a missing/corrupt adapter (load_adapter),
    and naming --out when it is the adapter itself, a file, or has no parent directory.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    load_adapter(adapter_dir)                       # validate before touching --out
    _check_out(adapter_dir, out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    config = _relocated_config(adapter_dir, out)

    def fill(tmp: Path) -> None:
        write_file_durable(tmp / WEIGHTS_FILE, (adapter_dir / WEIGHTS_FILE).read_bytes())
        write_file_durable(tmp / CONFIG_FILE, config)

    replace_dir_atomic(out, fill)
    return out


def _check_file_out(src: Path, out: Path, what: str) -> None:
    _check_out(src, out, what)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path such as {what}.gguf")


def export_gguf(adapter_dir: Path | str, out: Path | str) -> Path:
    """Write the adapter as a llama.cpp GGUF LoRA file at `out` (layout: formats/gguf_lora.py).

    Raises ValueError naming the adapter file for a missing/corrupt adapter, and naming --out
    when it is a directory or has no parent directory.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    lora, lcfg, _meta = load_adapter(adapter_dir)
    _check_file_out(adapter_dir, out, "adapter")
    # general.name: the base model's folder or file name (the base need not be present here)
    base = read_json(adapter_dir / CONFIG_FILE, "adapter config").get("base_model_name_or_path")
    name = Path(base).name if isinstance(base, str) and base else adapter_dir.name
    return write_gguf_lora(out, lora, lcfg, name=name)


def export_model_gguf(model: Path | str, out: Path | str, qtype: str = DEFAULT_TYPE) -> Path:
    """Write a base model (checkpoint folder or .gguf file, node/models.py) as a llama.cpp
    arch-"bitnet" GGUF file at `out` with --type `qtype` (formats/gguf_export.py), atomically.

    Raises ValueError naming --type for an unknown type, --out when it is the model itself, a
    directory or has no parent directory, and the model's file for a bad checkpoint or a
    tokenizer GGUF cannot hold. --out is untouched on any error.
    """
    model, out = Path(model), Path(out)
    if qtype not in TYPES:
        raise ValueError(f"--type must be one of {', '.join(TYPES)}, got {qtype!r}")
    if not model.exists():
        raise ValueError(f"--model {model}: not found; expected a checkpoint folder or a .gguf "
                         "file")
    _check_file_out(model, out, "model")
    m = load_model(model)
    return write_gguf_model(out, m.weights, m.tokenizer.to_str(), qtype=qtype,
                            name=model.stem if model.is_file() else model.name,
                            tokenizer_where=f"{model} (its tokenizer)")


def export_model_hf(model: Path | str, out: Path | str) -> Path:
    """Write a base model (checkpoint folder or .gguf file) as a transformers `bitnet` folder in
    the online autobitlinear layout at `out` (replacing any folder there atomically).

    Raises ValueError naming --model for a missing or bad model and --out when it is the model
    itself, a file, or has no parent directory; --out is untouched on any error.
    """
    model, out = Path(model), Path(out)
    if not model.exists():
        raise ValueError(f"--model {model}: not found; expected a checkpoint folder or a .gguf "
                         "file")
    _check_out(model, out, "model")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    m = load_model(model)
    tok = m.tokenizer.to_str()
    replace_dir_atomic(out, lambda tmp: save_bitnet(m.weights, tmp, tokenizer_json=tok,
                                                    latent=True))
    return out


def export_adapter(adapter_dir: Path | str, fmt: str, out: Path | str) -> Path:
    """Dispatch on fmt ("peft" or "gguf"); raises ValueError naming --format otherwise."""
    if fmt == "peft":
        return export_peft(adapter_dir, out)
    if fmt == "gguf":
        return export_gguf(adapter_dir, out)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def export(*, adapter: Path | None, model: Path | None, fmt: str, out: Path,
           qtype: str | None = None) -> Path:
    """`node export`: exactly one of adapter / model. Raises ValueError naming the flag for
    both or neither, --format peft with --model, or --type with --adapter."""
    if (adapter is None) == (model is None):
        raise ValueError("give exactly one of --adapter DIR (an adapter) or --model DIR|FILE.gguf "
                         "(a base model)")
    if adapter is not None:
        if qtype is not None:
            raise ValueError("--type applies to --model exports only (adapters are float32)")
        return export_adapter(adapter, fmt, out)
    if fmt not in MODEL_FORMATS:
        raise ValueError(f"--format {fmt}: a base model exports as --format "
                         f"{' or '.join(MODEL_FORMATS)}")
    if fmt == "hf":
        if qtype is not None:
            raise ValueError("--type applies to --format gguf only (hf writes float32 latent "
                             "weights)")
        return export_model_hf(model, out)
    return export_model_gguf(model, out, DEFAULT_TYPE if qtype is None else qtype)
