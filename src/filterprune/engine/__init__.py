"""The pruning engine: dependency graph, criteria, plans, surgery and profiling.

It knows nothing of training, data, the CLI or reports.
"""

from filterprune.engine.criteria import CRITERIA, get_criterion, l1_norm, l2_norm
from filterprune.engine.graph import RESIDUAL_POLICIES, ChannelGroup, DependencyGraph, trace
from filterprune.engine.plan import PruningPlan, kept_count, resolve_ratios, select_filters
from filterprune.engine.profile import Profile, profile
from filterprune.engine.pruner import PruneResult, plan_pruning, prune
from filterprune.engine.surgery import apply_plan
from filterprune.engine.variants import PrunedVariants

__all__ = [
    "CRITERIA", "RESIDUAL_POLICIES", "ChannelGroup", "DependencyGraph", "Profile", "PruneResult",
    "PrunedVariants", "PruningPlan",
    "apply_plan", "get_criterion", "kept_count", "l1_norm", "l2_norm", "plan_pruning", "profile",
    "prune", "resolve_ratios", "select_filters", "trace",
]
