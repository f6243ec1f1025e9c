"""filterprune: structured filter pruning of ConvNets (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017) that removes filters physically and reports what was gained."""

from filterprune.analysis import SensitivityResult, sensitivity
from filterprune.checkpoint import ModelSpec, load, save
from filterprune.engine import (
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

__version__ = "0.1.0"

__all__ = [
    "Coverage", "FilterpruneError", "FilterpruneWarning", "ModelSpec", "PlanResult", "PruneResult",
    "PruningPlan", "SensitivityResult", "__version__", "apply_plan", "load", "plan_pruning",
    "profile", "prune", "save", "sensitivity",
]
