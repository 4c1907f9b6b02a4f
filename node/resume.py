"""What a node needs to continue after Ctrl-C, kill -9 or a reboot: the last completed round's
adapter (`<data-dir>/adapter`, PEFT layout, metadata round / swarm / base_model_sha256) and its
local state beside it (`<data-dir>/node_state.safetensors`): the error-feedback residual, the
AdamW moments and step count, and the data sampler's RNG state, all as of the end of that round.

Both files are replaced atomically after every round, adapter first. A crash between the two
leaves a state file of the round before; `load` then resumes the adapter and starts the local
state fresh (logged): the residual and the moments are accelerators, never the swarm's state.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from bitswarm.formats.hf_checkpoint import read_safetensors
from bitswarm.formats.peft_adapter import load_adapter
from bitswarm.fsutil import write_file_atomic
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import LoRAState

log = logging.getLogger("bitswarm.node")

STATE_FILE = "node_state.safetensors"


@dataclass
class LocalState:
    """residual: error-feedback residual per adapter key; moments: AdamW (m, v) per key; t:
    AdamW steps; rng: numpy bit_generator.state of the data sampler."""

    residual: dict[str, np.ndarray]
    moments: dict[str, tuple[np.ndarray, np.ndarray]]
    t: int
    rng: dict


@dataclass
class Resumed:
    """The last completed round (round), its adapter, and the local state when it matches."""

    round: int
    adapter: LoRAState
    local: LocalState | None


def save_local_state(data_dir: Path, rnd: int, st: LocalState) -> None:
    """Write node_state.safetensors for the end of round `rnd`, atomically."""
    tensors = {f"residual/{k}": np.ascontiguousarray(v, np.float32) for k, v in st.residual.items()}
    for k, (m, v) in st.moments.items():
        tensors[f"adam_m/{k}"] = np.ascontiguousarray(m, np.float32)
        tensors[f"adam_v/{k}"] = np.ascontiguousarray(v, np.float32)
    meta = {"round": str(rnd), "adam_t": str(st.t), "rng": json.dumps(st.rng)}
    write_file_atomic(Path(data_dir) / STATE_FILE, st_save(tensors, metadata=meta))


def _load_local_state(path: Path, rnd: int) -> LocalState | None:
    if not path.is_file():
        return None
    try:
        tensors, meta = read_safetensors(path)
        if int(meta["round"]) != rnd:
            log.warning("%s is of round %s, the adapter of round %d: local optimizer and "
                        "error-feedback state start fresh", path, meta["round"], rnd)
            return None
        residual = {k[9:]: v for k, v in tensors.items() if k.startswith("residual/")}
        moments = {k[7:]: (v, tensors[f"adam_v/{k[7:]}"]) for k, v in tensors.items()
                   if k.startswith("adam_m/")}
        return LocalState(residual, moments, int(meta["adam_t"]), json.loads(meta["rng"]))
    except (OSError, ValueError, KeyError, TypeError) as e:   # a corrupt file loses only speed
        log.warning("%s unreadable (%s): local optimizer and error-feedback state start fresh",
                    path, e)
        return None


def load(data_dir: Path, *, swarm: str, base_model: str, lora: LoRAConfig) -> Resumed | None:
    """The state to resume from, or None for a fresh data dir. Raises ValueError naming the
    adapter when the data dir holds an adapter of another swarm, base model or LoRA config
    (resuming would be wrong and overwriting it would lose it)."""
    adapter_dir = Path(data_dir) / "adapter"
    try:
        state, lcfg, meta = load_adapter(adapter_dir)
    except ValueError:
        if not adapter_dir.exists():
            return None
        raise
    theirs = {"swarm": meta.get("swarm"), "base model": meta.get("base_model_sha256"),
              "LoRA config": (lcfg.rank, lcfg.alpha, tuple(sorted(lcfg.target_modules)), lcfg.freeze_A)}
    ours = {"swarm": swarm, "base model": base_model,
            "LoRA config": (lora.rank, lora.alpha, tuple(sorted(lora.target_modules)), lora.freeze_A)}
    for what in theirs:
        if theirs[what] != ours[what]:
            raise ValueError(f"--data-dir {data_dir}: its adapter ({adapter_dir}) belongs to "
                             f"another {what} ({theirs[what]!r}, this node: {ours[what]!r}); "
                             f"use another --data-dir or move the adapter away")
    try:
        rnd = int(meta["round"])
    except (KeyError, ValueError):
        raise ValueError(f"{adapter_dir}: adapter metadata has no round") from None
    return Resumed(rnd, state, _load_local_state(Path(data_dir) / STATE_FILE, rnd))
