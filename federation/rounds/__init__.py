"""The round protocol, one job per module.

    coordinator.py  RoundCoordinator (exchange / run) and RoundResult: the round state machine
    intake.py       gossip -> validated manifests, buffered per round, handed over a channel
    fetch.py        one announced payload from its sender or a relay, verified
    serving.py      payloads, adapters, our manifest and adopted record; republishing
    agreement.py    which round record a node adopts;   view.py   the swarm's signed claims

Seams: the codec (bitswarm.federation.codecs) and the aggregation rule
(bitswarm.federation.aggregation) are injected into RoundCoordinator; how peers are found is
the transport's discovery (bitswarm.federation.discovery), which the round never sees.
"""
from .coordinator import RoundCoordinator, RoundResult, SwarmMovedOn, SyncResult

__all__ = ["RoundCoordinator", "RoundResult", "SwarmMovedOn", "SyncResult"]
