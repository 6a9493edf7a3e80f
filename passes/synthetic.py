"""Hand-built partitioning problems: a ``GraphSummary`` and its ``CutProblem`` without a joint graph,
for trying the solvers on a problem of one's own (the tests and benchmarks/partition_speed.py do).

In the spirit of Checkmate's graph builder: add nodes with their kind, bytes
and recompute cost (and the hard rules, when a test needs them), add data
edges, mark what the backward reads, then build::

    g = SyntheticGraph()
    x = g.node(INPUT, bytes=100)
    a = g.node(FORWARD, bytes=400, cost=1.0)
    g.edge(x, a)
    g.needed_by_backward(a)
    problem = g.problem()

``nodes`` and ``edges`` take arrays, for generated graphs of many nodes
(benchmarks/partition_speed.py builds a 100k-node one).
"""

from __future__ import annotations

import numpy as np

from .analysis import BACKWARD_ONLY, FORWARD, INPUT, GraphSummary
from .plan import CutProblem

__all__ = ["BACKWARD_ONLY", "FORWARD", "INPUT", "SyntheticGraph"]


class _Node:
    """Stands in for an fx.Node: the solver and the checks read only its name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class SyntheticGraph:
    """Nodes are numbered in the order they are added; edges go from producer to reader.

    Per node: ``kind`` (INPUT, FORWARD, BACKWARD_ONLY), ``bytes`` (what saving it costs),
    ``cost`` (seconds to recompute it), ``no_recompute`` / ``no_save`` (the reason a rule
    forbids it, or None; inputs default to "input", as the real summary says), ``static``
    (a parameter: lives anyway), ``view`` (defaults to ``no_save == "view"``) and
    ``must_recompute`` (a checkpoint region's tag).
    """

    def __init__(self):
        self._kind: list[np.ndarray] = []
        self._bytes: list[np.ndarray] = []
        self._cost: list[np.ndarray] = []
        self._static: list[np.ndarray] = []
        self._view: list[np.ndarray] = []
        self._must: list[np.ndarray] = []
        self._no_recompute: list[str | None] = []
        self._no_save: list[str | None] = []
        self._src: list[np.ndarray] = []
        self._dst: list[np.ndarray] = []
        self._needed: list[int | np.ndarray] = []
        self.num_nodes = 0

    def node(
        self,
        kind: int = FORWARD,
        bytes: float = 0.0,
        cost: float = 0.0,
        *,
        no_recompute: str | None = None,
        no_save: str | None = None,
        static: bool = False,
        view: bool | None = None,
        must_recompute: bool = False,
    ) -> int:
        """Add one node; returns its index."""
        (index,) = self.nodes(
            [kind],
            [bytes],
            [cost],
            no_recompute=None if no_recompute is None else [no_recompute],
            no_save=[no_save],
            static=[static],
            view=None if view is None else [view],
            must_recompute=[must_recompute],
        )
        return index

    def nodes(
        self, kind, bytes, cost, *, no_recompute=None, no_save=None, static=None, view=None, must_recompute=None
    ) -> range:
        """Add ``len(kind)`` nodes from arrays (None: every node takes the default); returns their indices."""
        kind = np.asarray(kind, dtype=np.int8)
        n = len(kind)
        if no_recompute is None:
            no_recompute = ["input" if k == INPUT else None for k in kind.tolist()]
        no_recompute = list(no_recompute)
        no_save = [None] * n if no_save is None else list(no_save)
        if view is None:
            view = [reason == "view" for reason in no_save]
        for name, column in (
            ("bytes", bytes),
            ("cost", cost),
            ("no_recompute", no_recompute),
            ("no_save", no_save),
            ("static", static),
            ("view", view),
            ("must_recompute", must_recompute),
        ):
            if column is not None and len(column) != n:
                raise ValueError(f"{name}: {len(column)} values for {n} nodes")
        self._kind.append(kind)
        self._bytes.append(np.asarray(bytes, dtype=float))
        self._cost.append(np.asarray(cost, dtype=float))
        self._static.append(np.zeros(n, dtype=bool) if static is None else np.asarray(static, dtype=bool))
        self._view.append(np.asarray(view, dtype=bool))
        self._must.append(np.zeros(n, dtype=bool) if must_recompute is None else np.asarray(must_recompute, dtype=bool))
        self._no_recompute += no_recompute
        self._no_save += no_save
        first, self.num_nodes = self.num_nodes, self.num_nodes + n
        return range(first, self.num_nodes)

    def edge(self, src: int, dst: int) -> None:
        """``dst`` reads ``src``."""
        self.edges([src], [dst])

    def edges(self, src, dst) -> None:
        """``dst[i]`` reads ``src[i]``; kept in the order given."""
        if len(src) != len(dst):
            raise ValueError(f"{len(src)} sources for {len(dst)} destinations")
        self._src.append(np.asarray(src, dtype=np.int32))
        self._dst.append(np.asarray(dst, dtype=np.int32))

    def chain(self, *nodes: int) -> None:
        """Each node reads the one before it."""
        self.edges(nodes[:-1], nodes[1:])

    def needed_by_backward(self, *nodes) -> None:
        """The backward reads these nodes: indices, or one bool mask over all nodes added so far."""
        self._needed.extend(nodes)

    def summary(self) -> GraphSummary:
        n = self.num_nodes
        needed = np.zeros(n, dtype=bool)
        for mark in self._needed:
            if isinstance(mark, np.ndarray) and mark.dtype == bool:
                needed[: len(mark)] |= mark
            else:
                needed[mark] = True
        src = np.concatenate(self._src) if self._src else np.zeros(0, dtype=np.int32)
        dst = np.concatenate(self._dst) if self._dst else np.zeros(0, dtype=np.int32)
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
            raise ValueError(f"an edge names a node outside 0..{n - 1}")
        return GraphSummary(
            nodes=tuple(_Node(f"n{i}") for i in range(n)),
            kind=np.concatenate(self._kind),
            edge_src=src,
            edge_dst=dst,
            needed_by_backward=needed,
            must_recompute=np.concatenate(self._must),
            is_static=np.concatenate(self._static),
            is_view=np.concatenate(self._view),
            no_recompute_reason=tuple(self._no_recompute),
            no_save_reason=tuple(self._no_save),
        )

    def problem(self) -> CutProblem:
        """The summary priced with each node's bytes and recompute cost."""
        return CutProblem(self.summary(), np.concatenate(self._bytes), np.concatenate(self._cost))
