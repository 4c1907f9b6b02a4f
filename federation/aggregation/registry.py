"""Every aggregation rule, keyed by its name (`AggregationRule.name`). A new rule: one line here."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import AggregationRule
from .bounded import BoundedFedAvg
from .centered_clipping import CenteredClipping
from .fedavg import FedAvg
from .krum import MultiKrum
from .median import CoordinateMedian
from .trimmed_mean import TrimmedMean

AGGREGATION_RULES: Mapping[str, type[AggregationRule]] = MappingProxyType({
    cls.name: cls for cls in (FedAvg, BoundedFedAvg, CoordinateMedian, TrimmedMean, MultiKrum,
                              CenteredClipping)
})
