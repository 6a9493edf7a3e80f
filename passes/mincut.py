"""The flow network that prices memory and time together (DESIGN.md section 3).

Each candidate v becomes ``v_in -> v_out`` with capacity ``save_bytes[v]``;
``source -> v_in`` costs ``lam * recompute_cost[v]`` (infinite when v must not
be recomputed); ``v_out -> sink`` is infinite when the backward reads v; data
edges are infinite. A finite cut saves exactly the nodes with ``v_in`` on the
source side and ``v_out`` on the sink side, recomputes those with ``v_in`` on
the sink side, and its value is ``saved bytes + lam * recompute cost``.
"""

from __future__ import annotations

import math

import numpy as np

from .analysis import BACKWARD_ONLY, FORWARD, GraphSummary
from .flow import InfeasibleCut, min_cut
from .plan import Cut, CutProblem

SOURCE, SINK = 0, 1


def vertex_in(i: np.ndarray | int):
    return 2 + 2 * np.asarray(i)


def vertex_out(i: np.ndarray | int):
    return 3 + 2 * np.asarray(i)


def build_network(problem: CutProblem, lam: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The network as (number of vertices, tails, heads, float capacities)."""
    s = problem.summary
    n = s.num_nodes
    idx = np.arange(n)
    inf = math.inf
    no_save = np.array([r is not None for r in s.no_save_reason], dtype=bool)
    no_recompute = np.array([r is not None for r in s.no_recompute_reason], dtype=bool)

    save_cap = np.where(no_save, inf, problem.save_bytes.astype(np.float64))
    recompute_cap = np.where(no_recompute, inf, lam * problem.recompute_cost.astype(np.float64))
    has_source_edge = no_recompute | (recompute_cap > 0)

    parts = [
        (vertex_in(idx), vertex_out(idx), save_cap),
        (np.full(int(has_source_edge.sum()), SOURCE), vertex_in(idx[has_source_edge]), recompute_cap[has_source_edge]),
        (vertex_out(idx[s.needed_by_backward]), np.full(int(s.needed_by_backward.sum()), SINK), np.full(int(s.needed_by_backward.sum()), inf)),
        (vertex_in(idx[s.must_recompute]), np.full(int(s.must_recompute.sum()), SINK), np.full(int(s.must_recompute.sum()), inf)),
        (vertex_out(s.edge_src), vertex_in(s.edge_dst), np.full(len(s.edge_src), inf)),
    ]
    tails = np.concatenate([p[0] for p in parts]).astype(np.int64)
    heads = np.concatenate([p[1] for p in parts]).astype(np.int64)
    caps = np.concatenate([p[2] for p in parts]).astype(np.float64)
    return 2 + 2 * n, tails, heads, caps


def used_in_backward(summary: GraphSummary, in_backward: np.ndarray) -> np.ndarray:
    """Candidates whose value the backward reads, directly or through a recomputation."""
    used = summary.needed_by_backward | summary.must_recompute
    # Reverse topological order: graph order reversed.
    users_of: dict[int, list[int]] = {}
    for u, v in zip(summary.edge_src.tolist(), summary.edge_dst.tolist()):
        users_of.setdefault(u, []).append(v)
    used = used.copy()
    for i in range(summary.num_nodes - 1, -1, -1):
        if used[i]:
            continue
        used[i] = any(used[v] and in_backward[v] for v in users_of.get(i, ()))
    return used


def cut_from_source_side(problem: CutProblem, lam: float, source_side: np.ndarray) -> Cut:
    s = problem.summary
    idx = np.arange(s.num_nodes)
    in_source = source_side[vertex_in(idx)]
    out_source = source_side[vertex_out(idx)]
    in_backward = ~in_source
    used = used_in_backward(s, in_backward)
    saved = in_source & ~out_source & used
    in_backward = in_backward & used
    recomputed = in_backward & (s.kind == FORWARD)
    return Cut(
        lam=lam,
        saved=saved,
        recomputed=recomputed,
        in_backward=in_backward,
        saved_bytes=float(problem.save_bytes[saved & ~s.is_static].sum()),
        recompute_cost=float(problem.recompute_cost[recomputed].sum()),
    )


def solve_min_cut(problem: CutProblem, lam: float) -> Cut:
    """The plan minimising ``saved bytes + lam * recompute cost``; raises InfeasibleCut."""
    num_vertices, tails, heads, caps = build_network(problem, lam)
    try:
        cut = min_cut(num_vertices, tails, heads, caps, SOURCE, SINK)
    except InfeasibleCut as exc:
        raise InfeasibleCut([describe_vertex(problem.summary, v) for v in exc.path]) from None
    return cut_from_source_side(problem, lam, cut.source_side)


def describe_vertex(summary: GraphSummary, vertex: int) -> str:
    if vertex == SOURCE:
        return "source"
    if vertex == SINK:
        return "sink"
    node = summary.nodes[(vertex - 2) // 2]
    return f"{node.name}_{'in' if vertex % 2 == 0 else 'out'}"


__all__ = ["build_network", "solve_min_cut", "cut_from_source_side", "used_in_backward", "BACKWARD_ONLY"]
