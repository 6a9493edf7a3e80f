"""Choose among min-cut plans by the step's predicted peak memory, not summed saved bytes.

Summed saved bytes is what the flow network prices, but what runs out is the
peak: recomputation in the backward allocates too, and a plan that saves less
can peak higher. ``peak_frontier`` scores the hull's plans (passes.hull) with a
peak predictor and keeps those no other plan beats on both peak and
recomputation; ``refine_between`` fills in the hull between two frontier plans.
Two ways to choose:

- by a peak cap: ``choose_on_frontier`` takes the least-recompute plan under it;
- by a recompute allowance: ``recompute_allowance`` prices a cap on summed
  saved bytes in the budget's spend (``CutProblem.budget_spend_of``: FLOPs of
  compute-bound ops, what the cheapest plans that meet it spend), and
  ``least_peak_within`` takes the plan with the least peak that spends no more.

Either way, the plans that fit a tighter target are a superset (allowance) or
subset (cap) of those that fit a looser one, all scored once, so the chosen
plan's predicted peak never rises as the target tightens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .mincut import CutNetwork
from .op_sums import OpSums
from .plan import Cut

MAX_PEAK_EVALUATIONS = 16
# Predicted peaks this close are a tie under a fraction: no plan is worth recomputing more for a
# difference the predictor cannot resolve (ViT-B/16 at 0.3 spent 4.6 GFLOP more for 0.07%).
PEAK_TIE = 0.005


@dataclass(frozen=True, eq=False)  # compared by identity: a Cut holds arrays
class PeakPoint:
    cut: Cut
    peak: int  # predicted step peak, bytes

    def scored(self) -> ScoredPlan:
        return ScoredPlan(self.cut.saved_bytes, self.cut.time_cost, self.peak)


class ScoredPlan(NamedTuple):
    """A plan scored for its peak, as reports keep it (no arrays)."""

    saved_bytes: float
    time_cost: float  # Cut.time_cost: seconds
    predicted_peak_bytes: int


class PeakFrontier(NamedTuple):
    frontier: list[PeakPoint]  # the plans worth choosing, most saved bytes first
    scored: list[PeakPoint]  # every plan scored


class Allowance(NamedTuple):
    spend: float  # of a fractional budget, in CutProblem.budget_spend_of's unit
    met: bool  # False: no scored plan saves little enough, and every plan is allowed


class FrontierChoice(NamedTuple):
    point: PeakPoint
    met: bool  # False: no frontier plan fits the cap, and ``point`` is the least-peak one


class Refinement(NamedTuple):
    points: list[PeakPoint]  # most saved bytes first
    solves: int  # max-flow solves spent


def peak_frontier(
    plans: list[Cut], peak_of: Callable[[Cut], int], max_evaluations: int = MAX_PEAK_EVALUATIONS
) -> PeakFrontier:
    """The plans worth choosing, most saved bytes first, and every plan scored.

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
    return PeakFrontier(pareto(scored), scored)


def pareto(points: list[PeakPoint]) -> list[PeakPoint]:
    """The points no other point beats on both peak and recomputation, most saved bytes first."""
    frontier: list[PeakPoint] = []
    for point in sorted(points, key=lambda p: (-p.cut.saved_bytes, p.cut.time_cost)):
        if not frontier or point.peak < frontier[-1].peak:
            frontier.append(point)
    return frontier


def recompute_allowance(
    points: list[PeakPoint],
    saved_target: float,
    spend_of: Callable[[Cut], float],
    ops_of: Callable[[Cut], frozenset] | None = None,
    op_spend: np.ndarray | None = None,
) -> Allowance:
    """The least recomputation that brings summed saved bytes to ``saved_target``, in what
    ``spend_of(cut)`` counts (FLOPs of compute-bound ops: ``CutProblem.budget_spend_of``).

    Read off the scored plans in (saved bytes, spend): between two plans the
    target is priced by linear interpolation, as a fractional knapsack would.
    ``ops_of(cut)``, when given, names the compute-bound ops a plan recomputes,
    and ``op_spend`` what each op spends: PyTorch's default solver is a 0/1
    knapsack, which buys whole ops, so the interpolated price is rounded up to
    the least that some of the ops separating the two plans sum to
    (passes.op_sums). Two plans one op apart: the target costs the whole op.
    ``met`` is False when no scored plan saves that little; then every plan is
    allowed.
    """
    spent = sorted({(p.cut.saved_bytes, spend_of(p.cut)): p.cut for p in points}.items(), key=lambda item: item[0])
    if not spent or spent[0][0][0] > saved_target:
        return Allowance(math.inf, False)
    best = min(spend for (saved, spend), _ in spent if saved <= saved_target)
    for i, ((low_saved, low_spend), low_cut) in enumerate(spent):
        if low_saved > saved_target:
            break
        for (high_saved, high_spend), high_cut in spent[i + 1 :]:
            if high_saved <= saved_target:
                continue
            share = (high_saved - saved_target) / (high_saved - low_saved)
            price = high_spend + share * (low_spend - high_spend)
            if price >= best:
                continue  # whole ops only ever cost more
            if ops_of is not None:
                between = sorted(ops_of(low_cut) - ops_of(high_cut))
                if len(between) <= 1:
                    continue  # one indivisible op apart: the low plan's own spend, already in ``best``
                if op_spend is not None:
                    price = min(low_spend, high_spend + OpSums(op_spend[between]).ceiling(price - high_spend))
            best = min(best, price)
    return Allowance(best, True)


def least_peak_within(points: list[PeakPoint], allowance: float, spend_of: Callable[[Cut], float]) -> PeakPoint:
    """The plan with the least predicted peak among those spending at most ``allowance`` (as
    ``spend_of`` counts; ties: the least time cost), once ``set_aside`` has left out the plans a
    quicker one matches. Which plans those are does not depend on the allowance, so the chosen peak
    still never rises as the allowance grows. Some plan must fit: the caller includes the default."""
    aside = set_aside(points, spend_of)
    fitting = [p for p, out in zip(points, aside) if spend_of(p.cut) <= allowance * (1 + 1e-9) and not out]
    return min(fitting, key=lambda p: (p.peak, p.cut.time_cost, -p.cut.saved_bytes))


def set_aside(points: list[PeakPoint], spend_of: Callable[[Cut], float]) -> np.ndarray:
    """Per point, whether a kept plan with less time cost and no more spend peaks within
    ``PEAK_TIE`` of it: recomputing more for a difference the predictor cannot resolve is not worth
    it. Plans are kept in order of time cost, so the least peak the kept plans reach under any
    allowance is within ``PEAK_TIE`` of the least of all."""
    peaks = np.array([p.peak for p in points], dtype=np.float64)
    times = np.array([p.cut.time_cost for p in points])
    spends = np.array([spend_of(p.cut) for p in points])
    kept = np.zeros(len(points), dtype=bool)
    aside = np.zeros(len(points), dtype=bool)
    for i in np.argsort(times, kind="stable"):
        aside[i] = bool(
            (
                kept & (peaks <= peaks[i] * (1 + PEAK_TIE)) & (times < times[i]) & (spends <= spends[i] * (1 + 1e-9))
            ).any()
        )
        kept[i] = not aside[i]
    return aside


def shallowest_within(
    points: list[PeakPoint], allowance: float, spend_of: Callable[[Cut], float], peak_cap: float
) -> PeakPoint | None:
    """The plan that recomputes least (least time cost; ties: most saved bytes) among those spending
    at most ``allowance`` and predicted to peak within ``peak_cap``; None if none is."""
    fitting = [p for p in points if spend_of(p.cut) <= allowance * (1 + 1e-9) and p.peak <= peak_cap]
    return min(fitting, key=lambda p: (p.cut.time_cost, -p.cut.saved_bytes, p.peak), default=None)


def choose_on_frontier(frontier: list[PeakPoint], peak_cap: float) -> FrontierChoice:
    """The first frontier plan (least recompute) whose predicted peak fits ``peak_cap``;
    the last one (the least peak) if none does."""
    for point in frontier:
        if point.peak <= peak_cap:
            return FrontierChoice(point, True)
    return FrontierChoice(frontier[-1], False)


REFINED_PLANS = 8
# A hull edge whose ops pay at most ALL_LEVELS sums gets a plan for each (large ops, ResNet-50's
# convolutions: there a fraction's price is one of a few sums); the edges of many small ops share
# SPLIT_PLANS plans, where the sums are close together anyway. At most ALL_LEVEL_PLANS plans go to
# the first kind, the edges nearest the default plan first (ResNet-50: 32 plans on 8 edges).
ALL_LEVELS = 8
ALL_LEVEL_PLANS = 32
SPLIT_PLANS = 16


def split_by_ops(
    network: CutNetwork,
    hull: list[Cut],
    ops_of: Callable[[Cut], frozenset],
    op_spend: np.ndarray,
    count: int = SPLIT_PLANS,
) -> list[Cut]:
    """Plans that recompute only some of the compute-bound ops separating neighbouring hull vertices.

    Two neighbouring vertices may be many convolutions or matmuls apart and no
    minimum cut lies between them: each op alone is dearer per byte than the
    edge's breakpoint. A 0/1 knapsack (PyTorch's budget solver) buys some of
    them, and pays what they sum to (``recompute_allowance`` prices a fraction
    so); so here each wide edge gets a plan for each sum its ops can pay
    (passes.op_sums), or, past ``ALL_LEVELS`` sums, for its share of ``count``
    spread evenly over them: its breakpoint is solved again with the other ops
    kept out of the backward. Each sum is paid by the earliest ops that reach it,
    whose recomputation runs late in the backward when most saved tensors are
    freed. One max-flow each.
    """
    edges = []
    for more, less in zip(hull, hull[1:]):
        lam = more.breakpoint(less)
        extra = sorted(ops_of(less) - ops_of(more))
        if lam is not None and len(extra) >= 2:
            sums = OpSums(op_spend[extra])
            edges.append((more, less, lam, extra, sums, sums.levels()))
    every_sum, left = [], ALL_LEVEL_PLANS  # the edges nearest the default plan first
    for *_, levels in edges:
        every_sum.append(len(levels) <= min(ALL_LEVELS, left))
        left -= len(levels) if every_sum[-1] else 0
    total = sum(len(levels) for (*_, levels), every in zip(edges, every_sum) if not every)
    plans: list[Cut] = []
    for (more, less, lam, extra, sums, levels), every in zip(edges, every_sum):
        share = len(levels) if every else max(1, round(count * len(levels) / total))
        for at in sorted({round((len(levels) + 1) * (j + 1) / (share + 1)) - 1 for j in range(share)}):
            recomputed = set(sums.choose(levels[at]))
            kept = [op for position, op in enumerate(extra) if position not in recomputed]
            cut = network.solve_keeping(lam, np.array(kept))
            if less.saved_bytes < cut.saved_bytes < more.saved_bytes:
                plans.append(cut)
    return plans


def refine_between(
    network: CutNetwork,
    hull: list[Cut],
    above: PeakPoint,
    below: PeakPoint,
    peak_of: Callable[[Cut], int],
    count: int = REFINED_PLANS,
) -> Refinement:
    """Plans between two neighbouring frontier points, most saved bytes first, and the solves spent.

    The hull's vertices can be far apart: with identical layers one breakpoint
    switches them all at once. ``CutNetwork.plans_between`` fills each hull
    edge from ``above`` to ``below`` with plans that tie at its breakpoint
    (about ``count`` in all, spread by bytes; at most ``count`` edges, the
    widest, each costing one max-flow). A plan is kept only if its
    predicted peak is below every kept plan that saves more and not below
    ``below``'s, so the plan chosen for a budget still never peaks higher
    when the budget falls.
    """
    low, high = below.cut.saved_bytes, above.cut.saved_bytes
    span = [c for c in hull if low <= c.saved_bytes <= high]
    edges = [(more, less, more.breakpoint(less)) for more, less in zip(span, span[1:])]
    edges = [edge for edge in edges if edge[2] is not None]
    if len(edges) > count:  # one max-flow per edge filled: only the widest ``count``, in hull order
        widest = sorted(edges, key=lambda e: e[0].saved_bytes - e[1].saved_bytes, reverse=True)[:count]
        edges = [edge for edge in edges if any(edge is w for w in widest)]
    candidates: list[Cut] = []
    solves = 0
    for more, less, lam in edges:
        share = max(1, round(count * (more.saved_bytes - less.saved_bytes) / (high - low)))
        candidates += network.plans_between(lam, share)
        candidates.append(less)
        solves += 1
    distinct = {(c.saved_bytes, c.time_cost): c for c in candidates if low < c.saved_bytes < high}
    kept: list[PeakPoint] = []
    lowest = above.peak
    for cut in sorted(distinct.values(), key=lambda c: (-c.saved_bytes, c.time_cost)):
        peak = int(peak_of(cut))
        if below.peak <= peak < lowest:
            kept.append(PeakPoint(cut, peak))
            lowest = peak
    return Refinement(kept, solves)
