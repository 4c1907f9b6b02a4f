"""The one hash of a global adapter: what manifests, round records and state sync commit to.

SHA-256 over the tensors in sorted name order, each as its UTF-8 name followed by its float32
little-endian bytes in C order (shapes are implied by the expected shapes every node checks).
Two nodes hold bit-identical adapters exactly when the hashes match.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


def adapter_digest(state: Mapping[str, np.ndarray]) -> bytes:
    """32-byte SHA-256 of `state` (name -> array, cast to float32 little-endian)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k], "<f4").tobytes())
    return h.digest()


def adapter_sha256(state: Mapping[str, np.ndarray]) -> str:
    """Hex form of `adapter_digest` (64 lowercase chars): logs, rounds.jsonl, status."""
    return adapter_digest(state).hex()
