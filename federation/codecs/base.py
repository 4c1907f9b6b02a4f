"""The codec seam: how one float32 tensor of a LoRA delta becomes payload fields and back.

A codec only turns a flat float32 tensor into a few msgpack fields (and back); the container
around them (sorted names, shapes, msgpack, zstd, every bound on hostile input) is shared by
all codecs (`container.py`). Shaped after hivemind's `CompressionBase` (compress / extract)
with `BASE_COMPRESSION_TYPES` keyed by the name on the wire (here `registry.CODECS`).

A new codec is one subclass of `Codec` in its own module, one line in `registry.CODECS`, and
its test; `tests/federation/codecs/test_registry.py` already runs every registered codec
through round trip, determinism, size bound and hostile-field checks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np


class CodecError(ValueError):
    """A payload failed to decode or validate; the message names the cause."""


class Codec(ABC):
    """One payload codec.

    Class attributes:
        wire_name: the name in manifests and containers, e.g. "int8-block-zstd/1"; a new
            encoding is a new name (never change what an existing name means).
        header_fields: container keys besides "codec" and "tensors" (e.g. ("block",)), in the
            order they are written; `header()` and `from_header` handle them.
        tensor_fields: how many fields follow [name, shape] in each tensor entry.
        max_rel_error: bound on |x - decoded| per value as a fraction of the tensor's absmax
            (0 lossless), or None for codecs without a per-value bound (sparsifying,
            ternary): those rely on error feedback to deliver what they drop later.

    Contract: the container must stay within `container.decompressed_bound` (4 bytes per value
    plus framing), `encode_tensor` and `decode_tensor` must give the same float32 bits for the
    same fields (so a sender knows what receivers aggregate), and `decode_tensor` must raise
    CodecError, never anything else, for any fields a peer sends.
    """

    wire_name: ClassVar[str]
    header_fields: ClassVar[tuple[str, ...]] = ()
    tensor_fields: ClassVar[int]
    max_rel_error: ClassVar[float | None] = None

    def header(self) -> dict[str, Any]:
        """Container fields of this codec's parameters (keys: `header_fields`, in order)."""
        return {}

    @classmethod
    def from_header(cls, container: Mapping[str, Any]) -> Codec:
        """The codec a received container describes (its `header_fields` are present; the
        values are unchecked peer input). Raises CodecError for bad values."""
        return cls()

    @abstractmethod
    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """x: float32 (n,), finite, n >= 1 -> (`tensor_fields` msgpack values, decoded float32
        (n,) bit-identical to what `decode_tensor` gives for those values)."""

    @abstractmethod
    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        """Unchecked peer fields (`tensor_fields` of them) of tensor `name` with n values ->
        float32 (n,). The caller checks finiteness of the result. Raises CodecError."""
