"""``price_joint_graph``: the stages before a solve, in one place: the joint graph prepared,
classified, summarised and priced, which is what the planner starts from.

A joint graph is prepared (DCE, CSE, the MUST_SAVE tags: passes.torch_internals),
classified into forward and backward roles, summarised into the candidates and
rules the solver reads (passes.analysis) and priced (rematpass.cost). The
partitioner, the tests and benchmarks/partition_speed.py all start from here,
so they all see the graph the partitioner plans.

Run it as the partitioner runs: inside Inductor's fake mode (``V.set_fake_mode``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.fx as fx

from .config import Knobs
from .cost import CostModel, CostTable
from .passes import torch_internals as ti
from .passes.analysis import GraphSummary, summarize_joint_graph


@dataclass(frozen=True)
class PricedGraph:
    """A joint graph ready to plan. ``summary`` and ``costs`` are None when the backward
    needs nothing from the forward: there is no choice to make, and no summary is built."""

    gm: fx.GraphModule  # the prepared joint graph (prepare_joint_graph may return a new module)
    roles: ti.NodeRoles
    summary: GraphSummary | None
    costs: CostTable | None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: prepare, classify, summarize, price


def price_joint_graph(
    gm: fx.GraphModule,
    *,
    num_fwd_outputs: int,
    static_lifetime_input_indices: Sequence[int],
    knobs: Knobs | None = None,
) -> PricedGraph:
    """Prepare, classify, summarise and price ``gm`` (changed in place) with ``knobs``' op policies and rates."""
    knobs = knobs or Knobs()
    seconds = {}
    started = time.perf_counter()
    gm = ti.prepare_joint_graph(gm)
    seconds["prepare"] = _lap(started)
    started = time.perf_counter()
    roles = ti.classify_joint_graph(gm, static_lifetime_input_indices, num_fwd_outputs)
    seconds["classify"] = _lap(started)
    if not roles.required_bw:
        return PricedGraph(gm, roles, None, None, seconds)
    started = time.perf_counter()
    summary = summarize_joint_graph(
        gm, roles, never_recompute=knobs.never_recompute, always_recompute=knobs.always_recompute
    )
    seconds["summarize"] = _lap(started)
    started = time.perf_counter()
    costs = CostModel(knobs.flops_per_second, knobs.bytes_per_second).table(summary)
    seconds["price"] = _lap(started)
    return PricedGraph(gm, roles, summary, costs, seconds)


def _lap(started: float) -> float:
    return time.perf_counter() - started
