"""The built-in default base model, used when `node start` gets no --model.

Until a pretrained default ships (issue 4), it is a small BitNet b1.58 with seeded random weights
and a byte-level tokenizer. It is written once into the node's data dir as a normal Hugging Face
`bitnet` checkpoint (packed ternary weights) and loaded from there, so it runs exactly the code
paths a real checkpoint does; the same seed gives every node byte-identical files, hence the same
base-model hash.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bitswarm.kernels.checkpoint import random_bitnet, save_bitnet
from bitswarm.kernels.config import BitNetConfig
from bitswarm.kernels.tokenizer import BYTE_VOCAB_SIZE, byte_level_tokenizer

log = logging.getLogger("bitswarm.node")

DEFAULT_SEED = 20261121
DEFAULT_CONFIG = BitNetConfig(
    vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
    max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=256, eos_token_id=257)


def ensure_default_model(model_dir: Path) -> Path:
    """Write the default model to model_dir unless it is already there; returns model_dir."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        log.warning("no --model given: using the built-in default, a small BitNet b1.58 with "
                    "seeded RANDOM weights (seed %d); written to %s", DEFAULT_SEED, model_dir)
        weights = random_bitnet(DEFAULT_CONFIG, seed=DEFAULT_SEED)
        save_bitnet(weights, model_dir, tokenizer_json=byte_level_tokenizer().to_str())
    else:
        log.warning("no --model given: using the built-in default (seeded RANDOM weights) at %s", model_dir)
    return model_dir
