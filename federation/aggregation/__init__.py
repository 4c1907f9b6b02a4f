"""Aggregation rules for a round's decoded updates.

    base.py      Contribution, AggregationRule (one method: aggregate(round, contributions))
    registry.py  AGGREGATION_RULES: name -> rule class (a new rule: one line there)
    fedavg.py    FedAvg and the pure `fedavg` it calls
    bounded.py   BoundedFedAvg (the node's default): norms clipped and token claims capped
                 against the round's lower median, then fedavg
    median.py, trimmed_mean.py, krum.py, centered_clipping.py   the robust rules (unweighted)
    vectors.py   updates as float64 vectors, for the robust rules
    outer.py     NesterovOuter: DiLoCo's outer step on the aggregate (the global step)
"""
from .base import AggregationRule, Contribution
from .bounded import BoundedFedAvg, bound_contributions
from .centered_clipping import CenteredClipping, centered_clipping
from .fedavg import FedAvg, fedavg
from .krum import MultiKrum, multi_krum
from .outer import MOMENTUM_PREFIX, NesterovOuter
from .median import CoordinateMedian, coordinate_median
from .registry import AGGREGATION_RULES
from .trimmed_mean import TrimmedMean, trimmed_mean

__all__ = ["AGGREGATION_RULES", "AggregationRule", "BoundedFedAvg", "CenteredClipping",
           "Contribution", "CoordinateMedian", "FedAvg", "MOMENTUM_PREFIX", "MultiKrum",
           "NesterovOuter", "TrimmedMean",
           "bound_contributions", "centered_clipping", "coordinate_median", "fedavg",
           "multi_krum", "trimmed_mean"]
