"""Every codec a node accepts, keyed by its name on the wire (as hivemind's
`BASE_COMPRESSION_TYPES`). A new codec: one line here."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import Codec
from .int8_block import Int8BlockCodec
from .raw import RawCodec

CODECS: Mapping[str, type[Codec]] = MappingProxyType({
    cls.wire_name: cls for cls in (Int8BlockCodec, RawCodec)
})


def codec_class(wire_name: object) -> type[Codec] | None:
    """The codec class named `wire_name` (any peer-supplied value), or None if unknown."""
    return CODECS.get(wire_name) if isinstance(wire_name, str) else None
