"""The exact integer program behind the min cut, solved by HiGHS (``scipy.optimize.milp``).

Two binary decisions per candidate v: ``s_v`` (saved for the backward) and
``r_v`` (computed in the backward). The rules are those the flow network
encodes with infinite edges (passes/mincut.py):

    s_v = 0                       v cannot be saved        (no_save_reason)
    r_v = 0                       v cannot be recomputed   (no_recompute_reason)
    r_v = 1                       a checkpoint policy says recompute (must_recompute)
    s_v + r_v >= 1                the backward reads v     (needed_by_backward)
    s_v + r_v <= 1                saving what is recomputed buys nothing
    r_v <= s_u + r_u              for each data edge u -> v: computing v needs u

``solve_ilp`` minimises the min cut's own objective, ``saved bytes + lam *
recompute cost``, with the very integer capacities the max-flow cuts
(``CutNetwork.quantized_node_costs``), so its optimum equals the min cut's
value exactly: a check that the network and the cut decoding are right.
(Its LP relaxation is a cut LP, so HiGHS closes it at the root.)

``ilp_plan`` is the ``solver="ilp"`` knob: the fastest plan, solved exactly.
(tests/oracles.py holds the ILP under a byte target, the exact answer the
hull's plans are compared with.)

Every solution goes through ``mincut.cut_from_plan``, so it is pruned and
scored like a min cut.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from .evaluate import quantized_objective, violations
from .fastest import fastest_plan
from .mincut import CutNetwork, cut_from_plan, hard_rules
from .plan import Cut, CutProblem, Plan

OPTIMAL = "optimal"
TIME_LIMIT = "time limit"
INFEASIBLE = "infeasible"
FAILED = "failed"


class ILPFallbackWarning(UserWarning):
    """The ILP did not prove an optimum in time (or failed): the min-cut plan is used."""


@dataclass(frozen=True)
class ILPResult:
    status: str  # OPTIMAL, TIME_LIMIT, INFEASIBLE or FAILED
    cut: Cut | None  # the pruned plan; None unless a feasible solution was found
    objective: int | None  # optimum in the quantised units of the objective solved
    seconds: float
    message: str = ""

    @property
    def optimal(self) -> bool:
        return self.status == OPTIMAL


def _constraints(problem: CutProblem, extra_rows: list[tuple[np.ndarray, float, float]] = ()):
    """Bounds and rows over x = [s (n), r (n)]; ``extra_rows`` are dense (coefficients, lb, ub)."""
    s = problem.summary
    n = s.num_nodes
    no_save, no_recompute = hard_rules(s)
    lower = np.concatenate([np.zeros(n), s.must_recompute.astype(float)])
    upper = np.concatenate([(~no_save).astype(float), (~no_recompute).astype(float)])
    idx = np.arange(n)
    m = len(s.edge_src)
    edge_rows = n + np.arange(m)
    # Row v: needed_v <= s_v + r_v <= 1.  Row n+k for edge u -> v: r_v - s_u - r_u <= 0.
    rows = np.concatenate([idx, idx, edge_rows, edge_rows, edge_rows])
    cols = np.concatenate([idx, n + idx, n + s.edge_dst, s.edge_src, n + s.edge_src])
    vals = np.concatenate([np.ones(2 * n), np.ones(m), -np.ones(2 * m)])
    matrix = sp.csr_array((vals, (rows, cols)), shape=(n + m, 2 * n))
    row_lower = np.concatenate([s.needed_by_backward.astype(float), np.full(m, -np.inf)])
    row_upper = np.concatenate([np.ones(n), np.zeros(m)])
    constraints = [LinearConstraint(matrix, row_lower, row_upper)]
    for coefficients, lb, ub in extra_rows:
        constraints.append(LinearConstraint(coefficients[None, :], lb, ub))
    return Bounds(lower, upper), constraints


@contextlib.contextmanager
def _quiet_native_stdout():
    """Silence HiGHS's own debug prints (it writes to file descriptor 1 even with disp off)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _milp(problem, cost, extra_rows, time_limit):
    """Run HiGHS; return (status, x rounded to 0/1 or None, message)."""
    bounds, constraints = _constraints(problem, extra_rows)
    options = {"mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        if time_limit <= 0:
            return TIME_LIMIT, None, "no time left"
        options["time_limit"] = float(time_limit)
    with _quiet_native_stdout():
        res = milp(cost, integrality=np.ones(len(cost)), bounds=bounds, constraints=constraints, options=options)
    x = None if res.x is None else np.round(res.x).astype(bool)
    status = {0: OPTIMAL, 1: TIME_LIMIT, 2: INFEASIBLE}.get(res.status, FAILED)
    return status, x, str(res.message)


def _result(problem, lam, status, x, message, started, objective_of) -> ILPResult:
    seconds = time.perf_counter() - started
    if x is None:
        return ILPResult(status, None, None, seconds, message)
    n = problem.summary.num_nodes
    cut = cut_from_plan(problem, lam, x[:n], x[n:])
    broken = violations(problem, cut)
    if broken:  # a rounding the tolerances let through: not a plan we may use
        return ILPResult(FAILED, None, None, seconds, f"solution breaks rules: {broken}")
    return ILPResult(status, cut, objective_of(cut), seconds, message)


def solve_ilp(problem: CutProblem, lam: float, *, time_limit: float | None = None) -> ILPResult:
    """Minimise ``saved bytes + lam * recompute cost`` exactly (quantised as the max-flow does)."""
    started = time.perf_counter()
    network = CutNetwork(problem)
    save, recompute, _ = network.quantized_node_costs(lam)
    no_save, no_recompute = network.no_save, network.no_recompute
    cost = np.concatenate([np.where(no_save, 0, save), np.where(no_recompute, 0, recompute)]).astype(np.float64)
    status, x, message = _milp(problem, cost, [], time_limit)
    return _result(
        problem, lam, status, x, message, started, lambda cut: quantized_objective(problem, lam, cut, network)
    )


def ilp_plan(problem: CutProblem, lam_default: float, *, time_limit: float = 30.0) -> Plan:
    """The ILP's optimum of the fastest plan's objective, or the min-cut plan (with an
    ``ILPFallbackWarning``) when it proves none in time. The ILP has no peak model, so it solves
    the fastest plan only: ``time_tolerance`` and budgets are the min-cut planner's."""
    started = time.perf_counter()
    fallback = fastest_plan(problem, lam_default)
    remaining = time_limit - (time.perf_counter() - started)
    try:
        result = solve_ilp(problem, lam_default, time_limit=remaining)
    except Exception as exc:  # HiGHS errors, memory: the min-cut plan stands
        result = ILPResult(FAILED, None, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    if not (result.optimal and result.cut is not None):
        warnings.warn(
            f"rematpass: the ILP solver gave no usable optimum ({result.status} after {result.seconds:.1f} s "
            f"of a {time_limit:g} s limit: {result.message}); using the min-cut plan",
            ILPFallbackWarning,
            stacklevel=2,
        )
        return fallback
    return Plan(
        result.cut, lam_default, None, budget_met=True, num_solves=fallback.num_solves, hull=fallback.hull, solver="ilp"
    )
