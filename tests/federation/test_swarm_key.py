"""Swarm keys (pnet): the file format, and real libp2p transports on 127.0.0.1 that connect
only when they hold the same key; a wrong or missing key fails within the dial timeout."""
from __future__ import annotations

import os
import stat

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.swarm_key import new_swarm_key, read_swarm_key, write_new_swarm_key
from bitswarm.federation.transport import ConnectError, TransportConfig, open_transport


def test_new_key_round_trips_and_is_private(tmp_path):
    f = tmp_path / "swarm.key"
    write_new_swarm_key(f)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    key = read_swarm_key(f)
    assert len(key) == 64 and int(key, 16) >= 0
    assert read_swarm_key(f) == key and new_swarm_key() != new_swarm_key()
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_new_swarm_key(f)
    assert read_swarm_key(f) == key


@pytest.mark.parametrize("text", ["", "/key/swarm/psk/1.0.0/\n/base16/\nabc\n",
                                  "/key/swarm/psk/1.0.0/\n/base64/\n" + "a" * 64 + "\n",
                                  "a" * 64 + "\n"])
def test_bad_key_files_name_the_file_and_the_form(tmp_path, text):
    f = tmp_path / "bad.key"
    f.write_text(text)
    with pytest.raises(ValueError, match="--swarm-key .*bad.key.*expected 3 lines"):
        read_swarm_key(f)
    with pytest.raises(ValueError, match="cannot read"):
        read_swarm_key(tmp_path / "missing.key")


def test_only_holders_of_the_same_key_connect(tmp_path):
    keys = []
    for name in ("a", "b"):
        write_new_swarm_key(tmp_path / name)
        keys.append(read_swarm_key(tmp_path / name))

    async def main():
        cfg = lambda psk: TransportConfig(topic="pnet", psk=psk, dial_timeout_s=3.0)  # noqa: E731
        async with open_transport(create_new_key_pair(), cfg(keys[0])) as server:
            addr = server.listen_multiaddrs[0]
            async with open_transport(create_new_key_pair(), cfg(keys[0])) as member:
                with trio.fail_after(10):
                    await member.connect(addr)
                assert server.peer_id in member.connected_peers()
            for psk in (keys[1], None):            # another key, or none at all
                async with open_transport(create_new_key_pair(), cfg(psk)) as outsider:
                    t0 = trio.current_time()
                    with pytest.raises(ConnectError):
                        await outsider.connect(addr)
                    assert trio.current_time() - t0 < 3.0 + 1.0     # bounded by the dial timeout
                    assert server.peer_id not in outsider.connected_peers()
    trio.run(main)
