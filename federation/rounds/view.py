"""What the swarm says it holds: signed claims "G_k has SHA-256 h", the latest per signer.

A manifest of round k with base adapter h claims (k, h) for its sender; a round record of round
k with new adapter h claims (k + 1, h) for its proposer and for every peer that gossips it
(nodes republish the record they adopted). The proposer's claim is inferred from others'
gossip, so it never replaces a claim of the same round that the proposer gossiped itself: once
it moved to another adapter of that round (a catch-up) and republishes that record, adopters
still republishing its old record would otherwise flip its claim back every republish period.
From these, `head` names the state a node that is
behind, or on a fork, should fetch: the highest round anyone claims, and there the hash with
the most signers (ties: the smaller hash, so every node picks the same).

Bounded: at most MAX_SIGNERS signers are tracked (the least recently heard is forgotten).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_SIGNERS = 4096


@dataclass(frozen=True)
class Head:
    """round: k; digest: 32-byte SHA-256 of G_k; signers: peer IDs claiming it, sorted."""

    round: int
    digest: bytes
    signers: tuple[str, ...]


class SwarmView:
    """The latest (round, adapter digest) claimed by each signer."""

    def __init__(self) -> None:
        self._claims: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._own: set[str] = set()          # signers whose latest claim they gossiped themselves
        self._recorders: set[str] = set()

    def note(self, signer: str, round: int, digest: bytes, *, via_record: bool = False,
             inferred: bool = False) -> None:
        """Record that `signer` holds G_round with `digest`; older claims of it are replaced,
        a claim of an older round than its latest is ignored. via_record: the claim came from
        a round record it gossiped (it takes part in agreement, not only in training).
        inferred: the claim is read off a message another peer gossiped (a record's proposer);
        it does not replace a claim of the same round that `signer` gossiped itself."""
        if via_record and len(self._recorders) < MAX_SIGNERS:
            self._recorders.add(signer)
        old = self._claims.get(signer)
        if old is not None and (old[0] > round or (
                inferred and old[0] == round and signer in self._own)):
            return
        self._claims[signer] = (round, bytes(digest))
        self._claims.move_to_end(signer)
        if inferred:
            self._own.discard(signer)
        else:
            self._own.add(signer)
        while len(self._claims) > MAX_SIGNERS:
            gone, _ = self._claims.popitem(last=False)
            self._own.discard(gone)

    def support(self, round: int, digest: bytes, *, exclude: str | None = None) -> list[str]:
        """Signers (sorted) whose latest claim is exactly (round, digest)."""
        return sorted(s for s, c in self._claims.items() if c == (round, digest) and s != exclude)

    def agrees(self, round: int, digest: bytes, *, exclude: str | None = None) -> bool:
        """Whether no signer (other than `exclude`) claims another adapter for `round`."""
        return all(c[1] == digest for s, c in self._claims.items()
                   if c[0] == round and s != exclude)

    def latest(self, *, exclude: str | None = None) -> dict[str, tuple[int, bytes]]:
        """signer -> its latest claim (round, digest)."""
        return {s: c for s, c in self._claims.items() if s != exclude}

    def recorders(self) -> set[str]:
        """Signers that gossiped round records (at most MAX_SIGNERS)."""
        return set(self._recorders)

    def signers(self, *, exclude: str | None = None) -> int:
        """How many signers are tracked (other than `exclude`)."""
        return sum(1 for s in self._claims if s != exclude)

    def best_at(self, round: int, *, exclude: str | None = None) -> Head | None:
        """The best-supported digest claimed for exactly `round` (most signers, then the
        smaller digest), ignoring `exclude`; None when nobody claims that round."""
        counts: dict[bytes, int] = {}
        for s, (r, d) in self._claims.items():
            if s != exclude and r == round:
                counts[d] = counts.get(d, 0) + 1
        if not counts:
            return None
        digest = min(counts, key=lambda d: (-counts[d], d))
        return Head(round, digest, tuple(self.support(round, digest, exclude=exclude)))

    def head(self, *, exclude: str | None = None, min_signers: int = 1) -> Head | None:
        """The highest round whose best-supported digest (see module docstring) has at least
        `min_signers` signers, ignoring `exclude` (ourselves); None when there is none. (With
        min_signers 2, one fast or lying peer alone does not make the head.)"""
        rounds = {r for s, (r, _) in self._claims.items() if s != exclude}
        for top in sorted(rounds, reverse=True):
            best = self.best_at(top, exclude=exclude)
            if best is not None and len(best.signers) >= min_signers:
                return best
        return None
