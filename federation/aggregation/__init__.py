"""Aggregation rules for a round's decoded updates.

    base.py      Contribution, AggregationRule (one method: aggregate(round, contributions))
    registry.py  AGGREGATION_RULES: name -> rule class (a new rule: one line there)
    fedavg.py    FedAvg, the default, and the pure `fedavg` it calls
"""
from .base import AggregationRule, Contribution
from .fedavg import FedAvg, fedavg
from .registry import AGGREGATION_RULES

__all__ = ["AGGREGATION_RULES", "AggregationRule", "Contribution", "FedAvg", "fedavg"]
