"""Every aggregation rule, keyed by its name (`AggregationRule.name`). A new rule: one line here."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import AggregationRule
from .bounded import BoundedFedAvg
from .fedavg import FedAvg

AGGREGATION_RULES: Mapping[str, type[AggregationRule]] = MappingProxyType({
    cls.name: cls for cls in (FedAvg, BoundedFedAvg)
})
