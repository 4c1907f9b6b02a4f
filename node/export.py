"""`node export`: a saved adapter as a PEFT directory or as a llama.cpp GGUF LoRA adapter.

peft  The native format (formats/peft_adapter.py): the adapter is validated with `load_adapter`,
      then its two files are copied byte for byte into a new directory that replaces --out
      atomically (bitswarm.fsutil.replace_dir_atomic, as save_adapter does).
gguf  A GGUF LoRA adapter for llama.cpp, written by formats/gguf_lora.py (layout there).
"""
from __future__ import annotations

from pathlib import Path

from bitswarm.formats.gguf_lora import write_gguf_lora
from bitswarm.formats.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, load_adapter
from bitswarm.fsutil import replace_dir_atomic, write_file_durable
from bitswarm.node.models import adapter_base_model

FORMATS = ("peft", "gguf")


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
            write_file_durable(tmp / name, (adapter_dir / name).read_bytes())

    replace_dir_atomic(out, fill)
    return out


def export_gguf(adapter_dir: Path | str, out: Path | str) -> Path:
    """Write the adapter as a llama.cpp GGUF LoRA file at `out` (layout: formats/gguf_lora.py).

    Raises ValueError naming the adapter file for a missing/corrupt adapter, and naming --out
    when it is a directory or has no parent directory.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    lora, lcfg, _meta = load_adapter(adapter_dir)
    _check_out(adapter_dir, out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path such as adapter.gguf")
    try:
        name = adapter_base_model(adapter_dir).name
    except ValueError:                  # a PEFT adapter need not name its base model
        name = adapter_dir.name
    return write_gguf_lora(out, lora, lcfg, name=name)


def export_adapter(adapter_dir: Path | str, fmt: str, out: Path | str) -> Path:
    """Dispatch on fmt ("peft" or "gguf"); raises ValueError naming --format otherwise."""
    if fmt == "peft":
        return export_peft(adapter_dir, out)
    if fmt == "gguf":
        return export_gguf(adapter_dir, out)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
