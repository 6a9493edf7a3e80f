"""Region budgets: ``torch.autograd.graph.region_activation_memory_budget(f)`` on part of a graph.

PyTorch's meaning, per region: ``f`` is where the region's saved activation bytes lie between
checkpointing the whole region (``0``: the least the region can save) and the default plan (``1``).
PyTorch applies one budget per graph and requires it to cover every forward op; here each region
(the forward candidates traced under one budget value) gets its own, and what no region covers is
left to the graph's own plan.

How: recomputing a region's ops is made cheaper in the flow network by a price factor ``m`` in
``(0, 1]`` on their recompute seconds. As ``m`` falls the min cut saves fewer of the region's bytes
(the cut is monotone in each node's recompute price), so the largest ``m`` whose cut at the default
price fits the region's byte target is found by bisection (``m`` on a log scale, a few dozen
max-flows). Regions are fitted one after another, then once more, since a boundary node's choice
in one region can move what the next saves. The fitted cut's decisions inside the regions are then
pinned (what it recomputes must be recomputed, what it saves may not be), and the planner plans the
rest of the graph, at its real prices, with the graph's own budget: inside a region its own budget
wins, outside every region the ``memory_budget`` knob does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .analysis import GraphSummary, Reason, ReasonKind
from .mincut import CutNetwork
from .plan import Cut, CutProblem

# The price factor that recomputes everything a region can recompute (its least bytes).
LEAST_FACTOR = 1e-7
BISECTION_STEPS = 24
SWEEPS = 2


@dataclass(frozen=True)
class RegionBudget:
    """One region's budget and what the fitted repricing gives it (bytes at the default price)."""

    fraction: float
    num_nodes: int
    least_bytes: float  # saved by the region when recomputation there is free
    default_bytes: float  # saved by the region in the fastest plan
    target_bytes: float  # least + fraction * (default - least)
    saved_bytes: float  # saved by the region once repriced
    price_factor: float  # m: the region's recompute seconds are multiplied by it


def regions_of(summary: GraphSummary) -> dict[float, np.ndarray]:
    """Each budget value and the mask of the forward candidates traced under it."""
    if summary.region_budget is None:
        return {}
    budgets = summary.region_budget
    values = sorted({float(v) for v in budgets[~np.isnan(budgets)]})
    return {value: budgets == value for value in values}


def _repriced(problem: CutProblem, factors: np.ndarray) -> CutProblem:
    return dataclasses.replace(problem, recompute_seconds=problem.recompute_seconds * factors)


def _region_bytes(problem: CutProblem, cut: Cut, mask: np.ndarray) -> float:
    return float(problem.save_bytes[cut.saved & mask].sum())


def fit_region_budgets(problem: CutProblem, lam_default: float) -> tuple[CutProblem, tuple[RegionBudget, ...]]:
    """The problem with each region's recomputation repriced to meet its budget, and what each
    region got. A problem without regions comes back as it is."""
    regions = regions_of(problem.summary)
    if not regions:
        return problem, ()
    factors = np.ones(problem.summary.num_nodes)

    def saved_with(mask: np.ndarray, factor: float) -> float:
        trial = factors.copy()
        trial[mask] = factor
        cut = CutNetwork(_repriced(problem, trial)).solve(lam_default)
        return _region_bytes(problem, cut, mask)

    ends: dict[float, tuple[float, float]] = {}
    for _ in range(SWEEPS):
        for fraction, mask in regions.items():
            least, default = saved_with(mask, LEAST_FACTOR), saved_with(mask, 1.0)
            ends[fraction] = (least, default)
            target = least + fraction * (default - least)
            if default <= target:
                factors[mask] = 1.0
                continue
            low, high = np.log(LEAST_FACTOR), 0.0  # saved_with(low) <= target < saved_with(high)
            for _ in range(BISECTION_STEPS):
                middle = 0.5 * (low + high)
                if saved_with(mask, float(np.exp(middle))) <= target:
                    low = middle
                else:
                    high = middle
            factors[mask] = float(np.exp(low))
    fitted = CutNetwork(_repriced(problem, factors)).solve(lam_default)
    report = []
    for fraction, mask in regions.items():
        least, default = ends[fraction]
        report.append(
            RegionBudget(
                fraction=fraction,
                num_nodes=int(mask.sum()),
                least_bytes=least,
                default_bytes=default,
                target_bytes=least + fraction * (default - least),
                saved_bytes=_region_bytes(problem, fitted, mask),
                price_factor=float(factors[mask][0]),
            )
        )
    return _pinned(problem, fitted, regions), tuple(report)


def _pinned(problem: CutProblem, fitted: Cut, regions: dict[float, np.ndarray]) -> CutProblem:
    """``problem`` (at its own prices) with each region's decisions fixed as the fitted cut made
    them: what it recomputes must be recomputed, what it saves may not be recomputed. The
    graph's own budget then plans only what no region covers."""
    summary = problem.summary
    in_region = np.zeros(summary.num_nodes, dtype=bool)
    for mask in regions.values():
        in_region |= mask
    must_recompute = summary.must_recompute | (in_region & fitted.recomputed)
    no_recompute = list(summary.no_recompute_reason)
    for i in np.flatnonzero(in_region & fitted.saved):
        if no_recompute[i] is None:
            budget = float(summary.region_budget[i])
            no_recompute[i] = Reason(ReasonKind.REGION_BUDGET, f"region_activation_memory_budget({budget:g}) saves it")
    pinned = dataclasses.replace(summary, must_recompute=must_recompute, no_recompute_reason=tuple(no_recompute))
    return dataclasses.replace(problem, summary=pinned)
