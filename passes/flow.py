"""Minimum s-t cut on integer capacities with scipy's max-flow (Dinic).

The network is given as numpy arrays of edges, so a 100k-node graph is built
without a Python object per node. Capacities are floats with ``math.inf`` for
edges that must never be cut; they are quantised to int32 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

INT_INF = np.int32(2**31 - 1)
# Finite capacities are scaled so that they sum to at most this, which keeps any
# finite cut, and so any feasible flow, below INT_INF.
FINITE_TOTAL = 2**30


class InfeasibleCut(RuntimeError):
    """Every cut crosses an infinite edge: some value can be neither saved nor recomputed."""

    def __init__(self, path: list[int]):
        self.path = path
        super().__init__(f"no finite cut: infinite path through vertices {path}")


@dataclass(frozen=True)
class MinCut:
    source_side: np.ndarray  # bool per vertex: reachable from the source in the residual graph
    value: int  # the cut's value in quantised units
    scale: float  # quantised units per unit of capacity


def quantize(capacity: np.ndarray) -> tuple[np.ndarray, float]:
    """Map float capacities (``inf`` allowed) to int32, keeping finite totals below 2**30.

    Positive finite capacities map to at least 1, so no cost is rounded to free.
    """
    finite = np.isfinite(capacity)
    total = float(capacity[finite].sum())
    scale = FINITE_TOTAL / total if total > 0 else 1.0
    quantised = np.full(capacity.shape, INT_INF, dtype=np.int64)
    scaled = np.floor(capacity[finite] * scale + 0.5)
    scaled[(capacity[finite] > 0) & (scaled < 1)] = 1
    quantised[finite] = scaled
    return quantised.astype(np.int32), scale


def _infinite_path(num_vertices: int, tails, heads, infinite, source: int, sink: int) -> list[int] | None:
    graph = sp.csr_array(
        (np.ones(int(infinite.sum()), dtype=np.int8), (tails[infinite], heads[infinite])),
        shape=(num_vertices, num_vertices),
    )
    order, predecessors = breadth_first_order(graph, source, directed=True, return_predecessors=True)
    if predecessors[sink] < 0 and sink != source:
        return None
    path = [sink]
    while path[-1] != source:
        path.append(int(predecessors[path[-1]]))
    return path[::-1]


def min_cut(num_vertices: int, tails: np.ndarray, heads: np.ndarray, capacity: np.ndarray, source: int, sink: int) -> MinCut:
    """The minimum cut with the smallest source side (vertices reachable in the residual graph)."""
    infinite = ~np.isfinite(capacity)
    path = _infinite_path(num_vertices, tails, heads, infinite, source, sink)
    if path is not None:
        raise InfeasibleCut(path)
    quantised, scale = quantize(capacity)
    keep = quantised > 0
    coo = sp.coo_array(
        (quantised[keep].astype(np.int64), (tails[keep], heads[keep])), shape=(num_vertices, num_vertices)
    )
    coo.sum_duplicates()
    data = np.minimum(coo.data, INT_INF).astype(np.int32)
    cap = sp.csr_array((data, (coo.row, coo.col)), shape=(num_vertices, num_vertices))
    result = maximum_flow(cap, source, sink, method="dinic")
    residual = (cap.astype(np.int64) - result.flow.astype(np.int64)).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    side = np.zeros(num_vertices, dtype=bool)
    side[reached] = True
    if math.isfinite(result.flow_value) and side[sink]:
        raise AssertionError("sink reachable after max-flow")
    return MinCut(source_side=side, value=int(result.flow_value), scale=scale)
