"""Predict the step peak of many plans on one joint graph, as arrays.

A budget search scores every plan on the min-cut hull. Walking the nodes of
each plan's extracted modules node by node (tests/module_liveness.py, the
reference this model is tested against) costs about 0.1 s a plan at 96 layers; here the joint graph is read once into arrays (sizes, alias links,
fusion facts, edges) and each plan is simulated as intervals: a storage is
live from the step that allocates it to the last step that reads it, or to
the end of its phase when the phase returns it; the peak is the maximum of a
cumulative sum. The rules are the reference's (tests/test_peak.py checks
both give the same peak on extracted modules):

- the forward runs the plan's forward nodes in graph order; what it returns
  (real outputs and saved values) stays live into the backward;
- the backward runs the nodes that read tangents in graph order, each
  recomputed node placed just before its first reader, as AOTAutograd's
  reordering does; a saved value is freed after its last backward reader;
- a multi-output op allocates all its outputs before its inputs are freed;
- a view or an in-place result shares its input's storage; under the
  ``fused`` model a pointwise value only consumed by fusible consumers gets
  no buffer: the rule of ``liveness.inductor_materialized``, applied to a whole
  phase at once (``_materialized``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np
import torch.fx as fx

from .liveness import PeakEstimate, hinted_size, tensor_bytes
from .op_facts import aliased_input, is_fusible_consumer, is_pointwise

NO_NODE = -1


class JointPeakModel:
    """The joint graph as arrays; ``estimate`` simulates one plan's step."""

    def __init__(self, joint: fx.GraphModule, *, num_fwd_outputs: int, fused: bool, size_hint=hinted_size):
        nodes = list(joint.graph.nodes)
        self.nodes = nodes
        index = {node: i for i, node in enumerate(nodes)}
        self.index = index
        n = len(nodes)
        self.is_call = np.array([node.op == "call_function" for node in nodes])
        self.is_placeholder = np.array([node.op == "placeholder" for node in nodes])
        self.nbytes = np.zeros(n, dtype=np.int64)
        self.alias_of = np.full(n, NO_NODE, dtype=np.int64)
        self.getitem_of = np.full(n, NO_NODE, dtype=np.int64)
        self.pointwise = np.zeros(n, dtype=bool)
        self.fusible = np.zeros(n, dtype=bool)
        src, dst = [], []
        for i, node in enumerate(nodes):
            if node.op != "call_function":
                continue
            val = node.meta.get("val")
            if not isinstance(val, (list, tuple)):
                self.nbytes[i] = tensor_bytes(val, size_hint)
            base = aliased_input(node)
            if base is not None:
                self.alias_of[i] = index[base]
            elif node.target is operator.getitem and isinstance(node.args[0], fx.Node):
                self.getitem_of[i] = index[node.args[0]]
            self.pointwise[i] = is_pointwise(node)
            self.fusible[i] = is_fusible_consumer(node)
            for arg in node.all_input_nodes:
                src.append(index[arg])
                dst.append(i)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        self.users: list[list[int]] = [[] for _ in range(n)]
        for s, d in zip(src, dst):
            self.users[s].append(d)
        self.fused = fused
        outputs = nodes[-1].args[0]
        self.real_outputs = np.array(
            [index[o] for o in outputs[:num_fwd_outputs] if isinstance(o, fx.Node)], dtype=np.int64
        )
        self.grad_outputs = np.array(
            [index[o] for o in outputs[num_fwd_outputs:] if isinstance(o, fx.Node)], dtype=np.int64
        )

    def mask(self, nodes: Iterable[fx.Node]) -> np.ndarray:
        out = np.zeros(len(self.nodes), dtype=bool)
        out[[self.index[node] for node in nodes]] = True
        return out

    def backward_order(self, backward: np.ndarray, recomputed: np.ndarray) -> np.ndarray:
        """Backward node indices in run order, as AOTAutograd's reordering runs them."""
        n = len(self.nodes)
        slot = np.where(backward & self.is_call, np.arange(n), n)
        # From the first node that reads a tangent on, nodes run in graph order; a recomputed
        # node before that point runs just before its first reader.
        first = int(slot.min()) if n else 0
        for r in np.flatnonzero(recomputed & self.is_call)[::-1]:  # readers come later in graph order
            readers = [slot[u] for u in self.users[r] if slot[u] < n]
            if readers:
                slot[r] = r if r > first else min(readers)
        return self._raised_getitems(np.flatnonzero(slot < n), slot)

    def _raised_getitems(self, run: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """``run`` sorted by (slot, graph order), each getitem right after its parent, as
        ``raise_getitems`` leaves both modules."""
        n = len(self.nodes)
        parent = self.getitem_of[run]
        raised = parent >= 0
        primary = slot[run].astype(np.float64)
        secondary = run.astype(np.float64)
        primary[raised] = slot[parent[raised]]
        secondary[raised] = parent[raised] + 0.5 + run[raised] / (2.0 * n)
        return run[np.lexsort((secondary, primary))]

    def _roots(self, body: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Each node's storage: follow alias links from nodes of ``body`` until a node of ``stop`` or a non-alias."""
        n = len(self.nodes)
        ptr = np.arange(n)
        follows = body & (self.alias_of >= 0) & ~stop
        ptr[follows] = self.alias_of[follows]
        while True:
            jumped = ptr[ptr]
            if np.array_equal(jumped, ptr):
                return ptr
            ptr = jumped

    def _materialized(self, body: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Whether each node's value gets a buffer when ``body`` runs and returns ``outputs``."""
        if not self.fused:
            return np.ones(len(self.nodes), dtype=bool)
        in_phase = body[self.dst]
        blocking = np.zeros(len(self.nodes), dtype=bool)
        blocking[self.src[in_phase & ~self.fusible[self.dst]]] = True
        own = ~self.pointwise | outputs | blocking
        parent = self.getitem_of >= 0
        own[parent] = own[self.getitem_of[parent]]
        return own

    def _phase(
        self,
        order: np.ndarray,
        roots: np.ndarray,
        mat: np.ndarray,
        pinned_roots: np.ndarray,
        carried: dict[int, int],
        base: int,
    ) -> tuple[int, int]:
        """Peak live bytes over ``order`` and the position where it is reached (-1: before the first step).

        ``carried`` maps storages that exist before the phase to their size: they are freed after
        their last reader in this phase (never, if none reads them).
        """
        n, steps = len(self.nodes), len(order)
        pos = np.full(n, -1, dtype=np.int64)
        pos[order] = np.arange(steps)
        delta = np.zeros(steps + 1, dtype=np.int64)
        owners = order[roots[order] == order]
        sizes = self.nbytes[owners] * mat[owners]
        # A multi-output op's outputs (its getitems) are written while its inputs are alive.
        parents = self.getitem_of[owners]
        parent_pos = np.where(parents >= 0, pos[np.maximum(parents, 0)], -1)
        written = np.where(parent_pos >= 0, parent_pos, pos[owners])
        last = np.full(n, -1, dtype=np.int64)
        last[owners] = pos[owners]
        reads = pos[self.dst] >= 0
        np.maximum.at(last, roots[self.src[reads]], pos[self.dst[reads]])
        pinned = np.zeros(n, dtype=bool)
        pinned[pinned_roots] = True
        np.add.at(delta, written, sizes)
        freed = ~pinned[owners]
        np.add.at(delta, last[owners[freed]] + 1, -sizes[freed])
        for root, size in carried.items():
            if last[root] >= 0:
                delta[last[root] + 1] -= size
        if steps == 0:
            return base, -1
        live = base + np.cumsum(delta[:steps])
        at = int(np.argmax(live))
        return (int(live[at]), at) if live[at] > base else (base, -1)

    def estimate(
        self, forward: np.ndarray, saved: np.ndarray, recomputed: np.ndarray, backward: np.ndarray
    ) -> PeakEstimate:
        """The step's peak for a plan; all arguments are boolean masks over the joint graph's nodes."""
        forward_body = forward & self.is_call
        fw_order = self._raised_getitems(np.flatnonzero(forward_body), np.arange(len(self.nodes)))
        fw_outputs = np.zeros(len(self.nodes), dtype=bool)
        fw_outputs[self.real_outputs] = True
        fw_outputs |= saved
        fw_roots = self._roots(forward_body, np.zeros(len(self.nodes), dtype=bool))
        fw_mat = self._materialized(forward_body, fw_outputs)
        fw_peak, fw_at = self._phase(fw_order, fw_roots, fw_mat, fw_roots[fw_outputs], {}, 0)

        # Live into the backward: storages the forward computed and returns (real outputs, saved values).
        def computed_in_forward(roots):
            return {int(r) for r in roots if forward_body[r]}

        saved_roots = computed_in_forward(fw_roots[saved])
        kept_roots = computed_in_forward(fw_roots[self.real_outputs]) | saved_roots
        size_of = {r: int(self.nbytes[r] * fw_mat[r]) for r in kept_roots}
        boundary = sum(size_of.values())

        bw_order = self.backward_order(backward, recomputed)
        bw_body = np.zeros(len(self.nodes), dtype=bool)
        bw_body[bw_order] = True
        bw_roots = self._roots(bw_body, saved)
        bw_roots = np.where(saved[bw_roots], fw_roots[bw_roots], bw_roots)  # a saved value's storage is the forward's
        bw_outputs = np.zeros(len(self.nodes), dtype=bool)
        bw_outputs[self.grad_outputs] = True
        bw_outputs &= bw_body
        bw_mat = self._materialized(bw_body, bw_outputs)
        pinned = np.concatenate([bw_roots[bw_outputs], np.fromiter(kept_roots - saved_roots, dtype=np.int64)])
        carried = {r: size_of[r] for r in saved_roots}
        bw_peak, bw_at = self._phase(bw_order, bw_roots, bw_mat, pinned, carried, boundary)

        def name(order, at):
            return "start" if at < 0 else self.nodes[order[at]].name

        if bw_peak >= fw_peak:
            return PeakEstimate(bw_peak, "backward", name(bw_order, bw_at), fw_peak, boundary, bw_peak, ())
        return PeakEstimate(fw_peak, "forward", name(fw_order, fw_at), fw_peak, boundary, bw_peak, ())
