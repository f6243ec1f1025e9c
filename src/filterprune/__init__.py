"""filterprune: structured filter pruning of ConvNets (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017) that removes filters physically and reports what was gained."""

from filterprune.analysis import SensitivityResult, sensitivity
from filterprune.checkpoint import ModelSpec, load, save
from filterprune.engine import (
    Budget,
    Coverage,
    PlanResult,
    PruneResult,
    PruningPlan,
    apply_plan,
    plan_pruning,
    profile,
    prune,
)
from filterprune.errors import FilterpruneError, FilterpruneWarning
from filterprune.latency_table import LatencyTable, latency_table

__version__ = "0.1.0"

__all__ = [
    "Budget", "Coverage", "FilterpruneError", "FilterpruneWarning", "LatencyTable", "ModelSpec",
    "PlanResult", "PruneResult", "PruningPlan", "SensitivityResult", "__version__", "apply_plan",
    "latency_table", "load", "plan_pruning", "profile", "prune", "save", "sensitivity",
]
