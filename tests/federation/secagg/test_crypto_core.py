"""The secure-aggregation crypto core against fixed vectors (RFC 7748, RFC 8439, an HMAC
implementation of RFC 5869) and properties (Shamir's threshold, mask cancellation)."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bitswarm.federation.secagg import (PRIME, Quantizer, RoundKeys, Share, aead_decrypt,
                                        aead_encrypt, apply_masks, derive_key, pairwise_seed,
                                        prg_uint32, reconstruct, split, unmask_sum,
                                        x25519_shared)
from bitswarm.federation.secagg.keys import SecAggCryptoError, private_bytes
from bitswarm.federation.secagg.masking import round_context
from bitswarm.federation.secagg.shamir import ShamirError


def test_x25519_rfc7748_vector():
    # RFC 7748 section 6.1 (Alice and Bob).
    a = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert x25519_shared(a, bob_pub).hex() == \
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    with pytest.raises(SecAggCryptoError):
        x25519_shared(a, bytes(32))          # small-order point: all-zero secret
    with pytest.raises(SecAggCryptoError):
        x25519_shared(a, b"short")


def test_prg_is_chacha20_rfc8439_keystream():
    # RFC 8439 appendix A.1, test vector 1: zero key, zero nonce, counter 0.
    ks = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7")
    got = prg_uint32(bytes(32), 8)
    assert got.dtype == np.uint32 and got.shape == (8,)
    assert got.astype("<u4").tobytes() == ks
    assert not np.array_equal(prg_uint32(b"\x01" + bytes(31), 8), got)
    with pytest.raises(ValueError):
        prg_uint32(b"x", 4)


def test_derive_key_is_hkdf_sha256():
    ikm, purpose, ctx = b"\x0b" * 32, b"mask", b"context"
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()           # RFC 5869 extract
    info = b"bitswarm-secagg/1\0" + purpose + b"\0" + ctx
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()      # expand, one block
    assert derive_key(ikm, purpose, ctx) == okm


def test_aead_roundtrip_and_tamper():
    key = derive_key(b"k" * 32, b"share", b"a->b")
    ct = aead_encrypt(key, b"secret share", b"aad")
    assert aead_decrypt(key, ct, b"aad") == b"secret share"
    with pytest.raises(SecAggCryptoError):
        aead_decrypt(key, ct, b"other aad")
    with pytest.raises(SecAggCryptoError):
        aead_decrypt(key, bytes([ct[0] ^ 1]) + ct[1:], b"aad")


def test_shamir_fixed_vectors():
    # f(x) = 42 + 5x: shares 47, 52, 57.
    shares = split(b"\x2a", 2, 3, coefficients=[5])
    assert [(s.x, s.y) for s in shares] == [(1, 47), (2, 52), (3, 57)]
    assert reconstruct([Share(2, 52), Share(3, 57)], 2, 1) == b"\x2a"
    # f(x) = 42 + x + 2x^2: 45, 52, 63, 78.
    shares = split(b"\x2a", 3, 4, coefficients=[1, 2])
    assert [s.y for s in shares] == [45, 52, 63, 78]
    assert reconstruct([shares[3], shares[0], shares[2]], 3, 1) == b"\x2a"
    # Wrap-around in the field: f(x) = 1 + (p - 1) x, f(1) = 0, f(2) = p - 1.
    assert [s.y for s in split(b"\x01", 2, 2, coefficients=[PRIME - 1])] == [0, PRIME - 1]


def test_shamir_any_t_rebuild_fewer_reveal_nothing_checkable():
    secret = bytes(range(32))
    t, n = 3, 5
    shares = split(secret, t, n)
    for combo in itertools.combinations(shares, t):
        assert reconstruct(list(combo), t, 32) == secret
    # t - 1 shares: for EVERY candidate secret there is a degree t-1 polynomial through them
    # (so they rule nothing out): interpolate (0, candidate) + the t - 1 shares and check it.
    rng = random.Random(0)
    two = shares[:t - 1]
    for _ in range(5):
        cand = rng.randrange(1 << 256)
        # The polynomial through (0, cand) and the t - 1 shares, evaluated at a t-th point, is
        # a valid share; together they rebuild cand.
        xs = [0] + [s.x for s in two]
        ys = [cand] + [s.y for s in two]
        x3 = 4
        y3 = 0
        for j in range(t):
            num = den = 1
            for m in range(t):
                if m != j:
                    num = num * (x3 - xs[m]) % PRIME
                    den = den * (xs[j] - xs[m]) % PRIME
            y3 = (y3 + ys[j] * num * pow(den, -1, PRIME)) % PRIME
        pts = two + [Share(x3, y3)]
        assert reconstruct(pts, t, 33) == cand.to_bytes(33, "big")
    with pytest.raises(ShamirError):
        reconstruct(shares[:2], 3, 32)
    with pytest.raises(ShamirError):
        reconstruct([shares[0], shares[0], shares[1]], 3, 32)
    with pytest.raises(ShamirError):
        split(secret, 4, 3)
    with pytest.raises(ShamirError):
        Share.from_bytes(1, (PRIME).to_bytes(66, "big"))


def test_quantizer_bounds_and_roundtrip():
    q = Quantizer(2.0)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-2, 2, 1000) for _ in range(8)]
    ws = rng.dirichlet(np.ones(8))
    total = np.zeros(1000, np.uint32)
    for x, w in zip(xs, ws):
        total += q.encode(x, float(w))
    want = sum(w * x for x, w in zip(xs, ws))
    assert np.max(np.abs(q.decode(total) - want)) <= 8 * 0.5 * q.step + 1e-12
    # Extreme values clamp, and the full-weight extreme does not wrap.
    assert q.decode(q.encode(np.array([5.0, -5.0]), 1.0)).tolist() == [2.0, -2.0]
    with pytest.raises(ValueError):
        Quantizer(float("inf"))


def test_masks_cancel_and_dropped_masks_are_removed():
    ctx = round_context("swarm", 3, bytes(32))
    ids = ["p1", "p2", "p3", "p4"]
    keys = {p: RoundKeys.fresh() for p in ids}
    spub = {p: keys[p].s_public for p in ids}
    rng = np.random.default_rng(1)
    qs = {p: rng.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32) for p in ids}
    ys = {}
    for u in ids:
        seeds = {v: pairwise_seed(keys[u].s, spub[v], u, v, ctx) for v in ids if v != u}
        assert seeds[ids[0] if u != ids[0] else ids[1]] == pairwise_seed(
            keys[ids[0] if u != ids[0] else ids[1]].s, spub[u], ids[0] if u != ids[0]
            else ids[1], u, ctx)                     # symmetric
        ys[u] = apply_masks(qs[u], u, keys[u].b, seeds)
    # Everyone survives.
    total = unmask_sum(ys, {u: keys[u].b for u in ids}, {}, spub, ctx)
    assert np.array_equal(total, sum(qs.values()).astype(np.uint32))
    # p2 dropped: its pairwise masks in the others' y are removed with its s key.
    surv = [p for p in ids if p != "p2"]
    total = unmask_sum({u: ys[u] for u in surv}, {u: keys[u].b for u in surv},
                       {"p2": private_bytes(keys["p2"].s)}, spub, ctx)
    assert np.array_equal(total, sum(qs[u] for u in surv).astype(np.uint32))
    # A masked input alone looks uniform: no correlation with the input.
    y = ys["p1"].astype(np.float64)
    assert abs(np.corrcoef(y, qs["p1"].astype(np.float64))[0, 1]) < 0.4
