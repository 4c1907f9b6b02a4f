"""`node eval`: held-out loss and bits per byte under the eval protocol of node/data.py."""
from __future__ import annotations

import math

import numpy as np

from bitswarm.kernels.model import BitNetModel
from bitswarm.node.data import Document, eval_windows, pack_batch


def evaluate(model: BitNetModel, docs: list[Document], ctx: int, batch_size: int = 16) -> dict:
    """Mean next-token cross-entropy over every predicted position of every eval window.

    Returns {"loss": nats/token, "tokens": predicted positions, "bytes": UTF-8 bytes of those
    tokens, "bits_per_byte": total nats / ln 2 / bytes}. Raises ValueError when there is
    nothing to predict (every file shorter than 2 tokens).
    """
    if ctx < 2:
        raise ValueError(f"--ctx must be >= 2, got {ctx}")
    windows = [w for d in docs for w in eval_windows(d, ctx)]
    if not windows:
        raise ValueError("no eval windows: every file has fewer than 2 tokens")
    # Group by length so full windows batch together; right padding is masked (target -1).
    windows.sort(key=lambda w: -len(w[0]))
    total_nats, total_tokens = 0.0, 0
    total_bytes = int(sum(int(np.sum(w[2])) for w in windows))
    for s in range(0, len(windows), batch_size):
        chunk = windows[s:s + batch_size]
        ids, tgt = pack_batch(chunk, len(chunk[0][0]))
        nats, n = model.loss(ids, tgt)
        total_nats += nats
        total_tokens += n
    return {
        "loss": total_nats / total_tokens,
        "tokens": total_tokens,
        "bytes": total_bytes,
        "bits_per_byte": total_nats / math.log(2) / max(1, total_bytes),
    }
