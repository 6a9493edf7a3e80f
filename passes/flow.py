"""Minimum s-t cut on integer capacities with scipy's max-flow (Dinic).

The network is given as numpy arrays of edges, so a 100k-node graph is built
without a Python object per node. Capacities are floats with ``math.inf`` for
edges that must never be cut; they are quantised to int32 here.

``FlowNetwork`` fixes the edges once and solves for many capacity vectors:
the sparse structure (with the reverse edges max-flow needs), the check for
an all-infinite source-sink path and the edge-to-slot map are built once, so
a budget search pays only the max-flow itself for each lambda.
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

    def __init__(self, path: list):
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


def _csr(num_vertices: int, tails: np.ndarray, heads: np.ndarray, data: np.ndarray) -> sp.csr_array:
    return sp.csr_array((data, (tails, heads)), shape=(num_vertices, num_vertices))


def _infinite_path(num_vertices: int, tails, heads, infinite, source: int, sink: int) -> list[int] | None:
    graph = _csr(num_vertices, tails[infinite], heads[infinite], np.ones(int(infinite.sum()), dtype=np.int8))
    _, predecessors = breadth_first_order(graph, source, directed=True, return_predecessors=True)
    if predecessors[sink] < 0 and sink != source:
        return None
    path = [sink]
    while path[-1] != source:
        path.append(int(predecessors[path[-1]]))
    return path[::-1]


class _Layout:
    """The sparse structure max-flow runs on: every edge and its reverse, sorted row-major
    as scipy lays out its flow matrix, and which slot each given edge fills."""

    def __init__(self, num_vertices: int, tails: np.ndarray, heads: np.ndarray):
        self.num_vertices = num_vertices
        keys = np.concatenate([tails * num_vertices + heads, heads * num_vertices + tails])
        slots, inverse = np.unique(keys, return_inverse=True)
        self.slot = inverse[: len(tails)]
        self.indices = (slots % num_vertices).astype(np.int32)
        self.indptr = np.searchsorted(slots // num_vertices, np.arange(num_vertices + 1)).astype(np.int32)

    def matrix(self, quantised: np.ndarray) -> sp.csr_array:
        data = np.bincount(self.slot, weights=quantised.astype(np.float64), minlength=len(self.indices))
        data = np.minimum(data, float(INT_INF)).astype(np.int32)
        n = self.num_vertices
        # Copies: scipy may sort or prune a matrix's index arrays in place.
        return sp.csr_array((data, self.indices.copy(), self.indptr.copy()), shape=(n, n))

    def min_cut(self, quantised: np.ndarray, source: int, sink: int) -> tuple[np.ndarray, int]:
        """(source side, flow value): the vertices reachable from the source in the residual graph."""
        residual, value = self.residual(quantised, source, sink)
        side = _reached(residual, source, self.num_vertices)
        if side[sink]:
            raise AssertionError("sink reachable after max-flow")
        return side, value

    def residual(self, quantised: np.ndarray, source: int, sink: int) -> tuple[sp.csr_array, int]:
        """(which edges keep residual capacity after a maximum flow, as a bool matrix; the flow value)."""
        cap = self.matrix(quantised)
        result = maximum_flow(cap, source, sink, method="dinic")
        flow = result.flow
        if np.array_equal(flow.indptr, cap.indptr) and np.array_equal(flow.indices, cap.indices):
            residual_data = cap.data.astype(np.int64) - flow.data
            residual = sp.csr_array((residual_data > 0, cap.indices.copy(), cap.indptr.copy()), shape=cap.shape)
        else:  # scipy laid out its flow differently: subtract as sparse matrices
            residual = (cap.astype(np.int64) - flow.astype(np.int64)).tocsr()
            residual.data = residual.data > 0
        residual.eliminate_zeros()
        return residual, int(result.flow_value)


def _reached(graph: sp.csr_array, start: int, num_vertices: int) -> np.ndarray:
    reached = breadth_first_order(graph, start, directed=True, return_predecessors=False)
    side = np.zeros(num_vertices, dtype=bool)
    side[reached] = True
    return side


@dataclass(frozen=True)
class MinCutLattice:
    """Every minimum cut of one network: the source sides S with ``smallest <= S <= largest``
    that no residual edge leaves (a residual edge out of S would let more flow through)."""

    smallest: np.ndarray  # reachable from the source in the residual graph
    largest: np.ndarray  # all but what can still reach the sink in the residual graph
    residual: sp.csr_array  # bool: edges with residual capacity


class FlowNetwork:
    """Fixed edges ``tails[k] -> heads[k]``; ``infinite[k]`` marks edges no cut may cross.

    Raises ``InfeasibleCut`` at construction when an all-infinite path joins
    source and sink: no capacities could make a finite cut then.
    """

    def __init__(
        self, num_vertices: int, tails: np.ndarray, heads: np.ndarray, infinite: np.ndarray, source: int, sink: int
    ):
        self.num_vertices, self.source, self.sink = num_vertices, source, sink
        self.tails = np.asarray(tails, dtype=np.int64)
        self.heads = np.asarray(heads, dtype=np.int64)
        self.infinite = np.asarray(infinite, dtype=bool)
        path = _infinite_path(num_vertices, self.tails, self.heads, self.infinite, source, sink)
        if path is not None:
            raise InfeasibleCut(path)
        self._layout = _Layout(num_vertices, self.tails, self.heads)

    def min_cut(
        self, capacity: np.ndarray, *, inside: np.ndarray | None = None, outside: np.ndarray | None = None
    ) -> MinCut:
        """The minimum cut with the smallest source side (vertices reachable in the residual graph).

        ``capacity`` is per edge, ``inf`` exactly where ``infinite`` is set.
        ``inside`` / ``outside`` (bool per vertex) are vertices known to lie on
        the source / sink side, e.g. from the cuts at a smaller and a larger
        lambda: they are merged into the source / sink, and only the rest of
        the network goes through max-flow. Quantisation uses the whole network.
        """
        quantised, scale = quantize(np.where(self.infinite, math.inf, capacity))
        if inside is None and outside is None:
            side, value = self._layout.min_cut(quantised, self.source, self.sink)
            return MinCut(side, value, scale)
        n = self.num_vertices
        at_source = np.zeros(n, dtype=bool) if inside is None else inside.copy()
        at_sink = np.zeros(n, dtype=bool) if outside is None else outside.copy()
        at_source[self.source] = at_sink[self.sink] = True
        if (at_source & at_sink).any():
            raise ValueError("a vertex cannot lie on both sides")
        free = ~(at_source | at_sink)
        # Merged vertices: 0 is the source side, 1 the sink side, the free ones follow.
        label = np.where(at_source, 0, 1)
        label[free] = 2 + np.arange(int(free.sum()))
        tails, heads = label[self.tails], label[self.heads]
        crossing = (tails == 0) & (heads == 1)
        if (crossing & self.infinite).any():
            raise ValueError("the fixed sides cut an infinite edge")
        keep = (tails != heads) & (tails != 1) & (heads != 0) & ~crossing
        sub_side, value = _Layout(2 + int(free.sum()), tails[keep], heads[keep]).min_cut(quantised[keep], 0, 1)
        side = at_source
        side[free] = sub_side[2:]
        return MinCut(side, value + int(quantised[crossing].astype(np.int64).sum()), scale)

    def min_cut_lattice(self, capacity: np.ndarray) -> MinCutLattice:
        """All minimum cuts for ``capacity`` (one max-flow), as ``MinCutLattice``."""
        quantised, _ = quantize(np.where(self.infinite, math.inf, capacity))
        residual, _ = self._layout.residual(quantised, self.source, self.sink)
        smallest = _reached(residual, self.source, self.num_vertices)
        reaches_sink = _reached(sp.csr_array(residual.T), self.sink, self.num_vertices)
        return MinCutLattice(smallest, ~reaches_sink, residual)
