"""Connection paths behind two cone NATs (conftest.py: the NAT lab), with bare transports (no
training): a hole punch must pass while two relayed connections join the peers.

Two nodes that find each other at the same moment both dial the other's circuit address and
hold two relayed connections. The connection gate used to count every connection of a peer
against `max_conns_per_peer` (2), so the direct connection of each hole punch was refused and
the pair stayed relayed for good (seen on CI: 12 punches in 5 minutes, every one refused). Here
side a dials b's circuit address twice on purpose, so the case is not left to timing.

Run as a script, this file is one side: `--side ROLE LISTEN DATA_DIR RELAY_ADDR CIRCUIT_FILE`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RELAY_IP = "203.0.113.10"         # conftest.py's public relay address
PORT = 4001
RUN_S = 60.0


async def side(role: str, listen: str, data_dir: str, relay_addr: str, circuit_file: str) -> None:
    """Relay: relay and print its multiaddr. b: write its circuit address to `circuit_file`.
    a: dial that address twice through the relay, then print its connections to b (one JSON
    line per change) until one is direct, or RUN_S."""
    import trio

    from bitswarm.federation.identity import load_or_create_identity
    from bitswarm.federation.transport import TransportConfig, open_transport
    from bitswarm.federation.transport.nat import connection_path

    cfg = TransportConfig(listen=listen, topic="paths", relay=role == "relay",
                          peers=[relay_addr] if relay_addr != "-" else [])
    t0 = time.monotonic()
    async with open_transport(load_or_create_identity(Path(data_dir)), cfg) as t:
        print("listening on", t.listen_multiaddrs[0], flush=True)
        if role == "relay":
            await trio.sleep(RUN_S + 30)
            return
        if role == "b":
            while not t.circuit_addrs:
                await trio.sleep(0.1)
            Path(circuit_file + ".tmp").write_text(t.circuit_addrs[0])
            Path(circuit_file + ".tmp").rename(circuit_file)
            await trio.sleep(RUN_S + 10)
            return
        while not Path(circuit_file).exists():
            await trio.sleep(0.1)
        addr = Path(circuit_file).read_text()
        peer = addr.rsplit("/p2p/", 1)[1]
        for _ in range(2):            # two relayed connections, as two crossing dials leave
            with trio.fail_after(20):
                await t._nat.dial_circuit(addr)
        last = None
        from libp2p.peer.id import ID
        while time.monotonic() - t0 < RUN_S:
            paths = sorted(connection_path(c) for c in
                           t.libp2p_host.get_network().get_connections(ID.from_base58(peer)))
            if paths != last:
                last = paths
                print(json.dumps({"t": round(time.monotonic() - t0, 2), "paths": paths}), flush=True)
            if "direct" in paths:
                break
            await trio.sleep(0.1)


def _start(lab, where: str, args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([*lab.exec_prefix(where), sys.executable, __file__, "--side", *args],
                            stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _multiaddr(out: Path, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("listening on "):
                return line.split(" ", 2)[2]
        assert proc.poll() is None, out.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no multiaddr in {timeout_s} s\n{out.read_text()[-3000:]}")


def test_a_hole_punch_passes_while_two_relayed_connections_are_open(nat_lab, tmp_path):
    lab = nat_lab("cone", "cone")
    circuit = tmp_path / "b-circuit"
    outs = {n: tmp_path / f"{n}.txt" for n in ("relay", "a", "b")}
    procs = [_start(lab, "pub", ["relay", f"/ip4/{RELAY_IP}/tcp/{PORT}", str(tmp_path / "relay"),
                                 "-", "-"], outs["relay"])]
    try:
        relay_addr = _multiaddr(outs["relay"], procs[0], 60)
        for s in "ba":
            procs.append(_start(lab, f"n{s}", [s, f"/ip4/{lab.node_ip[s]}/tcp/{PORT}",
                                               str(tmp_path / s), relay_addr, str(circuit)], outs[s]))
        a = procs[-1]
        a.wait(timeout=RUN_S + 60)
        text = outs["a"].read_text()
        states = [json.loads(x)["paths"] for x in text.splitlines() if x.startswith("{")]
        assert a.returncode == 0, text[-3000:]
        # Both relayed connections were open, and the punch still made a direct one.
        assert ["relayed", "relayed"] in states, text[-3000:]
        assert states and "direct" in states[-1], text[-3000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__" and sys.argv[1:2] == ["--side"]:
    import trio
    trio.run(side, *sys.argv[2:7])
