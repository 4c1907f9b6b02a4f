"""Named kernel parameters, checked against the shader's own `struct Params`.

A shader's uniform block is a WGSL struct (`struct Params { n: u32, eps: f32 }`); a launcher
packs it from keyword arguments (`layout.pack(n=N, eps=1e-5)`) and the layout, parsed from the
WGSL source once, puts each value at its field's offset. A missing or unknown name raises
ValueError naming the shader, the struct and the fields, instead of silently shifting values
(what positional format strings allowed).

Field types: u32, i32, f32 and vec2/vec3/vec4 of them (`vec3<f32>` or the `vec3f` alias; a vec
value is a sequence). Offsets and size follow WGSL's uniform address space rules (WGSL spec
"Memory Layout": scalar align/size 4; vec2 align 8 size 8; vec3 align 16 size 12; vec4 align 16
size 16; the struct's size rounds up to its largest alignment). Arrays, matrices and nested
structs are rejected (no shader here uses them in a uniform).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_SCALARS = {"u32": "I", "i32": "i", "f32": "f"}
_ALIAS = {"u": "u32", "i": "i32", "f": "f32"}
_VEC_ALIGN = {1: 4, 2: 8, 3: 16, 4: 16}
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_FIELD = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s*)*(\w+)\s*:\s*([\w<>\s]+?)\s*$")


@dataclass(frozen=True)
class ParamLayout:
    """The byte layout of one WGSL uniform struct: fields (name, scalar type, lanes) in order."""

    shader: str
    struct: str
    fields: tuple[tuple[str, str, int], ...]
    fmt: str            # struct-module format, padding included
    size: int

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __post_init__(self) -> None:
        # precomputed for the per-dispatch path: the field-name set and the compiled struct
        object.__setattr__(self, "_names", tuple(f[0] for f in self.fields))
        object.__setattr__(self, "_keys", frozenset(self._names))
        object.__setattr__(self, "_struct", struct.Struct(self.fmt))
        object.__setattr__(self, "_scalars", all(f[2] == 1 for f in self.fields))

    def pack(self, **values) -> bytes:
        """Bytes of the struct with each field set from values[name]. Raises ValueError when a
        field is missing or a name is not a field (the message names both sides)."""
        names = self._names
        if values.keys() != self._keys:
            missing = [n for n in names if n not in values]
            unknown = sorted(set(values) - set(names))
            raise ValueError(f"{self.shader} struct {self.struct}: missing {missing}, unknown "
                             f"{unknown}; its fields are {list(names)}")
        if self._scalars:
            return self._struct.pack(*[values[n] for n in names])
        flat = []
        for name, _, lanes in self.fields:
            v = values[name]
            if lanes == 1:
                flat.append(v)
            else:
                if len(v) != lanes:
                    raise ValueError(f"{self.shader} struct {self.struct}: field {name} takes "
                                     f"{lanes} values, got {len(v)}")
                flat.extend(v)
        return self._struct.pack(*flat)


def _field_type(shader: str, name: str, text: str) -> tuple[str, int]:
    t = re.sub(r"\s+", "", text)
    m = re.fullmatch(r"vec([234])(?:<(\w+)>|([uif]))", t)
    if m:
        scalar = m.group(2) or _ALIAS[m.group(3)]
        lanes = int(m.group(1))
    else:
        scalar, lanes = t, 1
    if scalar not in _SCALARS:
        raise ValueError(f"{shader}: uniform field {name}: {text!r} is not u32/i32/f32 or a vec "
                         f"of them")
    return scalar, lanes


def parse_params(shader: str, source: str, struct_name: str = "Params") -> ParamLayout:
    """The layout of `struct <struct_name>` in WGSL `source` (of file `shader`, for messages).
    Raises ValueError when the struct is absent or has a field type this packer cannot lay out."""
    src = _COMMENT.sub("", source)
    m = re.search(r"\bstruct\s+" + re.escape(struct_name) + r"\s*\{([^}]*)\}", src)
    if m is None:
        raise ValueError(f"{shader}: no struct {struct_name}")
    fields, fmt, off, align_max = [], "<", 0, 4
    for part in m.group(1).split(","):
        if not part.strip():
            continue
        fm = _FIELD.match(part)
        if fm is None:
            raise ValueError(f"{shader} struct {struct_name}: cannot parse field {part.strip()!r}")
        name, scalar, lanes = fm.group(1), *_field_type(shader, fm.group(1), fm.group(2))
        align = _VEC_ALIGN[lanes]
        pad = -off % align
        fmt += "x" * pad + _SCALARS[scalar] * lanes
        off += pad + 4 * lanes
        align_max = max(align_max, align)
        fields.append((name, scalar, lanes))
    if not fields:
        raise ValueError(f"{shader}: struct {struct_name} has no fields")
    tail = -off % align_max
    fmt += "x" * tail
    return ParamLayout(shader, struct_name, tuple(fields), fmt, off + tail)
