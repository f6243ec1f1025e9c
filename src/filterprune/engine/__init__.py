"""The pruning engine: dependency graph, criteria, plans, surgery and profiling.

It knows nothing of training, data, the CLI or reports.
"""

from filterprune.engine.activations import ACTIVATION_CRITERIA, activation_scores
from filterprune.engine.budget import Budget, allocate, max_share
from filterprune.engine.cluster import cluster_representatives, select_by_clustering
from filterprune.engine.coverage import BlockedLayer, Coverage
from filterprune.engine.criteria import (
    CRITERIA,
    get_criterion,
    l1_largest,
    l1_norm,
    l2_norm,
    random_criterion,
)
from filterprune.engine.custom import register_layer
from filterprune.engine.dependencies import trace
from filterprune.engine.graph import RESIDUAL_POLICIES, ChannelGroup, DependencyGraph
from filterprune.engine.plan import (
    PruningPlan,
    decide_groups,
    kept_count,
    resolve_ratios,
    select_filters,
)
from filterprune.engine.profile import Profile, profile
from filterprune.engine.pruner import PlanResult, PruneResult, plan_pruning, prune
from filterprune.engine.surgery import apply_plan, zero_pruned
from filterprune.engine.variants import PrunedVariants

__all__ = [
    "ACTIVATION_CRITERIA", "CRITERIA", "RESIDUAL_POLICIES", "BlockedLayer", "Budget",
    "ChannelGroup", "Coverage", "DependencyGraph", "PlanResult", "Profile", "PruneResult",
    "PrunedVariants", "PruningPlan", "activation_scores", "allocate", "apply_plan",
    "cluster_representatives", "decide_groups", "get_criterion", "kept_count", "l1_largest",
    "l1_norm", "l2_norm", "max_share", "plan_pruning", "profile", "prune", "random_criterion",
    "register_layer", "resolve_ratios", "select_by_clustering", "select_filters", "trace",
    "zero_pruned",
]
