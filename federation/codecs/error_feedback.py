"""Error feedback around any codec (EF-SGD, Karimireddy et al. 2019, arXiv:1901.09847, Alg. 2)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import Codec
from .container import Delta, encode_update, resolve_codec
from .int8_block import INT8_CODEC


class ErrorFeedback:
    """Keeps the residual e (what compression dropped so far, float32, same keys/shapes as the
    delta). compress(delta): p = delta + e; send C(p); e = p - decode(C(p)). The sum of decoded
    deltas over rounds then equals the sum of true deltas minus the current e, and |e| stays
    below half a quantization step per value instead of accumulating.

    codec: the wrapped Codec, or a registered wire name (its default instance). Raises
    ValueError for an unknown name.
    """

    def __init__(self, codec: Codec | str = INT8_CODEC) -> None:
        self.codec = resolve_codec(codec)
        self.residual: Delta = {}

    def compress(self, delta: Mapping[str, np.ndarray]) -> tuple[bytes, Delta]:
        """Encode delta + residual; returns (payload, decoded) like `encode_update`.

        Raises ValueError if keys/shapes differ from the previous call's, or on non-finite input.
        """
        if self.residual and (set(delta) != set(self.residual) or any(
                np.shape(delta[k]) != self.residual[k].shape for k in delta)):
            raise ValueError("delta keys/shapes differ from the error-feedback residual's")
        corrected = {k: np.asarray(v, dtype=np.float32) + self.residual.get(k, np.float32(0))
                     for k, v in delta.items()}
        payload, decoded = encode_update(corrected, codec=self.codec)
        self.residual = {k: corrected[k] - decoded[k] for k in corrected}
        return payload, decoded

    def reset(self) -> None:
        """Drop the residual (e.g. when the LoRA state is reset or reloaded)."""
        self.residual = {}
