"""Choose among min-cut plans by the step's predicted peak memory, not summed saved bytes.

Summed saved bytes is what the flow network prices, but what runs out is the
peak: recomputation in the backward allocates too, and a plan that saves less
can peak higher. ``peak_frontier`` scores the hull's plans (passes.hull) with a
peak predictor and keeps those no other plan beats on both peak and
recomputation; ``choose_on_frontier`` takes the least-recompute one that fits
the target; ``refine_between`` fills in the hull between two frontier plans.

Because the plans that fit a lower target are a subset of those that fit a
higher one, the chosen plan's predicted peak never rises as the target falls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .mincut import CutNetwork
from .plan import Cut

MAX_PEAK_EVALUATIONS = 16


@dataclass(frozen=True, eq=False)  # compared by identity: a Cut holds arrays
class PeakPoint:
    cut: Cut
    peak: int


def peak_frontier(plans: list[Cut], peak_of: Callable[[Cut], int], max_evaluations: int = MAX_PEAK_EVALUATIONS) -> tuple[list[PeakPoint], list[PeakPoint]]:
    """(frontier, everything scored): the plans worth choosing, most saved bytes first.

    A plan is kept only if its predicted peak is below that of every plan that
    saves more (and so recomputes less): saving less only to peak higher is
    never worth its recomputation. Along the frontier saved bytes and peak both
    fall while recompute cost rises. At most ``max_evaluations`` plans are
    scored, spread evenly along the hull (the default and the least-bytes plan
    always among them).
    """
    if len(plans) > max_evaluations:
        step = (len(plans) - 1) / (max_evaluations - 1)
        plans = [plans[round(i * step)] for i in range(max_evaluations)]
    scored = [PeakPoint(cut, int(peak_of(cut))) for cut in plans]
    return pareto(scored), scored


def pareto(points: list[PeakPoint]) -> list[PeakPoint]:
    """The points no other point beats on both peak and recomputation, most saved bytes first."""
    frontier: list[PeakPoint] = []
    for point in sorted(points, key=lambda p: (-p.cut.saved_bytes, p.cut.recompute_cost)):
        if not frontier or point.peak < frontier[-1].peak:
            frontier.append(point)
    return frontier


def choose_on_frontier(
    frontier: list[PeakPoint], *, saved_target: float | None = None, peak_cap: float | None = None
) -> tuple[PeakPoint, bool]:
    """The first frontier plan (least recompute) within the target; the last one if none is.

    ``saved_target`` caps summed saved bytes (fractions of the budget scale),
    ``peak_cap`` the predicted peak (absolute budgets). Returns (plan, met).
    """
    for point in frontier:
        if saved_target is not None and point.cut.saved_bytes > saved_target:
            continue
        if peak_cap is not None and point.peak > peak_cap:
            continue
        return point, True
    return frontier[-1], False


REFINED_PLANS = 8


def refine_between(
    network: CutNetwork, hull: list[Cut], above: PeakPoint, below: PeakPoint, peak_of: Callable[[Cut], int],
    count: int = REFINED_PLANS,
) -> tuple[list[PeakPoint], int]:
    """Plans between two neighbouring frontier points, most saved bytes first; and the solves spent.

    The hull's vertices can be far apart: with identical layers one breakpoint
    switches them all at once. ``CutNetwork.plans_between`` fills each hull
    edge from ``above`` to ``below`` with plans that tie at its breakpoint
    (about ``count`` in all, spread by bytes). A plan is kept only if its
    predicted peak is below every kept plan that saves more and not below
    ``below``'s, so the plan chosen for a budget still never peaks higher
    when the budget falls.
    """
    low, high = below.cut.saved_bytes, above.cut.saved_bytes
    span = [c for c in hull if low <= c.saved_bytes <= high]
    candidates: list[Cut] = []
    solves = 0
    for more, less in zip(span, span[1:]):
        lam = more.breakpoint(less)
        if lam is None:
            continue
        share = max(1, round(count * (more.saved_bytes - less.saved_bytes) / (high - low)))
        candidates += network.plans_between(lam, share)
        candidates.append(less)
        solves += 1
    distinct = {(c.saved_bytes, c.recompute_cost): c for c in candidates if low < c.saved_bytes < high}
    kept: list[PeakPoint] = []
    lowest = above.peak
    for cut in sorted(distinct.values(), key=lambda c: (-c.saved_bytes, c.recompute_cost)):
        peak = int(peak_of(cut))
        if below.peak <= peak < lowest:
            kept.append(PeakPoint(cut, peak))
            lowest = peak
    return kept, solves
