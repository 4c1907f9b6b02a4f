"""Measure NAT traversal in the netns lab with bare transports (no training): time to a relayed
connection, to the hole punch, and a 4 MiB payload fetch over each path. Root only.

    .venv/bin/python tests/federation/nat/measure_nat.py cone cone        # punch passes
    .venv/bin/python tests/federation/nat/measure_nat.py cone symmetric   # stays relayed

Each side prints JSON lines (seconds since its transport started); the run lasts 30 s.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAYLOAD_BYTES = 4 << 20


async def side(role: str, listen: str, data_dir: str, boot: list[str]) -> None:
    import trio

    from bitswarm.federation.discovery import SwarmDHT
    from bitswarm.federation.identity import load_or_create_identity
    from bitswarm.federation.transport import TransportConfig, open_transport

    cfg = TransportConfig(listen=listen, topic="measure", relay=role == "relay")
    t0, last, fetched = time.monotonic(), None, set()
    async with open_transport(load_or_create_identity(Path(data_dir)), cfg,
                              discovery=SwarmDHT(boot, "measure")) as t:
        print("listening on", t.listen_multiaddrs[0], flush=True)
        t.set_payload_provider(lambda req: b"x" * PAYLOAD_BYTES if req == b"p" else None)
        while time.monotonic() - t0 < 30:
            paths = t.peer_paths()
            if (paths, t.reachability) != last:
                last = (paths, t.reachability)
                print(json.dumps({"t": round(time.monotonic() - t0, 2), "reach": t.reachability,
                                  "paths": sorted(paths.values())}), flush=True)
            for peer in t.topic_peers():
                if role != "relay" and (peer, paths.get(peer)) not in fetched and paths.get(peer):
                    fetched.add((peer, paths[peer]))
                    s = time.monotonic()
                    with trio.move_on_after(30):
                        data = await t.fetch(peer, b"p", max_bytes=PAYLOAD_BYTES, timeout_s=30)
                        print(json.dumps({"fetch_over": paths[peer], "bytes": len(data),
                                          "s": round(time.monotonic() - s, 3)}), flush=True)
            await trio.sleep(0.25)


def main(kind_a: str, kind_b: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import RELAY_IP, NatLab

    lab, procs, out = NatLab({"a": kind_a, "b": kind_b}), [], Path(tempfile.mkdtemp())
    try:
        lab.create()

        def start(where: str, role: str, listen: str, name: str, boot: list[str]) -> Path:
            log = out / f"{name}.log"
            procs.append(subprocess.Popen([*lab.exec_prefix(where), sys.executable, __file__,
                                           "--side", role, listen, str(out / name), *boot],
                                          stdout=open(log, "w"), stderr=subprocess.DEVNULL))
            return log

        relay_log = start("pub", "relay", f"/ip4/{RELAY_IP}/tcp/4001", "relay", [])
        for _ in range(200):
            lines = [x for x in relay_log.read_text().splitlines() if x.startswith("listening on")]
            if lines:
                break
            time.sleep(0.1)
        boot = [lines[0].split()[2]]
        logs = {s: start(f"n{s}", "node", f"/ip4/{lab.node_ip[s]}/tcp/4001", s, boot) for s in "ab"}
        time.sleep(32)
        for s, log in logs.items():
            print(f"--- side {s} ({lab.kinds[s]})\n" + log.read_text())
    finally:
        for p in procs:
            p.kill()
        lab.destroy()


if __name__ == "__main__":
    if sys.argv[1] == "--side":
        import trio
        trio.run(side, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        main(sys.argv[1], sys.argv[2])
