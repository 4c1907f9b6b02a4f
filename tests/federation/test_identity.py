"""Node identity: a persistent Ed25519 key file, a stable peer ID, corrupt files refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bitswarm.federation.identity import load_or_create_identity, peer_id_of


# ---- identity ------------------------------------------------------------------------------


def test_identity_file_is_0600_and_peer_id_stable(tmp_path: Path) -> None:
    kp = load_or_create_identity(tmp_path / "node")
    path = tmp_path / "node" / "identity.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = peer_id_of(kp)
    assert first.startswith("12D3KooW")  # Ed25519, identity multihash
    assert peer_id_of(load_or_create_identity(tmp_path / "node")) == first
    assert [p.name for p in (tmp_path / "node").iterdir()] == ["identity.key"]  # no temp files left


@pytest.mark.parametrize("content", [b"", b"not a key", b"\x08\x01\x12\x03abc"])
def test_corrupt_identity_raises_value_error_naming_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == content  # never overwrite someone's identity
