"""Node identity: one persistent libp2p Ed25519 key pair per data directory.

The peer ID is derived from the public key (identity multihash, libp2p peer-ID spec), so a
stable key file means a stable peer ID across restarts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

log = logging.getLogger("bitswarm.federation.identity")

IDENTITY_FILENAME = "identity.key"
_MAX_KEY_FILE_BYTES = 4096  # a serialized Ed25519 private key is 68 bytes


def load_or_create_identity(data_dir: Path) -> KeyPair:
    """Load `<data_dir>/identity.key`, or create it if absent.

    The file holds the libp2p protobuf serialization of an Ed25519 private key, mode 0600.
    Creation is atomic (written to a temporary file in the same directory, fsynced, then
    hard-linked into place), so a crash never leaves a half-written key and two processes
    racing on the same directory end up with the same identity.

    Raises:
        ValueError: the file exists but is unreadable, corrupt, or not an Ed25519 key
            (the message names the path). We never overwrite it: it is someone's identity.
        OSError: the directory cannot be created or written.
    """
    data_dir = Path(data_dir)
    path = data_dir / IDENTITY_FILENAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _create_atomically(path)
    return _load(path)


def peer_id_of(key_pair: KeyPair) -> str:
    """Base58 peer ID (e.g. '12D3KooW...') of `key_pair`'s public key."""
    return ID.from_pubkey(key_pair.public_key).to_base58()


def _create_atomically(path: Path) -> None:
    key_pair = create_new_key_pair()
    data = key_pair.private_key.serialize()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen 0600, but be explicit
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if the target exists: a concurrent creator wins and we load theirs.
        os.link(tmp, path)
        log.info("created identity %s (%s)", path, peer_id_of(key_pair))
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the new directory entry durable
    finally:
        os.close(dir_fd)


def _load(path: Path) -> KeyPair:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"identity file {path} is unreadable: {e}") from e
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"identity file {path} is corrupt: larger than {_MAX_KEY_FILE_BYTES} bytes")
    try:
        private_key = deserialize_private_key(data)
        public_key = private_key.get_public_key()
        public_key.serialize()
    except Exception as e:  # protobuf/nacl raise assorted types for garbage input
        raise ValueError(f"identity file {path} is corrupt: {e}") from e
    if private_key.get_type() != KeyType.Ed25519:
        raise ValueError(f"identity file {path} holds a {private_key.get_type().name} key, not Ed25519")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("identity file %s has mode %o; expected 0600", path, mode)
    return KeyPair(private_key, public_key)
