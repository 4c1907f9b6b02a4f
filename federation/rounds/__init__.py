"""The round protocol, one job per module.

    coordinator.py  RoundCoordinator (exchange / run) and RoundResult: the round state machine
    intake.py       gossip -> validated manifests, buffered per round, handed over a channel
    fetch.py        one announced payload from its sender or a relay, verified
    serving.py      payloads, adapters, our manifest and adopted record; republishing
    agreement.py    which round record a node adopts;   view.py   the swarm's signed claims
    secure.py       a secure-aggregation round (Bonawitz et al. 2017); secure_intake.py its
                    gossip (keys, shares, unmask)

Seams: the codec (bitswarm.federation.codecs) and the aggregation rule
(bitswarm.federation.aggregation) are injected into RoundCoordinator; how peers are found is
the transport's discovery (bitswarm.federation.discovery), which the round never sees.
"""
from .coordinator import (NoRecordAdopted, RoundCoordinator, RoundResult, SwarmMovedOn,
                          SyncResult)
from .secure import RoundAbandoned

__all__ = ["NoRecordAdopted", "RoundAbandoned", "RoundCoordinator", "RoundResult", "SwarmMovedOn", "SyncResult"]
