"""Privacy auditing of DP fine-tuning in one run: canaries, the Steinke et al. and f-DP epsilon lower bounds, the
pipeline."""

from tuneguard.dpaudit.bound import (BoundParams, OneRunBound, bound_ceiling, epsilon_lower_bound,
                                     fdp_epsilon_lower_bound, one_run_audit, p_value)
from tuneguard.dpaudit.canaries import KINDS, Canary, CanaryParams, draw_inclusion, make_canaries

__all__ = ["KINDS", "BoundParams", "Canary", "CanaryParams", "OneRunBound", "bound_ceiling", "draw_inclusion",
           "epsilon_lower_bound", "fdp_epsilon_lower_bound", "make_canaries", "one_run_audit", "p_value"]
