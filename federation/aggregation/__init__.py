"""Aggregation rules for a round's decoded updates.

    base.py      Contribution, AggregationRule (one method: aggregate(round, contributions))
    registry.py  AGGREGATION_RULES: name -> rule class (a new rule: one line there)
    fedavg.py    FedAvg and the pure `fedavg` it calls
    bounded.py   BoundedFedAvg (the node's default): norms clipped and token claims capped
                 against the round's lower median, then fedavg
"""
from .base import AggregationRule, Contribution
from .bounded import BoundedFedAvg, bound_contributions
from .fedavg import FedAvg, fedavg
from .registry import AGGREGATION_RULES

__all__ = ["AGGREGATION_RULES", "AggregationRule", "BoundedFedAvg", "Contribution", "FedAvg",
           "bound_contributions", "fedavg"]
