"""Swarm keys: the pre-shared key of a libp2p private network (pnet), so that only nodes
holding the key can even complete a connection (everything on the wire, Noise handshake
included, is XSalsa20-encrypted with it before anything else runs).

File format (go-libp2p / IPFS `swarm.key`, "/key/swarm/psk/1.0.0/"): three lines

    /key/swarm/psk/1.0.0/
    /base16/
    <64 lowercase hex characters: the 32-byte key>

Source: libp2p pnet spec (PSK v1); py-libp2p 0.8.1 `libp2p.security.pnet` does the encryption.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path


HEADER = "/key/swarm/psk/1.0.0/"
ENCODING = "/base16/"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
EXPECTED = f"3 lines: {HEADER!r}, {ENCODING!r}, 64 hex characters"


def new_swarm_key() -> str:
    """A fresh swarm key file's text (32 bytes from the OS CSPRNG)."""
    return f"{HEADER}\n{ENCODING}\n{secrets.token_hex(32)}\n"


def write_new_swarm_key(path: Path) -> None:
    """Create `path` holding a new key (mode 0600). Raises FileExistsError if it exists (a
    key is never overwritten: the swarm would lose its members), OSError otherwise."""
    try:
        fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; a swarm key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(new_swarm_key().encode())
        f.flush()
        os.fsync(f.fileno())


def read_swarm_key(path: Path) -> str:
    """The 32-byte key of swarm key file `path` as 64 lowercase hex characters.

    Raises ValueError naming the file and the expected form (unreadable, wrong header or
    encoding line, wrong key length), never echoing key material.
    """
    try:
        lines = Path(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--swarm-key {path}: cannot read it ({type(e).__name__}); expected "
                         f"{EXPECTED}") from None
    if len(lines) != 3 or lines[0] != HEADER or lines[1] != ENCODING or not _HEX64.fullmatch(lines[2]):
        raise ValueError(f"--swarm-key {path}: not a swarm key file; expected {EXPECTED} "
                         f"(make one with `node swarm-key new FILE`)")
    return lines[2].lower()
