"""Shamir's t-of-n secret sharing (A. Shamir, "How to share a secret", CACM 1979) over the
prime field GF(p), p = 2^521 - 1 (a Mersenne prime), so a 32-byte secret (an X25519 private
key or a mask seed) is one field element.

split: a random polynomial f of degree t - 1 with f(0) = secret; share i is (i, f(i)),
i = 1..n. reconstruct: Lagrange interpolation at 0 from any t distinct shares. Fewer than t
shares are independent of the secret (every secret is consistent with them).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

PRIME = 2**521 - 1
ELEMENT_BYTES = 66                       # ceil(521 / 8)
MAX_SHARES = 1024


class ShamirError(ValueError):
    """Bad parameters or shares (reason in the message)."""


@dataclass(frozen=True)
class Share:
    """One share: x in 1..MAX_SHARES (the holder's index), y in GF(PRIME)."""

    x: int
    y: int

    def y_bytes(self) -> bytes:
        """y as ELEMENT_BYTES big-endian bytes."""
        return self.y.to_bytes(ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, y: bytes) -> "Share":
        """Parse a share; raises ShamirError for an x out of range or y not a field element."""
        if type(x) is not int or not 1 <= x <= MAX_SHARES:
            raise ShamirError(f"share index must be in 1..{MAX_SHARES}, got {x!r}"[:100])
        if type(y) is not bytes or len(y) != ELEMENT_BYTES:
            raise ShamirError(f"share value must be {ELEMENT_BYTES} bytes")
        v = int.from_bytes(y, "big")
        if v >= PRIME:
            raise ShamirError("share value is not a field element")
        return cls(x, v)


def split(secret: bytes, t: int, n: int, *, coefficients: list[int] | None = None) -> list[Share]:
    """n shares of `secret` (bytes, at most 65, read big-endian), any t of which rebuild it.

    coefficients: the t - 1 higher coefficients (tests' fixed vectors); default: random from
    the OS (secrets). Raises ShamirError unless 1 <= t <= n <= MAX_SHARES."""
    if not (type(t) is int and type(n) is int and 1 <= t <= n <= MAX_SHARES):
        raise ShamirError(f"need 1 <= t <= n <= {MAX_SHARES}, got t={t!r} n={n!r}")
    if type(secret) is not bytes or len(secret) >= ELEMENT_BYTES:
        raise ShamirError("secret must be bytes shorter than a field element")
    coeffs = [int.from_bytes(secret, "big")]
    if coefficients is None:
        coeffs += [secrets.randbelow(PRIME) for _ in range(t - 1)]
    else:
        if len(coefficients) != t - 1 or any(not 0 <= c < PRIME for c in coefficients):
            raise ShamirError("coefficients must be t - 1 field elements")
        coeffs += list(coefficients)
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):           # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def reconstruct(shares: list[Share], t: int, length: int) -> bytes:
    """The secret (`length` bytes, big-endian) from the first t of `shares` (distinct x).

    Raises ShamirError for fewer than t shares, repeated indices, or a result that does not
    fit `length` bytes (wrong shares: the caller checks the secret against a commitment)."""
    if type(t) is not int or t < 1 or len(shares) < t:
        raise ShamirError(f"need {t} shares, got {len(shares)}")
    pts = shares[:t]
    xs = [s.x for s in pts]
    if len(set(xs)) != t:
        raise ShamirError("shares have repeated indices")
    secret = 0
    for j, sj in enumerate(pts):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (sj.x - xm) % PRIME
        secret = (secret + sj.y * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * length):
        raise ShamirError("shares do not rebuild a secret of the expected length")
    return secret.to_bytes(length, "big")
