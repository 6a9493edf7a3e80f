"""The fastest plan: the min cut at the default price, one max-flow.

At ``lam_default`` (bytes per second of recompute) the cut minimises saved bytes plus the bytes
recomputation costs in time, so it recomputes only what is cheaper to recompute than to keep
and read back. It is the plan for ``time_tolerance=0`` with no budget, the ILP's fallback, and
the first vertex of the hull every other plan is chosen from (rematpass.planner).
"""

from __future__ import annotations

from .mincut import CutNetwork
from .plan import CutProblem, Plan


def fastest_plan(problem: CutProblem, lam_default: float) -> Plan:
    """The min-cut plan at ``lam_default``; raises InfeasibleCut when no finite cut exists."""
    cut = CutNetwork(problem).solve(lam_default)
    return Plan(cut, lam_default, None, True, 1, (cut.hull_point(),))
