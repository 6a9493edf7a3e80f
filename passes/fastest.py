"""Meet a memory budget by searching lambda over the min-cut's convex hull.

As lambda falls, saving gets relatively dearer, so the min cut saves no more
bytes (the source sides are nested). The plans form the lower convex hull of
(saved bytes, recompute cost); each hull edge is found by one solve at the
lambda where the lines of its two end plans cross (Eisner-Severance search),
so a budget costs a handful of max-flow solves rather than a bisection's dozens.

The search reuses its work: the network is built once, and a solve between
two known plans merges what both plans agree on into the source and the sink,
so the max-flows shrink as the search closes in on the budget. The hull edge
the budget falls on is then filled in with the plans that tie at its
breakpoint (identical layers switch together there), and the one that saves
most within the budget is taken.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .mincut import CutNetwork, cut_from_source_side
from .plan import Cut, CutProblem, HullPoint, Plan

# The far end of the hull: recompute cost still breaks ties between plans of
# equal bytes, but never outweighs a byte.
LOWEST_LAMBDA_FRACTION = 1e-7
MAX_SOLVES = 64


class _Solver:
    def __init__(self, problem: CutProblem):
        self.problem = problem
        self.network = CutNetwork(problem)  # built once: each lambda pays only its max-flow
        self.solves = 0
        self.seen: list[HullPoint] = []

    def __call__(self, lam: float, between: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Cut, np.ndarray]:
        """The plan at ``lam`` and the flow's source side."""
        self.solves += 1
        side = self.network.min_cut(lam, between).source_side
        cut = cut_from_source_side(self.problem, lam, side)
        self.seen.append(cut.hull_point())
        return cut, side


def plan_for_budget(
    problem: CutProblem,
    lam_default: float,
    budget: float | Callable[[float, float], float] | None = None,
) -> Plan:
    """The cheapest plan whose summed saved bytes fit the budget.

    ``budget`` is None (the plan at ``lam_default``), a number of bytes, or a
    function of (least bytes, default bytes) that returns the byte target,
    which is how a fraction of the default plan is expressed.
    """
    solve = _Solver(problem)
    high, high_side = solve(lam_default)
    if budget is None:
        return Plan(high, lam_default, None, True, solve.solves, tuple(solve.seen))
    default_saved = high.saved
    low, low_side = solve(lam_default * LOWEST_LAMBDA_FRACTION)
    target = budget(low.saved_bytes, high.saved_bytes) if callable(budget) else float(budget)
    if high.saved_bytes <= target:
        return Plan(high, lam_default, target, True, solve.solves, tuple(solve.seen), default_saved=default_saved)
    if low.saved_bytes > target:
        return Plan(low, lam_default, target, False, solve.solves, tuple(solve.seen), default_saved=default_saved)
    while solve.solves < MAX_SOLVES:
        crossing = high.breakpoint(low)
        if crossing is None or not (low.lam < crossing < high.lam):
            break
        middle, middle_side = solve(crossing, (low_side, high_side))
        if middle.same_plan(low) or middle.same_plan(high):
            break
        if not (low.saved_bytes <= middle.saved_bytes <= high.saved_bytes):
            break  # quantisation broke the nesting; the last feasible plan stands
        if middle.saved_bytes <= target:
            low, low_side = middle, middle_side
        else:
            high, high_side = middle, middle_side
    low = _fill_in(solve, low, high, target)
    return Plan(low, lam_default, target, True, solve.solves, tuple(solve.seen), default_saved=default_saved)


def _fill_in(solve: _Solver, low: Cut, high: Cut, target: float, count: int = 16) -> Cut:
    """The plan that saves most within ``target`` among those that tie on the hull edge from
    ``high`` to ``low`` (CutNetwork.plans_between); ``low`` when none fits better."""
    lam = high.breakpoint(low)
    if lam is None or solve.solves >= MAX_SOLVES:
        return low
    solve.solves += 1
    tied = solve.network.plans_between(lam, count)
    fitting = [c for c in tied if low.saved_bytes < c.saved_bytes <= target]
    return max(fitting, key=lambda c: (c.saved_bytes, -c.time_cost), default=low)
