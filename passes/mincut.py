"""The flow network that prices memory and time together (docs/design.md, section 3).

Each candidate v becomes ``v_in -> v_out`` with capacity
``save_bytes[v] + lam * save_time[v]`` (the write of a value the forward
computes only to save it); ``source -> v_in`` costs ``lam * recompute_seconds[v]``
(infinite when v must not be recomputed); ``v_out -> sink`` is infinite when
the backward reads v; data edges are infinite. A finite cut saves exactly the
nodes with ``v_in`` on the source side and ``v_out`` on the sink side,
recomputes those with ``v_in`` on the sink side, and its value is
``saved bytes + lam * time``, where a ``Cut``'s ``time_cost`` is that time:
recomputation plus the writes of the values it saves that cost one.

The edges do not depend on lambda, only the source edges' capacities do, so
``CutNetwork`` builds the network once and solves it for many lambdas.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components

from .analysis import FORWARD, GraphSummary
from .flow import FlowNetwork, InfeasibleCut, MinCut, quantize
from .plan import Cut, CutProblem

SOURCE, SINK = 0, 1


def vertex_in(i: np.ndarray | int):
    return 2 + 2 * np.asarray(i)


def vertex_out(i: np.ndarray | int):
    return 3 + 2 * np.asarray(i)


def hard_rules(summary: GraphSummary) -> tuple[np.ndarray, np.ndarray]:
    """(cannot save, cannot recompute) per candidate, from the summary's reasons."""
    no_save = np.fromiter((r is not None for r in summary.no_save_reason), dtype=bool, count=summary.num_nodes)
    no_recompute = np.fromiter(
        (r is not None for r in summary.no_recompute_reason), dtype=bool, count=summary.num_nodes
    )
    return no_save, no_recompute


def _all_true(k: int) -> np.ndarray:
    return np.ones(k, dtype=bool)


class CutNetwork:
    """The network of one ``CutProblem``, built once; ``solve(lam)`` gives the min-cut plan."""

    def __init__(self, problem: CutProblem):
        self.problem = problem
        s = problem.summary
        n = s.num_nodes
        idx = np.arange(n)
        self.no_save, self.no_recompute = hard_rules(s)
        self._save_bytes = problem.save_bytes.astype(np.float64)
        self._save_time = np.zeros(n) if problem.save_time is None else problem.save_time.astype(np.float64)
        self._recompute_seconds = problem.recompute_seconds.astype(np.float64)
        # A recomputable node whose recomputation is free needs no source edge.
        self._sourced = idx[self.no_recompute | (self._recompute_seconds > 0)]
        needed = idx[s.needed_by_backward]
        must = idx[s.must_recompute]
        groups = [  # (tails, heads, infinite)
            (vertex_in(idx), vertex_out(idx), self.no_save),
            (np.full(len(self._sourced), SOURCE), vertex_in(self._sourced), self.no_recompute[self._sourced]),
            (vertex_out(needed), np.full(len(needed), SINK), _all_true(len(needed))),
            (vertex_in(must), np.full(len(must), SINK), _all_true(len(must))),
            (vertex_out(s.edge_src), vertex_in(s.edge_dst), _all_true(len(s.edge_src))),
        ]
        self.tails = np.concatenate([g[0] for g in groups]).astype(np.int64)
        self.heads = np.concatenate([g[1] for g in groups]).astype(np.int64)
        self.infinite = np.concatenate([g[2] for g in groups])
        self.num_vertices = 2 + 2 * n
        self._flow: FlowNetwork | None = None

    @property
    def flow(self) -> FlowNetwork:
        """The max-flow structure, built at first use; raises InfeasibleCut."""
        if self._flow is None:
            try:
                self._flow = FlowNetwork(self.num_vertices, self.tails, self.heads, self.infinite, SOURCE, SINK)
            except InfeasibleCut as exc:
                raise InfeasibleCut([describe_vertex(self.problem.summary, v) for v in exc.path]) from None
        return self._flow

    def capacities(self, lam: float, price_save_time: bool = True) -> np.ndarray:
        """Float capacity per edge (``inf`` on the edges no cut may cross). Without
        ``price_save_time`` saving costs its bytes alone."""
        n = self.problem.summary.num_nodes
        caps = np.full(len(self.tails), math.inf)
        save = self._save_bytes + lam * self._save_time if price_save_time else self._save_bytes
        caps[:n] = np.where(self.no_save, math.inf, save)
        sourced = np.where(self.no_recompute[self._sourced], math.inf, lam * self._recompute_seconds[self._sourced])
        caps[n : n + len(self._sourced)] = sourced
        return caps

    def quantized_node_costs(self, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(save, recompute) cost per candidate in the flow's own integer units, and the scale.

        The numbers a max-flow at ``lam`` cuts, so any plan scored with them is
        compared with the min cut exactly. Entries that are hard rules hold INT_INF.
        """
        n = self.problem.summary.num_nodes
        quantised, scale = quantize(self.capacities(lam))
        save = quantised[:n].astype(np.int64)
        recompute = np.zeros(n, dtype=np.int64)
        recompute[self._sourced] = quantised[n : n + len(self._sourced)]
        return save, recompute, scale

    def min_cut(self, lam: float, between: tuple[np.ndarray, np.ndarray] | None = None) -> MinCut:
        """The min cut at ``lam``. ``between``: the source sides at a smaller and a larger lambda.

        Min-cut source sides grow with lambda, so the vertices both sides share
        stay on the source side and those neither holds stay on the sink side:
        only the difference is solved again. Exact when the cuts nest; each
        lambda is quantised on its own scale, which can break the nesting by a
        rounding unit, and then the merged cut may cost a unit or so more than a
        full solve (seen: 1 unit in 1e8 on a 100k-node graph). The cut is valid
        either way.
        """
        if between is None:
            return self.flow.min_cut(self.capacities(lam))
        low, high = between
        return self.flow.min_cut(self.capacities(lam), inside=low & high, outside=~(low | high))

    def solve(self, lam: float) -> Cut:
        """The plan minimising ``saved bytes + lam * recompute cost``."""
        return cut_from_source_side(self.problem, lam, self.min_cut(lam).source_side)

    def solve_keeping(self, lam: float, kept: np.ndarray) -> Cut:
        """The plan minimising ``saved bytes + lam * recompute cost`` among those that recompute none
        of the candidates ``kept`` (indices; each must cost something to recompute)."""
        caps = self.capacities(lam)
        kept = np.asarray(kept, dtype=np.int64)
        kept = kept[~self.no_save[kept]]  # a value that cannot be saved may have to be recomputed
        caps[self.problem.summary.num_nodes + np.searchsorted(self._sourced, kept)] = math.inf
        return cut_from_source_side(self.problem, lam, self.flow.min_cut(caps).source_side)

    def least_bytes_at(self, lam: float) -> Cut:
        """The plan minimising ``saved bytes + lam * recomputation`` with saving priced by bytes
        alone: at a large lambda, the fewest bytes the step saves without recomputing."""
        side = self.flow.min_cut(self.capacities(lam, price_save_time=False)).source_side
        return cut_from_source_side(self.problem, lam, side)

    def plans_between(self, lam: float, count: int) -> list[Cut]:
        """Up to ``count`` plans that are all optimal at ``lam``, from the least-saving one up.

        At a breakpoint of the hull several plans tie: for twelve identical
        layers, recomputing any number of them. Parametric search only sees the
        two ends; here the other ties come from the lattice of minimum cuts
        (one max-flow): starting from the smallest source side, whole strongly
        connected groups of the residual graph are added, each once everything
        it has residual edges into is in, so every prefix is a minimum cut too.
        Later groups are added first, so the plans in between recompute the
        earliest layers: their recomputation runs late in the backward, when
        most saved tensors are already freed.
        """
        lattice = self.flow.min_cut_lattice(self.capacities(lam))
        free = np.flatnonzero(lattice.largest & ~lattice.smallest)
        if len(free) == 0 or count <= 0:
            return []
        sub = lattice.residual[free][:, free].tocoo()
        _, group = connected_components(
            sp.csr_array((np.ones(len(sub.row), dtype=np.int8), (sub.row, sub.col)), shape=(len(free), len(free))),
            directed=True,
            connection="strong",
        )
        groups = int(group.max()) + 1
        tail, head = group[sub.row], group[sub.col]
        crossing = tail != head
        edges = set(zip(tail[crossing].tolist(), head[crossing].tolist()))
        waiting_on = np.zeros(groups, dtype=np.int64)  # groups a group has residual edges into, not yet added
        needed_by: list[list[int]] = [[] for _ in range(groups)]
        for a, b in edges:
            waiting_on[a] += 1
            needed_by[b].append(a)
        last_vertex = np.zeros(groups, dtype=np.int64)
        np.maximum.at(last_vertex, group, free)
        members: list[list[int]] = [[] for _ in range(groups)]
        for vertex, g in zip(free.tolist(), group.tolist()):
            members[g].append(vertex)
        ready = [(-int(last_vertex[g]), g) for g in range(groups) if waiting_on[g] == 0]
        heapq.heapify(ready)
        side = lattice.smallest.copy()
        added, total = 0, len(free)
        marks = [round(total * (j + 1) / (count + 1)) for j in range(count)]
        plans: list[Cut] = []
        while ready and marks:
            _, g = heapq.heappop(ready)
            side[members[g]] = True
            added += len(members[g])
            for before in needed_by[g]:
                waiting_on[before] -= 1
                if waiting_on[before] == 0:
                    heapq.heappush(ready, (-int(last_vertex[before]), before))
            if added >= marks[0]:
                while marks and added >= marks[0]:
                    marks.pop(0)
                cut = cut_from_source_side(self.problem, lam, side)
                if not plans or not cut.same_plan(plans[-1]):
                    plans.append(cut)
        return plans


def used_in_backward(summary: GraphSummary, in_backward: np.ndarray) -> np.ndarray:
    """Candidates whose value the backward reads, directly or through a recomputation.

    A search from the nodes the backward reads, back along the data edges into
    nodes computed in the backward: one sparse breadth-first search.
    """
    n = summary.num_nodes
    seeds = np.flatnonzero(summary.needed_by_backward | summary.must_recompute)
    keep = in_backward[summary.edge_dst]
    rows = np.concatenate([np.full(len(seeds), n), summary.edge_dst[keep]])
    cols = np.concatenate([seeds, summary.edge_src[keep]])
    graph = sp.csr_array((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n + 1, n + 1))
    reached = breadth_first_order(graph, n, directed=True, return_predecessors=False)
    used = np.zeros(n + 1, dtype=bool)
    used[reached] = True
    return used[:n]


def cut_from_plan(problem: CutProblem, lam: float, saved: np.ndarray, in_backward: np.ndarray) -> Cut:
    """A ``Cut`` from raw decisions, dropping what the backward does not use.

    Every solver ends here, so every plan is pruned and scored the same way.
    """
    s = problem.summary
    used = used_in_backward(s, in_backward)
    in_backward = in_backward & used
    saved = saved & ~in_backward & used
    recomputed = in_backward & (s.kind == FORWARD)
    return Cut(
        lam=lam,
        saved=saved,
        recomputed=recomputed,
        in_backward=in_backward,
        saved_bytes=float(problem.save_bytes[saved & ~s.is_static].sum()),
        time_cost=problem.time_of(saved, recomputed),
    )


def cut_from_source_side(problem: CutProblem, lam: float, source_side: np.ndarray) -> Cut:
    idx = np.arange(problem.summary.num_nodes)
    in_source = source_side[vertex_in(idx)]
    out_source = source_side[vertex_out(idx)]
    return cut_from_plan(problem, lam, in_source & ~out_source, ~in_source)


def describe_vertex(summary: GraphSummary, vertex: int) -> str:
    if vertex == SOURCE:
        return "source"
    if vertex == SINK:
        return "sink"
    node = summary.nodes[(vertex - 2) // 2]
    return f"{node.name}_{'in' if vertex % 2 == 0 else 'out'}"


__all__ = [
    "CutNetwork",
    "cut_from_plan",
    "cut_from_source_side",
    "used_in_backward",
    "hard_rules",
]
