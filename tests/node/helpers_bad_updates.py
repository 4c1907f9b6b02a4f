"""A hostile swarm member: joins a swarm's topic with a real transport and, for rounds 0-1,
gossips updates that a node must reject, serving their payloads:

  garbage          bytes that are no manifest
  mis_signed       a manifest whose signature is by another key than its sender's
  wrong_swarm      a correctly signed manifest for another swarm
  wrong_base       a correctly signed manifest for another base model
  wrong_shape      a payload whose tensors have the wrong shapes
  non_finite       a payload holding NaN (lossless codec, so the NaN arrives as sent)
  hash_mismatch    a manifest whose payload SHA-256 does not match what is served
  stale            a correctly signed, well-formed update issued two hours ago (a replay)

The payload-level ones are bound to the round's base adapter, read from the honest nodes'
manifests (protocol v2), so that a node fetches them and meets the fault.

Usage: python helpers_bad_updates.py <node_multiaddr> <swarm> <base_model_sha256> <seconds>
Prints {"event": "ready"} once it is in the swarm, {"event": "done"} at the end.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import msgpack
import numpy as np
import trio
import zstandard
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import wire
from bitswarm.federation.codecs import RAW_CODEC, encode_update
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import TransportConfig, open_transport
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import lora_shapes
from bitswarm.node.default_model import DEFAULT_CONFIG
from bitswarm.node.runtime import swarm_topic


def raw_payload(delta) -> bytes:
    """A "raw-zstd/1" payload built by hand (our encoder refuses non-finite values)."""
    tensors = [[k, list(v.shape), np.ascontiguousarray(v, "<f4").tobytes()] for k, v in sorted(delta.items())]
    return zstandard.ZstdCompressor(level=3).compress(
        msgpack.packb({"codec": RAW_CODEC, "tensors": tensors}, use_bin_type=True))


def payloads(shapes):
    rng = np.random.default_rng(0)
    good = {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in shapes.items()}
    wrong_shape = dict(good)
    k0 = next(iter(shapes))
    wrong_shape[k0] = np.zeros((shapes[k0][0] + 1, shapes[k0][1]), np.float32)
    nan = {k: v.copy() for k, v in good.items()}
    nan[k0][0, 0] = np.nan
    return {
        "good": encode_update(good)[0],
        "wrong_shape": encode_update(wrong_shape)[0],
        "non_finite": raw_payload(nan),
    }


async def main(addr: str, swarm: str, base_model: str, seconds: float) -> None:
    kp, other = create_new_key_pair(), create_new_key_pair()
    lora = wire.lora_dict(LoRAConfig())
    shapes = lora_shapes(DEFAULT_CONFIG, LoRAConfig())
    blobs = payloads(shapes)
    served: dict[bytes, bytes] = {}
    bases: dict[int, bytes] = {}               # round -> the honest nodes' base adapter
    rules: dict[int, str] = {}                 # round -> their aggregation rule

    # One sender identity per kind of bad update: a node keeps one update per (sender, round),
    # so a single identity would only ever get its first bad update looked at.
    # hash_mismatch is sent as the transport's own identity so the payload is fetched from us.
    senders: dict[str, object] = {"hash_mismatch": kp}

    def manifest(kind, rnd, payload, *, swarm_=swarm, base=base_model, codec="int8-block-zstd/1",
                 sha=None, signer=None, age_s=0):
        key = senders.setdefault(kind, create_new_key_pair())
        sha = sha or hashlib.sha256(payload).digest()
        served[wire.encode_payload_request(rnd, sha)] = payload
        m = wire.UpdateManifest(swarm=swarm_, round=rnd, base_model=base, lora=lora, sender=peer_id_of(key),
                                tokens=1000, codec=codec, payload_sha256=sha,
                                payload_size=len(payload), base_adapter=bases[rnd],
                                issued_at=int(time.time()) - age_s, rule=rules[rnd])
        return wire.encode_manifest(m, signer or key)

    async def learn_bases(t) -> None:
        async for msg in t.messages():
            try:
                m = wire.decode_manifest(msg.data)
            except wire.WireError:
                continue
            bases.setdefault(m.round, m.base_adapter)
            rules.setdefault(m.round, m.rule)

    cfg = TransportConfig(topic=swarm_topic(swarm), peers=[addr])
    async with open_transport(kp, cfg) as t:
        t.set_payload_provider(lambda req: served.get(req))
        with trio.fail_after(30):
            await t.wait_for_topic_peers(1, timeout_s=30)
        print(json.dumps({"event": "ready"}), flush=True)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(learn_bases, t)
                while True:
                    await t.publish(b"\x00garbage, not a manifest")
                    for rnd in sorted(bases)[-2:]:
                        msgs = [
                            manifest("mis_signed", rnd, blobs["good"], signer=other),
                            manifest("wrong_swarm", rnd, blobs["good"], swarm_=swarm + "-other"),
                            manifest("wrong_base", rnd, blobs["good"], base="0" * 64),
                            manifest("wrong_shape", rnd, blobs["wrong_shape"]),
                            manifest("non_finite", rnd, blobs["non_finite"], codec=RAW_CODEC),
                            manifest("hash_mismatch", rnd, blobs["good"], sha=hashlib.sha256(b"other").digest()),
                            manifest("stale", rnd, blobs["good"], age_s=7200),
                        ]
                        for m in msgs:
                            await t.publish(m)
                            await trio.sleep(0.15)   # stay under gossipsub's 10 msg/s per topic
                    await trio.sleep(0.3)
    print(json.dumps({"event": "done"}), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
