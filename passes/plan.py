"""The solver's answer: which candidates are saved and which are recomputed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class CutProblem:
    """One partitioning problem: a graph summary plus the price of each decision.

    ``save_bytes[i]`` is what keeping node i for the backward costs in memory;
    ``recompute_seconds[i]`` what computing it again in the backward costs in
    time (0 for nodes the forward does not compute anyway);
    ``save_time[i]`` what saving it costs in time beyond its bytes (a value only
    the backward uses must be written out by the forward; None: nothing);
    ``recompute_flops[i]`` the FLOPs of compute-bound ops (matmul, convolution,
    attention; 0 for pointwise ops and reductions), the currency fractional
    budgets are spent in (rematpass.planner). None: budgets spend
    ``recompute_seconds`` instead.
    """

    summary: GraphSummary  # noqa: F821 (passes.analysis.GraphSummary)
    save_bytes: np.ndarray
    recompute_seconds: np.ndarray
    recompute_flops: np.ndarray | None = None
    save_time: np.ndarray | None = None

    def time_of(self, saved: np.ndarray, recomputed: np.ndarray) -> float:
        """Seconds a plan adds to the step: its recomputation, plus the writes its saved values cost."""
        seconds = float(self.recompute_seconds[recomputed].sum())
        return seconds if self.save_time is None else seconds + float(self.save_time[saved].sum())

    @property
    def budget_spend(self) -> np.ndarray:
        """Per candidate, what recomputing it spends of a fractional budget."""
        return self.recompute_seconds if self.recompute_flops is None else self.recompute_flops

    def budget_spend_of(self, cut: Cut) -> float:
        """What a plan spends of a fractional budget: its recomputed compute-bound FLOPs, or its
        recompute seconds when the problem has no ``recompute_flops``."""
        return float(self.budget_spend[cut.recomputed].sum())

    def compute_ops_of(self, cut: Cut) -> frozenset[int]:
        """The candidates a plan recomputes that spend a fractional budget (compute-bound ops)."""
        return frozenset(np.flatnonzero(cut.recomputed & (self.budget_spend > 0)).tolist())


@dataclass(frozen=True)
class Cut:
    """One min-cut solution at a given lambda."""

    lam: float
    saved: np.ndarray  # bool per candidate
    recomputed: np.ndarray  # bool: a forward node computed again in the backward
    in_backward: np.ndarray  # bool: computed in the backward (recomputed or backward-only)
    saved_bytes: float
    # Seconds the plan adds to the step (CutProblem.time_of): recomputation, plus the writes
    # of saved values only the backward uses.
    time_cost: float

    def objective(self, lam: float) -> float:
        return self.saved_bytes + lam * self.time_cost

    def breakpoint(self, less: Cut) -> float | None:
        """The lambda at which this plan and ``less`` cost the same, where ``less`` saves fewer
        bytes for more time; None when it does not trade one for the other."""
        gained = less.time_cost - self.time_cost
        freed = self.saved_bytes - less.saved_bytes
        return freed / gained if gained > 0 and freed > 0 else None

    def same_plan(self, other: Cut) -> bool:
        return bool(np.array_equal(self.saved, other.saved) and np.array_equal(self.in_backward, other.in_backward))

    def hull_point(self) -> HullPoint:
        return HullPoint(self.lam, self.saved_bytes, self.time_cost)


class HullPoint(NamedTuple):
    """One plan a lambda search solved, as plans and reports keep it (no arrays)."""

    lam: float
    saved_bytes: float
    time_cost: float  # Cut.time_cost: seconds


@dataclass(frozen=True)
class Plan:
    """The chosen cut and how it was found."""

    cut: Cut
    lam_default: float
    # Summed saved bytes the budget allows (a fraction: the cap that prices its recompute allowance);
    # None: the default plan or a peak cap.
    target_bytes: float | None
    budget_met: bool
    num_solves: int
    hull: tuple[HullPoint, ...] = field(default=())  # every plan the search solved
    solver: str = "mincut"  # which solver chose ``cut``: "mincut" or "ilp" (passes/ilp.py)
    default_saved: np.ndarray | None = None  # the default plan's saved set, when a budget was set

    @property
    def saved(self) -> np.ndarray:
        return self.cut.saved

    @property
    def recomputed(self) -> np.ndarray:
        return self.cut.recomputed
