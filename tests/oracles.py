"""Oracles for the tests: slower or older ways to plan that the product's planner is checked
against. Nothing here ships in the package.

- ``plan_for_bytes``: a byte target on summed saved bytes, met by searching lambda over the
  min-cut's convex hull (Eisner-Severance) and filling in the edge the target falls on.
- ``solve_ilp_budget``: the exact least recompute cost under a byte target (HiGHS), which the
  hull search approximates; ``compare_with_hull`` measures the gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rematpass.passes.evaluate import budget_costs, budget_time
from rematpass.passes.hull import LOWEST_LAMBDA_FRACTION
from rematpass.passes.ilp import OPTIMAL, ILPResult, _milp, _result
from rematpass.passes.mincut import CutNetwork, cut_from_source_side
from rematpass.passes.plan import Cut, CutProblem, HullPoint, Plan

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


def plan_for_bytes(
    problem: CutProblem,
    lam_default: float,
    budget: float | Callable[[float, float], float] | None = None,
) -> Plan:
    """The cheapest hull plan whose summed saved bytes fit the budget (rematpass's first budget
    meaning, before budgets were planned on the predicted peak).

    ``budget`` is None (the plan at ``lam_default``), a number of bytes, or a
    function of (least bytes, default bytes) that returns the byte target.
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


def solve_ilp_budget(
    problem: CutProblem,
    target_bytes: float,
    *,
    time_limit: float | None = None,
    lam: float = math.nan,
    tie_break: bool = True,
) -> ILPResult:
    """Minimise recompute cost subject to ``saved bytes <= target_bytes``.

    The objective is in ``evaluate.budget_costs`` units; ``lam`` only labels
    the returned cut. With ``tie_break``, a second solve keeps that optimum
    and saves as few bytes as it can.
    """
    started = time.perf_counter()
    n = problem.summary.num_nodes
    nbytes, save_time, recompute, _ = budget_costs(problem)
    budget_row = (np.concatenate([nbytes, np.zeros(n)]), -np.inf, float(target_bytes))
    time_cost = np.concatenate([save_time, recompute]).astype(np.float64)
    status, x, message = _milp(problem, time_cost, [budget_row], time_limit)
    if status == OPTIMAL and tie_break:
        best = float(time_cost[x].sum())
        remaining = None if time_limit is None else time_limit - (time.perf_counter() - started)
        bytes_cost = np.concatenate([nbytes, np.zeros(n)])
        second = _milp(problem, bytes_cost, [budget_row, (time_cost, -np.inf, best)], remaining)
        if second[0] == OPTIMAL and float(time_cost[second[1]].sum()) <= best:
            x = second[1]

    def objective_of(cut: Cut) -> int:
        return budget_time(problem, cut)

    return _result(problem, lam, status, x, message, started, objective_of)


@dataclass(frozen=True)
class BudgetGap:
    """The hull plan against the ILP's best plan under one byte target."""

    target_bytes: float
    hull: Cut
    ilp: Cut
    hull_recompute: int  # evaluate.budget_costs units (exact)
    ilp_recompute: int
    hull_seconds: float  # the same, in the cost model's seconds
    ilp_seconds: float
    num_solves: int  # max-flow solves of the hull search

    @property
    def gap(self) -> float:
        """Recompute seconds the hull plan spends beyond the optimum (>= 0)."""
        return self.hull_seconds - self.ilp_seconds

    @property
    def relative_gap(self) -> float:
        return self.gap / self.hull_seconds if self.hull_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"target {self.target_bytes:,.0f} B: hull plan {self.hull.saved_bytes:,.0f} B / {self.hull_seconds:.6g} s "
            f"({self.num_solves} max-flows), ILP {self.ilp.saved_bytes:,.0f} B / {self.ilp_seconds:.6g} s, "
            f"gap {self.gap:.6g} s ({100 * self.relative_gap:.3f}%)"
        )


def compare_with_hull(
    problem: CutProblem, lam_default: float, target_bytes: float, *, time_limit: float | None = None
) -> BudgetGap:
    """Solve one byte target both ways; raises RuntimeError when either finds no plan."""
    hull = plan_for_bytes(problem, lam_default, float(target_bytes))
    if not hull.budget_met:
        raise RuntimeError(f"no min-cut plan fits {target_bytes} bytes")
    result = solve_ilp_budget(problem, target_bytes, time_limit=time_limit, lam=hull.cut.lam)
    if not result.optimal:
        raise RuntimeError(f"ILP {result.status}: {result.message}")
    return BudgetGap(
        target_bytes=float(target_bytes),
        hull=hull.cut,
        ilp=result.cut,
        hull_recompute=budget_time(problem, hull.cut),
        ilp_recompute=result.objective,
        hull_seconds=hull.cut.time_cost,
        ilp_seconds=result.cut.time_cost,
        num_solves=hull.num_solves,
    )
