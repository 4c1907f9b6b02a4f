"""Tensor: a storage buffer with a shape and a dtype, and the byte layouts of its dtypes.

dtype "float32"/"int32": 4 bytes per element, row-major. "int8": 2-D (rows, C), each row packed
4 values per u32 (little-endian bytes, as WGSL pack4xI8), row stride ceil(C/4) words, padding
bytes zero. "float16": IEEE binary16, row-major and flat, 2 per u32 (element i is half i&1 of
word i>>1, as WGSL unpack2x16float reads it; no shader-f16 feature needed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DTYPES = ("float32", "int32", "int8", "float16")


def round_size(nbytes: int) -> int:
    """Buffer bytes for nbytes of data: a multiple of 16, at least 16 (the pool's size classes)."""
    return max(16, (nbytes + 15) // 16 * 16)


class Tensor:
    """A GPU buffer with a shape and a dtype (layouts: module docstring).

    The buffer returns to its pool (`freed`, a BufferPool's list) when the Tensor is collected.
    `host_min`/`host_max` record the value range of integer tensors uploaded from the host (used
    to raise IndexError for bad token ids without a readback); None when unknown. `host` keeps
    the host copy of small integer tensors (token ids, targets), so ops on a host-resident table
    can gather rows on the host; None when not kept.
    """

    __slots__ = ("freed", "buffer", "shape", "dtype", "nbytes", "host_min", "host_max", "host",
                 "__weakref__")

    def __init__(self, freed: list, buffer, shape: tuple[int, ...], dtype: str, nbytes: int):
        self.freed, self.buffer, self.shape, self.dtype, self.nbytes = freed, buffer, shape, dtype, nbytes
        self.host_min = self.host_max = self.host = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __del__(self) -> None:
        freed = getattr(self, "freed", None)
        if freed is not None and self.buffer is not None:
            freed.append(self.buffer)   # list.append is atomic under the GIL; no lock here
            self.buffer = None

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"


def tensor_nbytes(shape: Sequence[int], dtype: str) -> int:
    """Data bytes of a tensor of `shape` and `dtype`. Raises ValueError for an unknown dtype or
    an int8 shape that is not 2-D."""
    if dtype == "int8":
        if len(shape) != 2:
            raise ValueError(f"int8 tensors are 2-D (rows, C), got shape {tuple(shape)}")
        return int(shape[0]) * ((int(shape[1]) + 3) // 4) * 4
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    n = int(np.prod(shape, dtype=np.int64))
    return (n + 1) // 2 * 4 if dtype == "float16" else n * 4


def pack_int8_rows(a: np.ndarray) -> np.ndarray:
    """int8 (rows, C) -> uint32 (rows, ceil(C/4)) little-endian, zero padded."""
    rows, C = a.shape
    C4 = (C + 3) // 4
    padded = np.zeros((rows, C4 * 4), np.int8)
    padded[:, :C] = a
    return padded.view(np.uint32).reshape(rows, C4)


def unpack_int8_rows(words: np.ndarray, rows: int, C: int) -> np.ndarray:
    """Inverse of pack_int8_rows."""
    C4 = (C + 3) // 4
    return np.ascontiguousarray(words[: rows * C4]).view(np.int8).reshape(rows, C4 * 4)[:, :C].copy()


def host_array(a: np.ndarray, dtype: str) -> np.ndarray:
    """The bytes an upload of host array `a` as `dtype` writes: int8 rows packed 4 per u32
    (a must be 2-D), float16 rounded to nearest even (beyond +-65504: inf), else float32/int32.
    Raises ValueError for a non-2-D int8 array."""
    if dtype == "int8":
        if a.ndim != 2:
            raise ValueError(f"int8 upload needs a 2-D array, got shape {a.shape}")
        return pack_int8_rows(a.astype(np.int8))
    if dtype == "float16":
        return np.ascontiguousarray(a, dtype=np.float16).reshape(-1)
    return np.ascontiguousarray(a, dtype=np.float32 if dtype == "float32" else np.int32)


def from_bytes(raw: bytes, t: Tensor) -> np.ndarray:
    """A downloaded buffer's bytes -> the host array of t's shape and dtype."""
    if t.dtype == "int8":
        return unpack_int8_rows(np.frombuffer(raw, np.uint32), t.shape[0], t.shape[1])
    dt = {"float32": np.float32, "int32": np.int32, "float16": np.float16}[t.dtype]
    return np.frombuffer(raw, dt)[: t.size].reshape(t.shape).copy()
