"""Choose the plan: one entry point, ``plan(problem, budget, predict, ...)``, for every budget.

Each solver returns a ``PlanResult`` (the plan, the peak cap it was planned for, every plan
scored), whatever the budget; the budget (rematpass.budget) decides what is asked, the solver
only how it is found:

- ``Fastest``: the min-cut at the default price (passes.fastest); with ``solver="ilp"``, the
  same objective solved exactly (passes.ilp).
- ``DefaultPlan``: among the plans on the min-cut hull within ``tolerance`` of the step's
  estimated time of the fastest plan (and recomputing no more compute-bound FLOPs than it),
  the least predicted peak.
- ``Fraction(f)``: a recompute allowance on PyTorch's budget scale. Cutting summed saved
  activation bytes to ``f`` of the way from the least any plan saves to what the step saves
  with no recomputation costs some compute-bound FLOPs (matmuls, convolutions, attention;
  pointwise recomputation fuses into backward kernels and counts as free, as in PyTorch's budget
  solver), priced between the scored plans in (saved bytes, FLOPs) by interpolation, rounded up
  to what whole ops between the two plans sum to: no knapsack buys part of an op (PyTorch's
  default solver is a 0/1 knapsack, and ResNet-50's convolutions are 1.6 GFLOP each).
  rematpass spends that allowance where it lowers the peak most: the plan with the least
  predicted peak that recomputes no more FLOPs, leaving out plans that a quicker plan with no
  more FLOPs matches to within 0.5% of their peak (passes.peak.set_aside, the same plans for
  every ``f``). The predicted peak never rises as ``f`` falls (a lower ``f`` only allows more
  plans), and a fraction may always spend what the default plan spends and never peaks above it.
- ``PeakCap(bytes)``: the least-recompute plan whose predicted step peak fits: what the step
  allocates on top of what exists before it (saved activations, transients of forward and
  backward, the gradients the backward returns; not parameters, buffers, optimizer state or the
  batch). ``aim`` (rematpass.verify, after reading Inductor's schedule) plans a cap of that many
  bytes instead of the user's budget, which the report keeps.

Hull vertices can be far apart (identical layers switch together at one breakpoint), so the hull
is filled in with the plans that tie at its breakpoints (passes.peak.refine_between), the same
plans for every fraction: before the least-peak end, where a plan that recomputes less often
peaks just as low, and along the widest edges of the rest. Under a fraction, edges whose ends are
several compute-bound ops apart are split by keeping some of those ops out of the backward
(passes.peak.split_by_ops): where the ops are large (at most 8 sums), a plan for each sum of
them a 0/1 knapsack can pay, so an allowance can buy what it is priced at; elsewhere 16 plans
spread over the sums. Under
a peak cap the edge before the chosen plan is filled in too, where one may fit the cap with less
recomputation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from .budget import Budget, DefaultPlan, Fastest, Fraction, PeakCap
from .passes.analysis import GraphSummary
from .passes.fastest import fastest_plan
from .passes.hull import LOWEST_LAMBDA_FRACTION, walk_hull
from .passes.joint_liveness import JointPeakModel
from .passes.kernel_rules import StoreRules, matmuls_added_later
from .passes.liveness import PeakEstimate
from .passes.mincut import CutNetwork
from .passes.peak import (
    PeakPoint,
    ScoredPlan,
    choose_on_frontier,
    least_peak_within,
    pareto,
    peak_frontier,
    recompute_allowance,
    refine_between,
    shallowest_within,
    split_by_ops,
)
from .passes.plan import Cut, CutProblem, Plan
from .passes.regions import RegionBudget, fit_region_budgets

# Recomputation a thousand times dearer than the default's price: the plan that recomputes
# nothing that costs anything (views and other free ops still move to the backward).
NO_RECOMPUTE_LAMBDA_FACTOR = 1e3


@dataclass(frozen=True)
class PlanResult:
    """What every solver returns: the plan, the peak cap it was planned for (a ``PeakCap`` or an
    aim; None otherwise), every plan scored for its predicted peak on the way, and what each
    ``region_activation_memory_budget`` region got (passes.regions)."""

    plan: Plan
    target_peak: float | None
    scored: tuple[ScoredPlan, ...] = ()
    regions: tuple[RegionBudget, ...] = ()


def plan(
    problem: CutProblem,
    lam_default: float,
    budget: Budget,
    predict: Callable[[Cut], int],
    *,
    step_seconds: float,
    aim: int | None = None,
    solver: str = "mincut",
    ilp_time_limit: float = 30.0,
) -> PlanResult:
    """The plan for ``budget`` (or, with ``aim``, for a predicted peak of ``aim`` bytes).
    ``step_seconds`` is the step's estimated time, on which tolerances are fractions. Regions
    annotated with ``region_activation_memory_budget`` are planned first (passes.regions): each
    region's own budget decides inside it, ``budget`` decides the rest of the graph."""
    pinned, regions = fit_region_budgets(problem, lam_default)
    result = _plan_for(pinned, lam_default, budget, predict, step_seconds, aim, solver, ilp_time_limit)
    return dataclasses.replace(result, regions=regions) if regions else result


def _plan_for(problem, lam_default, budget, predict, step_seconds, aim, solver, ilp_time_limit) -> PlanResult:
    fraction_aim = aim if isinstance(budget, Fraction) else None
    if aim is not None and fraction_aim is None:
        budget = PeakCap(int(aim))
    if solver == "ilp":  # config allows it only without a budget (it has no peak model)
        from .passes.ilp import ilp_plan

        return PlanResult(ilp_plan(problem, lam_default, time_limit=ilp_time_limit), None)
    if isinstance(budget, Fastest):
        return PlanResult(fastest_plan(problem, lam_default), None)
    if isinstance(budget, DefaultPlan):
        return plan_for_speed(problem, lam_default, predict, budget.tolerance * step_seconds)
    slack = (budget.tolerance if isinstance(budget, Fraction) else 0.0) * step_seconds
    return plan_for_peak(problem, lam_default, budget, predict, slack, aim=fraction_aim)


class PeakPredictor:
    """Predicts a plan's step peak straight from the joint graph (passes.joint_liveness)."""

    def __init__(
        self,
        joint: fx.GraphModule,
        summary: GraphSummary,
        roles,
        num_fwd_outputs: int,
        peak_model: str,
        kernel_reads: bool = False,
        layout_copies: bool = False,
        workspace_of: Callable[[fx.Node], int] | None = None,
        matmul_adds: bool = False,
        store_rules: StoreRules | None = None,
    ):
        """What the compiler's kernels add to the graph's own values, as
        passes.joint_liveness.JointPeakModel takes them: ``kernel_reads`` (fused values read their
        inputs in their readers' kernels; outputs written over dying inputs), ``layout_copies``
        (channels-last copies of convolutions' graph inputs), ``workspace_of`` (a kernel's scratch
        bytes while it runs), ``matmul_adds`` (a backward's ``add(mm(a, b), c)`` run as one addmm at
        the add), ``store_rules`` (the fused values Inductor stores because they are reused or large)."""
        self.joint, self.summary, self.roles, self.num_fwd_outputs = joint, summary, roles, num_fwd_outputs
        self.fused = peak_model == "fused"
        self.kernel_reads, self.layout_copies, self.workspace_of = kernel_reads, layout_copies, workspace_of
        self.matmul_adds, self.store_rules = matmul_adds, store_rules

    @functools.cached_property
    def _joint(self) -> tuple[JointPeakModel, np.ndarray, np.ndarray, np.ndarray]:
        model = JointPeakModel(
            self.joint,
            num_fwd_outputs=self.num_fwd_outputs,
            fused=self.fused,
            kernel_reads=self.kernel_reads,
            layout_copies=self.layout_copies,
            workspace_of=self.workspace_of,
            matmul_adds=matmuls_added_later(self.joint.graph.nodes, self.roles.tangents_closure)
            if self.matmul_adds
            else (),
            store_rules=self.store_rules,
        )
        candidates = np.array([model.index[n] for n in self.summary.nodes], dtype=np.int64)
        return model, candidates, model.mask(self.roles.required_fw), model.mask(self.roles.tangents_closure)

    def joint_estimate(self, cut: Cut) -> PeakEstimate:
        """The plan's peak simulated on the joint graph as arrays: no module extraction, so cheap."""
        model, candidates, required_fw, backward = self._joint
        saved = np.zeros(len(model.nodes), dtype=bool)
        saved[candidates[cut.saved]] = True
        recomputed = np.zeros(len(model.nodes), dtype=bool)
        recomputed[candidates[cut.in_backward]] = True
        forward = required_fw.copy()
        pending = [model.nodes[i] for i in np.flatnonzero(saved & ~forward)]
        while pending:  # values saved but not needed by the forward outputs are computed there too
            node = pending.pop()
            i = model.index[node]
            if not forward[i] and node.op != "placeholder":
                forward[i] = True
                pending.extend(node.all_input_nodes)
        return model.estimate(forward, saved, recomputed, backward)

    def __call__(self, cut: Cut) -> int:
        return self.joint_estimate(cut).peak_bytes


def _remembered(peak_of: Callable[[Cut], int]) -> Callable[[Cut], int]:
    """``peak_of`` evaluated once per distinct plan: the hull fill-ins hand back vertices already scored."""
    peaks: dict[tuple[bytes, bytes], int] = {}

    def peak(cut: Cut) -> int:
        key = (cut.saved.tobytes(), cut.in_backward.tobytes())
        if key not in peaks:
            peaks[key] = peak_of(cut)
        return peaks[key]

    return peak


@dataclass(frozen=True)
class _ScoredHull:
    network: CutNetwork
    plans: list[Cut]  # the hull's vertices, most saved bytes first
    scored: list[PeakPoint]  # every plan scored for its peak, the default plan first
    solves: int
    hull: tuple
    default_cut: Cut


def _scored_hull(
    problem: CutProblem, lam_default: float, predict: Callable[[Cut], int], slack_seconds: float | None = None
) -> _ScoredHull:
    """The hull from the default plan to the least-bytes one, filled in and scored, the same for every
    budget. With ``slack_seconds`` (the default plan's search) only the part of the hull within that
    much estimated time of the fastest plan is scored, and the first vertex past it, whose edge may
    hold plans within."""
    network = CutNetwork(problem)
    walk = walk_hull(network, [lam_default * LOWEST_LAMBDA_FRACTION, lam_default])
    plans, solved = walk.vertices, walk.solved
    if slack_seconds is not None:  # estimated time rises along the hull: keep a prefix
        seconds = [_seconds(c, lam_default) for c in plans]
        limit = (min(seconds) + slack_seconds) * (1 + 1e-9)
        past = next((i for i, t in enumerate(seconds) if t > limit), len(plans))
        plans = plans[: past + 1]
    frontier, scored = peak_frontier(plans, predict)
    solves = len(solved)
    if len(frontier) >= 2:
        # The least-peak end may tie with plans that recompute less; the rest of the hull is
        # filled in too, the same for every budget, so peaks still never rise as budgets fall.
        for above, below in ((frontier[-2], frontier[-1]), (frontier[0], frontier[-1])):
            refined, refine_solves = refine_between(network, plans, above, below, predict)
            solves += refine_solves
            scored = scored + refined
    hull = tuple(c.hull_point() for c in solved)
    default_cut = next(c for c in solved if c.lam == lam_default)
    return _ScoredHull(network, plans, scored, solves, hull, default_cut)


def _seconds(cut: Cut, lam_default: float) -> float:
    """A plan's estimated time, as the fastest plan minimises it (see _least_peak_within_time)."""
    return cut.objective(lam_default) / lam_default


def _least_peak_within_time(
    scored: list[PeakPoint], lam_default: float, slack_seconds: float, spend_of: Callable[[Cut], float]
) -> PeakPoint:
    """Among plans whose estimated time is within ``slack_seconds`` of the fastest plan's and that
    recompute no more compute-bound FLOPs (``spend_of``) than it, the least predicted peak (ties:
    the least time). A plan's estimated time is what the fastest plan (the min-cut at
    ``lam_default``, bytes per second) minimises: its time cost plus reading its saved bytes back,
    ``objective(lam_default) / lam_default``; so saving less is credited with the reads it saves.
    The default buys its peak with memory-bound recomputation only: a recomputed matmul or
    attention measured slower than its estimate, and fractions, which may always spend what the
    default spends, would then spend FLOPs PyTorch's budget at the same number does not."""

    def seconds(point: PeakPoint) -> float:
        return _seconds(point.cut, lam_default)

    fastest = min(scored, key=seconds)
    limit, spend_limit = seconds(fastest) + slack_seconds, spend_of(fastest.cut)
    fitting = [p for p in scored if seconds(p) <= limit * (1 + 1e-9) and spend_of(p.cut) <= spend_limit * (1 + 1e-9)]
    return min(fitting, key=lambda p: (p.peak, seconds(p), -p.cut.saved_bytes))


def plan_for_speed(
    problem: CutProblem, lam_default: float, predict: Callable[[Cut], int], slack_seconds: float
) -> PlanResult:
    """The default plan that takes free memory: the least predicted peak among the plans that
    cost at most ``slack_seconds`` more than the fastest one. With no slack, the fastest plan."""
    base = _scored_hull(problem, lam_default, _remembered(predict), slack_seconds)
    point = _least_peak_within_time(base.scored, lam_default, slack_seconds, problem.budget_spend_of)
    plan = Plan(point.cut, lam_default, None, True, base.solves, base.hull, default_saved=base.default_cut.saved)
    return PlanResult(plan, None, tuple(p.scored() for p in base.scored))


def plan_for_peak(
    problem: CutProblem,
    lam_default: float,
    budget: Fraction | PeakCap,
    predict: Callable[[Cut], int],
    default_slack_seconds: float = 0.0,
    aim: int | None = None,
) -> PlanResult:
    """The plan for a fraction or a peak cap. ``default_slack_seconds`` is the default plan's time
    tolerance: a fraction may always spend what the default plan spends, so no fraction peaks
    above the default. ``aim`` (a fraction's check climbing to shallower plans, rematpass.verify):
    the least-recompute plan predicted to peak within ``aim`` among those the fraction allows; a
    cap's plans, which can spend more than the fraction allows (ViT at 0.5 kept one that spent
    1.57x its allowance), are never taken for it."""
    predict = _remembered(predict)
    base = _scored_hull(problem, lam_default, predict)
    network, plans, scored, solves = base.network, base.plans, base.scored, base.solves
    default_point = scored[0]  # the hull's first vertex: the fastest plan
    chosen_default = _least_peak_within_time(scored, lam_default, default_slack_seconds, problem.budget_spend_of)
    if isinstance(budget, Fraction):
        no_recompute = network.least_bytes_at(lam_default * NO_RECOMPUTE_LAMBDA_FACTOR)
        solves += 1
        least = min(p.cut.saved_bytes for p in scored)  # 0 on the scale, as PyTorch's is the inputs alone
        target = least + budget.value * (max(no_recompute.saved_bytes, default_point.cut.saved_bytes) - least)
        split = split_by_ops(network, plans, problem.compute_ops_of, problem.budget_spend)
        solves += len(split)
        scored = scored + [PeakPoint(cut, predict(cut)) for cut in split]
        allowance, met = recompute_allowance(
            scored, target, problem.budget_spend_of, problem.compute_ops_of, problem.budget_spend
        )
        allowance = max(
            allowance, problem.budget_spend_of(default_point.cut), problem.budget_spend_of(chosen_default.cut)
        )
        point = least_peak_within(scored, allowance, problem.budget_spend_of)
        if chosen_default.peak < point.peak:  # a plan set aside as no better: still none above the default
            point = chosen_default
        if aim is not None:
            point = shallowest_within(scored, allowance, problem.budget_spend_of, aim) or point
    else:
        target = None
        frontier = pareto(scored)
        cap = float(budget.bytes)
        point, met = choose_on_frontier(frontier, cap)
        at = frontier.index(point)
        if met and at > 0:  # a plan between the chosen one and the one before may fit with less recomputation
            refined, refine_solves = refine_between(network, plans, frontier[at - 1], point, predict)
            solves += refine_solves
            scored = scored + refined
            point = next((p for p in refined if p.peak <= cap), point)
    plan = Plan(point.cut, lam_default, target, met, solves, base.hull, default_saved=base.default_cut.saved)
    planned_cap = aim if target is not None else cap
    return PlanResult(plan, planned_cap, tuple(p.scored() for p in scored))
