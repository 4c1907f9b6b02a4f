"""A hostile swarm member that speaks the protocol correctly: for rounds 0..R-1 it gossips a
correctly signed, compatible update whose delta is random noise scaled by SCALE (e.g. 1e12) and
claims the maximum token count, and serves its payload. It reads the honest nodes' manifests to
bind each update to the round's base adapter (protocol v2), as a real attacker would. Nothing
about it is malformed, so only bounded aggregation stands between it and the honest adapters.

Usage: python helpers_scaled_update.py <node_multiaddr> <swarm> <base_model_sha256> <rounds> <scale> <seconds>
Prints {"event": "ready"} after its first manifests went out, {"event": "done"} at the end.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import wire
from bitswarm.federation.codecs import encode_update
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import TransportConfig, open_transport
from bitswarm.federation.wire import MAX_TOKENS
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import lora_shapes
from bitswarm.node.default_model import DEFAULT_CONFIG
from bitswarm.node.runtime import swarm_topic


async def main(addr: str, swarm: str, base_model: str, rounds: int, scale: float,
               seconds: float) -> None:
    kp = create_new_key_pair()
    rng = np.random.default_rng(7)
    shapes = lora_shapes(DEFAULT_CONFIG, LoRAConfig())
    served: dict[bytes, bytes] = {}
    manifests: dict[int, bytes] = {}            # round -> our manifest (bound to its base)

    def attack(rnd: int, base_adapter: bytes, rule: str) -> None:
        delta = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()}
        payload = encode_update(delta)[0]
        sha = hashlib.sha256(payload).digest()
        served[wire.encode_payload_request(rnd, sha)] = payload
        m = wire.UpdateManifest(swarm=swarm, round=rnd, base_model=base_model,
                                lora=wire.lora_dict(LoRAConfig()), sender=peer_id_of(kp),
                                tokens=MAX_TOKENS, codec="int8-block-zstd/1", payload_sha256=sha,
                                payload_size=len(payload), base_adapter=base_adapter,
                                issued_at=int(time.time()), rule=rule)
        manifests[rnd] = wire.encode_manifest(m, kp)

    async def learn_bases(t) -> None:
        async for msg in t.messages():
            try:
                m = wire.decode_manifest(msg.data)
            except wire.WireError:
                continue                       # records and the rest
            if m.round < rounds and m.round not in manifests:
                attack(m.round, m.base_adapter, m.rule)

    async with open_transport(kp, TransportConfig(topic=swarm_topic(swarm), peers=[addr])) as t:
        t.set_payload_provider(lambda req: served.get(req))
        await t.wait_for_topic_peers(1, timeout_s=30)
        print(json.dumps({"event": "ready"}), flush=True)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(learn_bases, t)
                while True:
                    for m in list(manifests.values())[-2:]:
                        await t.publish(m)
                    await trio.sleep(0.5)
    print(json.dumps({"event": "done"}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, a[0], a[1], a[2], int(a[3]), float(a[4]), float(a[5]))
