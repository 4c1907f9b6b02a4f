"""The built-in default base model, used when `node start` gets no --model.

A 14.2M-parameter BitNet b1.58 (8 layers, hidden 384, GQA 6/2 heads, 4096-token byte-level BPE)
pretrained from scratch with bitswarm's own quantization-aware training engine on the Python
documentation and standard-library docstrings (PSF license). How it was made, its held-out
bits per byte and the command that reproduces it: docs/default-model.md.

It ships inside the package (node/default_model/: config.json, model.safetensors with packed
ternary weights, tokenizer.json) and is copied into the node's data dir, so every node holds
byte-identical files, hence the same base-model hash.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bitswarm.formats.hf_checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, read_config
from bitswarm.fsutil import copy_file_atomic

log = logging.getLogger("bitswarm.node")

PACKAGED_DIR = Path(__file__).with_name("default_model")
FILES = (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE)   # config.json last: it marks a complete copy
DEFAULT_CONFIG = read_config(PACKAGED_DIR)


def _same(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size \
        and a.read_bytes() == b.read_bytes()


def ensure_default_model(model_dir: Path) -> Path:
    """Make model_dir hold the packaged default model (copied unless already identical, e.g. a
    data dir from an older version still holding the former random default); returns model_dir.

    Each file is copied to a temp file and renamed into place, config.json last. Raises
    FileNotFoundError if the package was installed without its model files.
    """
    model_dir = Path(model_dir)
    missing = [f for f in FILES if not (PACKAGED_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the packaged default model lacks {missing} in {PACKAGED_DIR}")
    stale = [f for f in FILES if not _same(PACKAGED_DIR / f, model_dir / f)]
    if stale:
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / CONFIG_FILE).unlink(missing_ok=True)     # incomplete until re-written
        for f in FILES:
            copy_file_atomic(PACKAGED_DIR / f, model_dir / f)
        log.warning("no --model given: using the built-in default (BitNet b1.58, %.1fM params, "
                    "pretrained on English prose and technical docs; docs/default-model.md), copied to %s",
                    DEFAULT_CONFIG.num_parameters() / 1e6, model_dir)
    else:
        log.info("no --model given: using the built-in default at %s", model_dir)
    return model_dir

