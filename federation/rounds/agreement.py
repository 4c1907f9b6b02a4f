"""How the swarm agrees on which updates form round r (protocol v2; docs/protocol.md).

No server and no vote: every node that closes round r itself (its `--min-peers` updates are
in, or its deadline passed) signs a round record of what it aggregated and gossips it; a node
that receives a record for its round and base adapter before closing stops collecting and
takes part in the choice instead. Each node then waits, at most `settle_s`, until every
contributor of the best record it knows has gossiped some record of the round (its own
proposal, or the one it adopted: adopting republishes it, which is the acknowledgement), and
adopts the best record whose new adapter it can recompute bit for bit:

    best = the most contributors, then the lowest proposer rank
           (SHA-256(base adapter | round | proposer): nobody can choose to win every round);
    in a large swarm (where only the best-ranked contributors propose) the count is capped
    at the quorum (--min-peers + 1): every record that met the quorum differs by rank alone.

Why the cap: a record proposed later holds more updates (more arrived meanwhile), so under
"most contributors" a late record beat the early one after part of the swarm had adopted the
early one. On a loaded 32-node swarm that split rounds into 2-6 adapters; with the cap a late
record wins only if its proposer ranks better, and the best-ranked contributor proposes first.

Recomputing needs every named payload (a node fetches those it lacks from their senders or
from anyone who verified them) and the same aggregation rule; a record that does not
recompute is refused with a logged reason and the next best is tried. Nodes that see the same
records adopt the same one; when gossip splits them anyway, the next round's manifests and
records show both adapters and the side with fewer signers re-syncs (coordinator.catch_up).
"""
from __future__ import annotations

from collections.abc import Iterable

from bitswarm.federation.round_record import RoundRecord, proposer_rank


def ranked(records: Iterable[RoundRecord], quorum: int | None = None) -> list[RoundRecord]:
    """Distinct records (by signed bytes), best first; quorum: the contributor count at which
    records tie on size (RoundRecord.priority_at; None: no cap)."""
    unique = {r.data: r for r in records}
    return sorted(unique.values(), key=lambda r: r.priority_at(quorum))


def acknowledged(best: RoundRecord, authors: set[str], me: str) -> bool:
    """Whether every contributor of `best` (other than `me`) authored a record this round."""
    return set(best.contributors) - {me} <= authors


def outranking(best: RoundRecord, authors: set[str], me: str) -> set[str]:
    """The contributors of `best` (other than `me`) that rank better as proposers than its
    proposer and have authored no record this round. When records tie on size (best holds at
    least the quorum), only these could still propose a record that beats `best`: a slow
    best-ranked contributor's record arriving after part of the swarm adopted `best` is what
    split loaded large-swarm rounds."""
    rank = proposer_rank(best.base_adapter, best.round, best.proposer)
    return {p for p in set(best.contributors) - {me} - authors
            if proposer_rank(best.base_adapter, best.round, p) < rank}
