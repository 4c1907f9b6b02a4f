"""Every codec a node accepts, keyed by its name on the wire (as hivemind's
`BASE_COMPRESSION_TYPES`). A new codec: one line here."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import Codec
from .fp16 import Fp16Codec
from .int8_block import Int8BlockCodec
from .raw import RawCodec
from .ternary import TernaryBlockCodec
from .topk import TopKCodec

CODECS: Mapping[str, type[Codec]] = MappingProxyType({
    cls.wire_name: cls for cls in (Int8BlockCodec, RawCodec, Fp16Codec, TernaryBlockCodec,
                                   TopKCodec)
})

# The names users give (`node start --codec`, scenario files) -> wire names.
CODEC_NAMES: Mapping[str, str] = MappingProxyType({
    "fp32": RawCodec.wire_name, "fp16": Fp16Codec.wire_name, "int8": Int8BlockCodec.wire_name,
    "ternary": TernaryBlockCodec.wire_name, "top-k": TopKCodec.wire_name,
})


def make_codec(name: str, *, topk_fraction: float | None = None) -> Codec:
    """The codec a user names (a key of CODEC_NAMES); `topk_fraction` (0, 1] sets top-k's
    kept share (default 3%). Raises ValueError naming the choices."""
    if name not in CODEC_NAMES:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODEC_NAMES)}")
    if name == "top-k" and topk_fraction is not None:
        return TopKCodec.from_fraction(topk_fraction)
    return CODECS[CODEC_NAMES[name]]()


def codec_class(wire_name: object) -> type[Codec] | None:
    """The codec class named `wire_name` (any peer-supplied value), or None if unknown."""
    return CODECS.get(wire_name) if isinstance(wire_name, str) else None
