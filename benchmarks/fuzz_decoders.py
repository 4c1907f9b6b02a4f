"""Long fuzz run of every decoder of peer input, the payload stream framing included (the
suite's hypothesis tests are the bounded version): N inputs per decoder, half random bytes,
half mutated valid messages (byte flips, cuts, insertions), seeded. Prints per decoder how many
inputs were rejected with the decoder's own error, accepted, or raised anything else (must be
0), and the rate.

    python benchmarks/fuzz_decoders.py --per-decoder 250000 --seed 1

The stream framing readers (payload_protocol.read_response / read_request) get each input from
an in-memory stream in seeded random chunk sizes; they must return or raise FetchError /
EOFError without waiting for more than the input holds.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
import time

import numpy as np
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import codecs, wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.round_record import decode_record, encode_record
from bitswarm.federation.transport import FetchError
from bitswarm.federation.transport.payload_protocol import (CHUNK_BYTES, STATUS_OK, read_request,
                                                            read_response)


class BytesStream:
    """`data` as a stream whose reads return at most the next of `sizes` bytes."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.reads = memoryview(data), sizes, 0

    async def read(self, n: int) -> bytes:
        out = bytes(self.data[:min(n, self.sizes[self.reads % len(self.sizes)])])
        self.reads += 1
        self.data = self.data[len(out):]
        return out


def run(coro):
    """Drive a reader over a BytesStream (which never waits); waiting would be a bug."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a framing reader waited for more than its input holds")


def framing(reader):
    chunking = random.Random(7)

    def decode(data: bytes):
        sizes = [chunking.choice((1, 3, 64, 4096, 70_000)) for _ in range(chunking.randint(1, 3))]
        return run(reader(BytesStream(data, sizes)))
    return decode


def response_frame(payload: bytes, chunk: int) -> bytes:
    body = b"".join(struct.pack(">I", len(payload[i:i + chunk])) + payload[i:i + chunk]
                    for i in range(0, len(payload), chunk))
    return struct.pack(">BQ", STATUS_OK, len(payload)) + body


def seeds():
    kp = create_new_key_pair()
    lora = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj"], "freeze_A": False}
    base = hashlib.sha256(b"G").digest()
    manifest = wire.encode_manifest(wire.UpdateManifest(
        swarm="fuzz", round=3, base_model="ab" * 32, lora=lora, sender=peer_id_of(kp), tokens=10,
        codec=codecs.INT8_CODEC, payload_sha256=b"\x01" * 32, payload_size=100, base_adapter=base,
        issued_at=int(time.time()), rule="bounded-fedavg"), kp)
    record = encode_record(swarm="fuzz", round=3, base_model="ab" * 32, lora=lora,
                           rule="bounded-fedavg", base_adapter=base, new_adapter=b"\x02" * 32,
                           issued_at=int(time.time()), update_bytes=[manifest], key_pair=kp).data
    shapes = {"layers.0.q_proj.lora_A": (4, 16), "layers.0.q_proj.lora_B": (16, 4)}
    rng = np.random.default_rng(0)
    delta = {k: (rng.standard_normal(s) * 1e-2).astype(np.float32) for k, s in shapes.items()}
    payloads = [codecs.encode_update(delta, codec=c)[0] for c in (codecs.INT8_CODEC, codecs.RAW_CODEC)]
    bound = codecs.max_payload_bytes(shapes)
    return {
        "manifest": (wire.decode_manifest, wire.WireError, [manifest]),
        "round record": (decode_record, wire.WireError, [record]),
        "payload": (lambda d: codecs.decode_update(d, expected_shapes=shapes, max_bytes=bound),
                    codecs.CodecError, payloads),
        "payload/state request": (
            lambda d: (wire.decode_payload_request(d), wire.decode_state_request(d)),
            wire.WireError, [wire.encode_payload_request(3, b"\x01" * 32),
                             wire.encode_state_request(3, b"\x01" * 32)]),
        "stream framing: response": (
            framing(lambda s: read_response(s, max_bytes=3 * CHUNK_BYTES, on_received=lambda n: None)),
            (FetchError, EOFError),
            [response_frame(b"abc", 3), response_frame(bytes(range(256)) * 40, 1000),
             response_frame(b"x" * 2000, 700)]),
        "stream framing: request": (
            framing(read_request), (FetchError, EOFError),
            [struct.pack(">I", 40) + b"r" * 40, struct.pack(">I", 4096) + b"r" * 4096]),
    }


def mutate(rng: random.Random, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        kind = rng.random()
        if kind < 0.6:
            data[i] ^= rng.randint(1, 255)
        elif kind < 0.8:
            data = data[:i]
        else:
            data[i:i] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-decoder", type=int, default=250_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    bad = 0
    for name, (decode, error, valid) in seeds().items():
        counts = {"rejected": 0, "accepted": 0, "other exception": 0}
        t0 = time.perf_counter()
        for i in range(a.per_decoder):
            data = (rng.randbytes(rng.randint(0, 2048)) if i % 2 else
                    mutate(rng, valid[i // 2 % len(valid)]))
            try:
                decode(data)
                counts["accepted"] += 1
            except error:
                counts["rejected"] += 1
            except Exception as e:  # noqa: BLE001 - what we are looking for
                counts["other exception"] += 1
                print(f"  {name}: {type(e).__name__}: {e} on {data[:64]!r}", file=sys.stderr)
        dt = time.perf_counter() - t0
        bad += counts["other exception"]
        print(f"{name:26s} {a.per_decoder:>9,} inputs  rejected {counts['rejected']:>9,}  "
              f"accepted {counts['accepted']:>7,}  other exceptions {counts['other exception']}  "
              f"({a.per_decoder / dt:,.0f}/s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
