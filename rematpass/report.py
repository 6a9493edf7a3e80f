"""What a partition decided, for people and tests: per node, a decision and a reason.

``build_report`` turns a solved plan into a ``PartitionReport``; ``record``
keeps the most recent ones in memory (``recent_reports()``), so a user can
ask, right after a compile, what was saved and why.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from passes.analysis import BACKWARD_ONLY, FORWARD, INPUT, GraphSummary, op_name
from passes.plan import Plan

from .config import Knobs
from .cost import CostTable

SAVED = "saved"
RECOMPUTED = "recomputed"
BACKWARD = "computed in backward"
NOT_NEEDED = "not needed by backward"
INPUT_DECISION = "input"


@dataclass(frozen=True)
class NodeDecision:
    name: str
    op: str
    shape: tuple
    dtype: str
    bytes: int
    flops: int
    recompute_seconds: float
    decision: str
    reason: str


@dataclass(frozen=True)
class PartitionReport:
    knobs: Knobs
    num_joint_candidates: int
    saved_bytes: int
    recompute_flops: int
    recompute_seconds: float
    lam: float
    lam_default: float
    target_bytes: float | None
    budget_met: bool
    num_solves: int
    solve_seconds: float
    total_seconds: float
    nodes: tuple[NodeDecision, ...] = field(repr=False)

    def saved_nodes(self) -> list[NodeDecision]:
        return [n for n in self.nodes if n.decision == SAVED]

    def recomputed_nodes(self) -> list[NodeDecision]:
        return [n for n in self.nodes if n.decision == RECOMPUTED]

    def one_line(self) -> str:
        return (
            f"rematpass: saved {len(self.saved_nodes())} tensors, {self.saved_bytes / 2**20:.2f} MiB; "
            f"recomputed {len(self.recomputed_nodes())} ops, {self.recompute_flops / 1e6:.2f} MFLOP; "
            f"{self.num_solves} max-flow solves in {self.solve_seconds * 1e3:.1f} ms"
        )


def _reason(i: int, summary: GraphSummary, plan: Plan, costs: CostTable, default_saved: np.ndarray | None) -> tuple[str, str]:
    node = summary.nodes[i]
    no_recompute = summary.no_recompute_reason[i]
    no_save = summary.no_save_reason[i]
    if plan.saved[i]:
        if summary.kind[i] == INPUT:
            return INPUT_DECISION, "forward input, kept for the backward" + (" (parameter: free)" if summary.is_static[i] else "")
        if no_recompute:
            return SAVED, f"must save: {no_recompute}"
        return SAVED, "cheaper to save than to recompute at this budget"
    if plan.cut.in_backward[i]:
        if summary.kind[i] == BACKWARD_ONLY:
            return BACKWARD, "only the backward uses it: computed there, never saved"
        if summary.must_recompute[i]:
            return RECOMPUTED, "checkpoint policy asks to recompute"
        if no_save:
            return RECOMPUTED, f"cannot save: {no_save}"
        if default_saved is not None and default_saved[i]:
            return RECOMPUTED, "forced by the budget (the default plan saves it)"
        if costs.costs[i].fused:
            return RECOMPUTED, "cheaper to recompute: fuses into a backward kernel"
        return RECOMPUTED, "cheaper to recompute than to keep"
    if summary.kind[i] == INPUT:
        return INPUT_DECISION, "forward input, not needed by the backward"
    return NOT_NEEDED, "the backward does not read it"


def build_report(
    knobs: Knobs, summary: GraphSummary, costs: CostTable, plan: Plan, *, solve_seconds: float, total_seconds: float,
    default_saved: np.ndarray | None = None,
) -> PartitionReport:
    nodes = []
    for i, node in enumerate(summary.nodes):
        val = node.meta.get("val")
        decision, reason = _reason(i, summary, plan, costs, default_saved)
        cost = costs.costs[i]
        nodes.append(NodeDecision(
            name=node.name,
            op=op_name(node),
            shape=tuple(str(s) for s in getattr(val, "shape", ())),
            dtype=str(getattr(val, "dtype", type(val).__name__)).replace("torch.", ""),
            bytes=cost.bytes,
            flops=cost.flops,
            recompute_seconds=cost.recompute_time if summary.kind[i] == FORWARD else 0.0,
            decision=decision,
            reason=reason,
        ))
    recompute_flops = sum(c.flops for c, r in zip(costs.costs, plan.recomputed) if r)
    return PartitionReport(
        knobs=knobs,
        num_joint_candidates=summary.num_nodes,
        saved_bytes=int(plan.cut.saved_bytes),
        recompute_flops=int(recompute_flops),
        recompute_seconds=plan.cut.recompute_cost,
        lam=plan.cut.lam,
        lam_default=plan.lam_default,
        target_bytes=plan.target_bytes,
        budget_met=plan.budget_met,
        num_solves=plan.num_solves,
        solve_seconds=solve_seconds,
        total_seconds=total_seconds,
        nodes=tuple(nodes),
    )


_RECENT: collections.deque[PartitionReport] = collections.deque(maxlen=64)


def record(report: PartitionReport) -> None:
    _RECENT.append(report)


def recent_reports() -> list[PartitionReport]:
    """Reports of the most recent partitions in this process, oldest first."""
    return list(_RECENT)


def clear_reports() -> None:
    _RECENT.clear()
