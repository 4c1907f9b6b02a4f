"""LoRA adapters on disk in Hugging Face PEFT's layout, written atomically.

An adapter directory holds
  adapter_config.json         PEFT LoraConfig (peft_type "LORA", r, lora_alpha, target_modules,
                              lora_dropout 0, bias "none", task_type "CAUSAL_LM", ...), so
                              `peft.PeftModel.from_pretrained(bitnet_model, dir)` loads it.
                              base_model_name_or_path: a local base model as a path RELATIVE
                              to the adapter folder (so the pair can move together; a Hub id
                              is kept as given); the base's hash goes in the metadata
                              (`base_model_sha256`, as the node writes it).
  adapter_model.safetensors   float32 tensors named
                              base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
                              base_model.model.model.layers.{i}.mlp.{gate,up,down}_proj.lora_{A,B}.weight
                              lora_A (r, in), lora_B (out, r); y = W x + (alpha / r) * B (A x).
                              Its safetensors __metadata__ carries the caller's str -> str
                              metadata (round, base model hash, ...) plus "format": "pt" and
                              "bitswarm.lora" (JSON: init_std, freeze_A, which PEFT has no field for).

In memory an adapter is bitswarm's one LoRA form (kernels/lora.py `LoRAState`): a flat dict
`{"layers.{i}.{proj}.lora_A": A (r, in), "layers.{i}.{proj}.lora_B": B (out, r)}`, float32,
proj in config.PROJECTIONS; `save_adapter` takes it and `load_adapter` returns it.

Atomic replacement (`save_adapter`), for a target directory D in parent P:
  1. write both files into P/.D.tmp-XXXX, fsync each file and the directory;
  2. if D exists, rename D -> P/.D.old-XXXX;
  3. rename P/.D.tmp-XXXX -> D, fsync P;
  4. remove P/.D.old-XXXX.
A crash before 2 leaves D untouched (plus a stale tmp dir); between 2 and 3 D is missing but
.D.old-XXXX is a complete adapter, and `load_adapter(D)` reads it (read-only fallback); after 3 D
is the new adapter. The next `save_adapter` puts an orphaned old dir back if D is missing and
removes stale tmp/old dirs. Renames within one directory are atomic on POSIX. One writer per
adapter directory is assumed (the node's trainer): a save removes any other save's tmp dir.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from bitswarm.formats.hf_checkpoint import (hf_module_name, read_json, read_safetensors,
                                            read_safetensors_metadata)
from bitswarm.fsutil import replace_dir_atomic, write_file_durable
from bitswarm.kernels.config import PROJECTIONS, LoRAConfig
from bitswarm.kernels.lora import LoRAState, lora_key

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_RESERVED_META = ("format", "bitswarm.lora")
_KEY_RE = re.compile(r"^layers\.(\d+)\.(\w+)\.lora_(A|B)$")
_PEFT_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$")


def peft_key(layer: int, proj: str, which: str) -> str:
    """PEFT tensor name, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight."""
    if which not in ("A", "B"):
        raise ValueError(f"which must be 'A' or 'B', got {which!r}")
    return f"{PEFT_PREFIX}{hf_module_name(layer, proj)}.lora_{which}.weight"


def _parse_lora_key(key: str) -> tuple[int, str, str]:
    """(layer, proj, "A" | "B") of a LoRAState key; ValueError naming the key otherwise."""
    m = _KEY_RE.match(key) if isinstance(key, str) else None
    if not m or m.group(2) not in PROJECTIONS:
        raise ValueError(f"bad LoRA key {key!r}: expected 'layers.<i>.<proj>.lora_A|B' with proj "
                         f"in {PROJECTIONS}")
    return int(m.group(1)), m.group(2), m.group(3)


def adapter_config_json(lora_config: LoRAConfig, base_model: str) -> dict:
    """PEFT LoraConfig fields for `lora_config` (plain LoRA: no DoRA, no rsLoRA, no patterns)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model, "revision": None,
        "r": lora_config.rank, "lora_alpha": lora_config.alpha,
        "target_modules": [p for p in PROJECTIONS if p in lora_config.target_modules],
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def base_model_ref(base_model: str, adapter_dir: Path | str) -> str:
    """What adapter_config.json's base_model_name_or_path holds for `base_model`: an absolute
    local path becomes relative to adapter_dir (symlinks resolved on both sides); anything else
    (a Hub id, an already relative path) is kept as given."""
    if os.path.isabs(base_model):
        return os.path.relpath(Path(base_model).resolve(), Path(adapter_dir).resolve())
    return base_model


def read_adapter_metadata(adapter_dir: Path | str) -> dict[str, str]:
    """The metadata save_adapter stored (without the reserved keys), reading only the weight
    file's header. Raises ValueError naming the file when it is missing or malformed."""
    meta = read_safetensors_metadata(Path(adapter_dir) / WEIGHTS_FILE)
    for k in _RESERVED_META:
        meta.pop(k, None)
    return meta


def _siblings(adapter_dir: Path, kind: str) -> list[Path]:
    """.NAME.tmp-* / .NAME.old-* next to adapter_dir, newest first."""
    found = adapter_dir.parent.glob(f".{adapter_dir.name}.{kind}-*")
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime_ns,
                  reverse=True)


def _recover(adapter_dir: Path) -> None:
    """Finish or undo an interrupted save (see module docstring)."""
    olds = _siblings(adapter_dir, "old")
    if not adapter_dir.exists() and olds:
        os.rename(olds.pop(0), adapter_dir)
    for stale in olds + _siblings(adapter_dir, "tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def save_adapter(adapter_dir: Path | str, lora: LoRAState, lora_config: LoRAConfig, *,
                 base_model: str, metadata: dict[str, str]) -> None:
    """Write `lora` as a PEFT adapter directory, atomically replacing any existing one.

    lora: LoRAState {"layers.{i}.{proj}.lora_A": float32 (r, in), ".lora_B": float32 (out, r)},
    both matrices of every adapted projection, proj in lora_config.target_modules, r ==
    lora_config.rank. metadata: str -> str, stored in the safetensors header (keys "format" and
    "bitswarm.lora" are reserved). base_model: a Hub id or a local path, stored relative to
    adapter_dir (base_model_ref). Raises ValueError for a bad key, a missing A or B, shape,
    rank, non-finite value or metadata entry.
    """
    adapter_dir = Path(adapter_dir)
    if not lora:
        raise ValueError("empty LoRA state: nothing to save")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"adapter metadata must map str -> str; got {k!r}: {type(v).__name__}")
        if k in _RESERVED_META:
            raise ValueError(f"adapter metadata key {k!r} is reserved")
    tensors: dict[str, np.ndarray] = {}
    for key in lora:
        layer, proj, _ = _parse_lora_key(key)
        if proj not in lora_config.target_modules:
            raise ValueError(f"LoRA key {key!r}: {proj} is not in target_modules "
                             f"{lora_config.target_modules}")
        base = key.rsplit(".", 1)[0]
        if key.endswith("lora_B"):
            continue                                    # checked with its A
        if f"{base}.lora_B" not in lora:
            raise ValueError(f"LoRA key {base}.lora_B missing (its lora_A is given)")
        A, B = np.asarray(lora[key]), np.asarray(lora[f"{base}.lora_B"])
        r = lora_config.rank
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"LoRA key {key!r}: A {A.shape} / B {B.shape}, expected (r, in) / "
                             f"(out, r) with r = {r}")
        if not (np.isfinite(A).all() and np.isfinite(B).all()):
            raise ValueError(f"LoRA key {key!r}: non-finite values")
        tensors[peft_key(layer, proj, "A")] = np.ascontiguousarray(A, dtype=np.float32)
        tensors[peft_key(layer, proj, "B")] = np.ascontiguousarray(B, dtype=np.float32)
    extra = json.dumps({"init_std": lora_config.init_std, "freeze_A": lora_config.freeze_A},
                       sort_keys=True)
    blob = st_save(tensors, metadata={**metadata, "format": "pt", "bitswarm.lora": extra})
    config = json.dumps(adapter_config_json(lora_config, base_model_ref(base_model, adapter_dir)),
                        indent=2) + "\n"

    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(adapter_dir)
    def fill(tmp: Path) -> None:
        write_file_durable(tmp / WEIGHTS_FILE, blob)
        write_file_durable(tmp / CONFIG_FILE, config.encode("utf-8"))

    replace_dir_atomic(adapter_dir, fill)


def _read_config(path: Path) -> LoRAConfig:
    cfg = read_json(path, "adapter config")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type must be 'LORA'")
    unsupported = {"use_dora": True, "use_rslora": True, "fan_in_fan_out": True}
    for field, bad in unsupported.items():
        if cfg.get(field) == bad:
            raise ValueError(f"{path}: {field}={bad} is unsupported")
    if cfg.get("bias", "none") != "none" or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{path}: bias / rank_pattern / alpha_pattern are unsupported")
    targets = cfg.get("target_modules")
    if not isinstance(targets, list):
        raise ValueError(f"{path}: target_modules must be a list of module names")
    try:
        return LoRAConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                          target_modules=tuple(p for p in PROJECTIONS if p in targets)
                          if set(targets) <= set(PROJECTIONS) else tuple(targets))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc!r}") from exc


def load_adapter(adapter_dir: Path | str) -> tuple[LoRAState, LoRAConfig, dict[str, str]]:
    """Read an adapter written by `save_adapter` (or by PEFT with the same key layout).

    Returns (LoRAState {"layers.{i}.{proj}.lora_A": float32 (r, in), ".lora_B": float32
    (out, r)}, in (layer, PROJECTIONS) order; LoRAConfig; metadata without the reserved keys). If adapter_dir is missing because a save was
    interrupted, reads the complete previous adapter beside it (module docstring).
    Raises ValueError naming the file for a missing/corrupt file, unknown key, non-finite
    values, missing A or B,
    wrong rank, or modules outside target_modules.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        olds = _siblings(adapter_dir, "old") if adapter_dir.parent.is_dir() else []
        if not olds:
            raise ValueError(f"adapter directory not found: {adapter_dir}")
        adapter_dir = olds[0]
    config_path, weights_path = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    lora_config = _read_config(config_path)
    if not weights_path.is_file():
        raise ValueError(f"missing adapter weights {weights_path}")
    tensors, meta = read_safetensors(weights_path)
    extra = meta.pop("bitswarm.lora", None)
    meta.pop("format", None)
    if extra is not None:
        try:
            e = json.loads(extra)
            lora_config = LoRAConfig(rank=lora_config.rank, alpha=lora_config.alpha,
                                     target_modules=lora_config.target_modules,
                                     init_std=float(e["init_std"]), freeze_A=bool(e["freeze_A"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{weights_path}: bad 'bitswarm.lora' metadata: {exc!r}") from exc

    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = _PEFT_RE.match(name)
        if not m:
            raise ValueError(f"{weights_path}: unexpected tensor {name!r}")
        layer, proj, which = int(m.group(1)), m.group(3), m.group(4)
        if proj not in PROJECTIONS or peft_key(layer, proj, which) != name:
            raise ValueError(f"{weights_path}: unexpected tensor {name!r}")
        if proj not in lora_config.target_modules:
            raise ValueError(f"{weights_path}: tensor {name!r} is outside target_modules "
                             f"{lora_config.target_modules} of {config_path}")
        if t.dtype.kind != "f" or t.ndim != 2:
            raise ValueError(f"{weights_path}: tensor {name!r} must be a 2-D float, got "
                             f"{t.dtype} {t.shape}")
        t = t.astype(np.float32)
        if not np.isfinite(t).all():           # a diverged or corrupted adapter: never "valid"
            raise ValueError(f"{weights_path}: tensor {name!r} holds NaN or Inf")
        parts.setdefault((layer, proj), {})[which] = t
    if not parts:
        raise ValueError(f"{weights_path}: no LoRA tensors")
    lora: LoRAState = {}
    r = lora_config.rank
    for (layer, proj) in sorted(parts, key=lambda k: (k[0], PROJECTIONS.index(k[1]))):
        ab = parts[(layer, proj)]
        if set(ab) != {"A", "B"}:
            missing = peft_key(layer, proj, "B" if "A" in ab else "A")
            raise ValueError(f"{weights_path}: tensor {missing!r} missing")
        A, B = ab["A"], ab["B"]
        if A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{weights_path}: layer {layer} {proj}: A {A.shape} / B {B.shape} "
                             f"disagree with r={r} in {config_path}")
        lora[lora_key(layer, proj, "A")], lora[lora_key(layer, proj, "B")] = A, B
    return lora, lora_config, meta
