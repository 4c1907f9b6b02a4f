"""`node export`: a saved adapter as a PEFT directory or as a llama.cpp GGUF LoRA adapter.

peft  The native format (node/checkpoints.py): the adapter is validated with `load_adapter`,
      then its two files are copied byte for byte into a new directory that replaces --out
      atomically (tmp dir + fsync + rename, as save_adapter does).
gguf  A GGUF LoRA adapter for llama.cpp (`llama-cli -m bitnet.gguf --lora adapter.gguf`),
      laid out as llama.cpp's convert_lora_to_gguf.py writes it:
        general.architecture = "bitnet"     (gguf-py MODEL_ARCH.BITNET; must equal the base
                                             model's arch: llama_adapter_lora_init checks it)
        general.type = "adapter", adapter.type = "lora", adapter.lora.alpha = alpha (float32),
        general.name = the base model's directory name, general.quantization_version = 2;
        per adapted projection two F32 tensors named after the base tensor (gguf-py's
        TensorNameMap, e.g. blk.{i}.attn_q.weight, attn_k, attn_v, attn_output, ffn_gate,
        ffn_up, ffn_down) plus ".lora_a" / ".lora_b":
          lora_a = PEFT lora_A as is, NumPy (r, in)  -> GGUF ne = [in, r]
          lora_b = PEFT lora_B as is, NumPy (out, r) -> GGUF ne = [r, out]
        llama.cpp (src/llama-adapter.cpp) requires model ne[0] == a.ne[0] (in),
        model ne[1] == b.ne[1] (out) and a.ne[1] == b.ne[0] (r), and scales B(A x) by
        alpha / r with r = b.ne[0]. Neither matrix is transposed.
      Written to a temporary file beside --out, fsynced, then renamed over it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from bitswarm.fsutil import fsync_dir, replace_dir_atomic
from bitswarm.kernels.checkpoint import hf_module_name
from bitswarm.node.checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_adapter

FORMATS = ("peft", "gguf")
GGUF_ARCH = "bitnet"


def _base_model(adapter_dir: Path) -> str:
    try:
        return str(json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
                   .get("base_model_name_or_path") or "")
    except (OSError, ValueError):
        return ""          # load_adapter already validated the file; a missing name is allowed


def _check_out(adapter_dir: Path, out: Path) -> None:
    if out.resolve() == adapter_dir.resolve():
        raise ValueError(f"--out {out} is the adapter itself")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: parent directory {out.parent} does not exist")


def export_peft(adapter_dir: Path | str, out: Path | str) -> Path:
    """Copy a valid adapter directory to `out` (replacing any directory there atomically).

    Raises ValueError naming the adapter file for a missing/corrupt adapter (load_adapter),
    and naming --out when it is the adapter itself, a file, or has no parent directory.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    load_adapter(adapter_dir)                       # validate before touching --out
    _check_out(adapter_dir, out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    def fill(tmp: Path) -> None:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copyfile(adapter_dir / name, tmp / name)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())

    replace_dir_atomic(out, fill)
    return out


def gguf_base_name(layer: int, proj: str, n_layers: int) -> str:
    """llama.cpp name of a projection's weight, e.g. (0, "q_proj") -> "blk.0.attn_q.weight",
    via gguf-py's TensorNameMap for arch bitnet (what convert_hf_to_gguf.py uses)."""
    import gguf
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, n_layers)
    name = tmap.get_name(f"{hf_module_name(layer, proj)}.weight", try_suffixes=(".weight",))
    if name is None:
        raise ValueError(f"gguf-py has no bitnet tensor name for layer {layer} {proj}")
    return name


def export_gguf(adapter_dir: Path | str, out: Path | str) -> Path:
    """Write the adapter as a llama.cpp GGUF LoRA file at `out` (module docstring: layout).

    Raises ValueError naming the adapter file for a missing/corrupt adapter, and naming --out
    when it is a directory or has no parent directory.
    """
    import gguf
    adapter_dir, out = Path(adapter_dir), Path(out)
    pairs, lcfg, _meta = load_adapter(adapter_dir)
    _check_out(adapter_dir, out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path such as adapter.gguf")
    n_layers = 1 + max(int(k.split(".")[1]) for k in pairs)
    w = gguf.GGUFWriter(path=None, arch=GGUF_ARCH)          # writes general.architecture
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    base = _base_model(adapter_dir)
    w.add_name(Path(base).name if base else adapter_dir.name)
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lcfg.alpha))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, (A, B) in pairs.items():
        _, layer, proj = key.split(".")
        name = gguf_base_name(int(layer), proj, n_layers)
        w.add_tensor(f"{name}.lora_a", np.ascontiguousarray(A, dtype=np.float32))
        w.add_tensor(f"{name}.lora_b", np.ascontiguousarray(B, dtype=np.float32))
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return out


def export_adapter(adapter_dir: Path | str, fmt: str, out: Path | str) -> Path:
    """Dispatch on fmt ("peft" or "gguf"); raises ValueError naming --format otherwise."""
    if fmt == "peft":
        return export_peft(adapter_dir, out)
    if fmt == "gguf":
        return export_gguf(adapter_dir, out)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
