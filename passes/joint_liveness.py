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
  no buffer (a reader through a view counts as a direct one): the rule of
  ``liveness.inductor_materialized``, applied to a whole phase at once (``_materialized``).

On top of these, what the compiler's kernels add, each switched on by the caller
(``JointPeakModel``'s arguments; not in the reference, and checked against
Inductor's schedule by benchmarks/prediction.py instead): fused values read their
inputs in their readers' kernels, outputs written over dying inputs, channels-last
copies of convolution inputs, and kernels' scratch memory; and, with ``store_rules``, the values
Inductor stores or fuses away and the sibling kernels it fuses (``kernel_rules``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.fx as fx

from .kernel_rules import StoreRules, read_in_write_order, scheduler_places, siblings_fused, stored_by_rules
from .liveness import PeakEstimate, hinted_size, tensor_bytes
from .memory_reorder import reordered
from .op_facts import (
    aliased_input,
    is_fusible_consumer,
    is_heavy_pointwise,
    is_pointwise,
    is_scatter,
    is_stored_by_lowering,
    reads_in_write_order,
    reduced_rows,
    scattered_into,
)

NO_NODE = -1


def channels_last_copied(nodes: Iterable[fx.Node]) -> list[fx.Node]:
    """Graph inputs that a 2-d convolution reads (its input or weight) in a layout other than
    channels-last. Under Inductor's layout optimization (always on the CPU with mkldnn), the
    convolution takes a channels-last copy of each, and the forward keeps the copy, not the input,
    for the backward (a ViT's image and patch weight: 884,736 bytes the graph's own values miss)."""
    copied = []
    for node in nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() != 4 or val.is_contiguous(memory_format=torch.channels_last):
            continue
        if any(u.target is torch.ops.aten.convolution.default and node in u.args[:2] for u in node.users):
            copied.append(node)
    return copied


class JointPeakModel:
    """The joint graph as arrays; ``estimate`` simulates one plan's step."""

    def __init__(
        self,
        joint: fx.GraphModule,
        *,
        num_fwd_outputs: int,
        fused: bool,
        kernel_reads: bool = False,
        layout_copies: bool = False,
        workspace_of: Callable[[fx.Node], int] | None = None,
        matmul_adds: Iterable[tuple[fx.Node, fx.Node]] = (),
        store_rules: StoreRules | None = None,
        size_hint=hinted_size,
    ):
        """What Inductor's kernels add to the graph's own values, each off by default (the graph-level
        model is what tests/module_liveness.py checks node by node): ``kernel_reads``, a fused
        value's inputs live until its readers' kernels run, and a pointwise kernel writes over a
        same-sized buffer it reads for the last time; ``layout_copies``, convolutions' graph inputs
        copied to channels-last (``channels_last_copied``); ``workspace_of(node)``, bytes a node's
        kernel holds only while it runs (a library's scratch memory); ``matmul_adds``, (mm, add) pairs
        that Inductor runs as one ``addmm`` at the add (``matmuls_added_later``); ``store_rules``, the
        pointwise values Inductor stores because they are reused or large (``StoreRules``)."""
        self.kernel_reads = fused and kernel_reads
        nodes = list(joint.graph.nodes)
        self.nodes = nodes
        index = {node: i for i, node in enumerate(nodes)}
        self.index = index
        n = len(nodes)
        self.is_call = np.array([node.op == "call_function" for node in nodes])
        self.is_placeholder = np.array([node.op == "placeholder" for node in nodes])
        self.nbytes = np.zeros(n, dtype=np.int64)
        self.numel = np.zeros(n, dtype=np.int64)
        self.alias_of = np.full(n, NO_NODE, dtype=np.int64)
        self.getitem_of = np.full(n, NO_NODE, dtype=np.int64)
        self.pointwise = np.zeros(n, dtype=bool)
        self.fusible = np.zeros(n, dtype=bool)
        src, dst, copied_in = [], [], []
        for i, node in enumerate(nodes):
            if node.op != "call_function":
                continue
            val = node.meta.get("val")
            if not isinstance(val, (list, tuple)):
                self.nbytes[i] = tensor_bytes(val, size_hint)
                self.numel[i] = size_hint(val.numel()) if isinstance(val, torch.Tensor) else 0
            base = aliased_input(node)
            if base is not None:
                self.alias_of[i] = index[base]
            elif node.target is operator.getitem and isinstance(node.args[0], fx.Node):
                parent = index[node.args[0]]
                if self.alias_of[parent] >= 0:  # a piece of a split: a view of the split's base, no buffer
                    self.alias_of[i] = parent
                else:
                    self.getitem_of[i] = parent
            self.pointwise[i] = is_pointwise(node)
            self.fusible[i] = is_fusible_consumer(node)
            destination = scattered_into(node)
            for arg in node.all_input_nodes:
                src.append(index[arg])
                dst.append(i)
                copied_in.append(arg is destination)
        for mm, add in matmul_adds:  # the add's kernel is the matmul: it reads the matmul's inputs
            m, a = index[mm], index[add]
            self.nbytes[m] = 0
            self.pointwise[a] = self.fusible[a] = False
            for arg in mm.all_input_nodes:
                src.append(index[arg])
                dst.append(a)
                copied_in.append(False)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        # Edges into a scatter from the input it copies into its own buffer: a fusible read.
        self.copied_in = np.array(copied_in, dtype=bool)
        self.store_rules = store_rules if fused else None
        library_calls = self.store_rules.multi_output_ops if self.store_rules is not None else ()
        returns_several = [isinstance(node.meta.get("val"), (list, tuple)) for node in nodes]
        self.multi_output = np.array([node.target in library_calls for node in nodes], dtype=bool) & returns_several
        copying = self.store_rules.copy_each_input_ops if self.store_rules is not None else ()
        self.copies_inputs = np.array([node.target in copying for node in nodes], dtype=bool)
        self.heavy = np.array([is_heavy_pointwise(node) for node in nodes], dtype=bool)
        self.always_stored = np.array([is_stored_by_lowering(node) for node in nodes], dtype=bool)
        self.scattered = np.array([is_scatter(node) for node in nodes], dtype=bool)
        self.rows = np.array([reduced_rows(node) for node in nodes], dtype=np.int64)
        self.inputs: list[list[int]] = [[] for _ in range(n)]
        for s_, d_ in zip(src, dst):
            self.inputs[d_].append(s_)
        # Per node, the inputs it reads in its own write order (``reads_in_write_order``).
        self.in_order: list[set[int]] = [set() for _ in range(n)]
        for i, node in enumerate(nodes):
            if node.op == "call_function":
                self.in_order[i] = {index[a] for a in node.all_input_nodes if reads_in_write_order(node, a)}
        self.workspace = np.zeros(n, dtype=np.int64)
        if workspace_of is not None:
            for i, node in enumerate(nodes):
                if node.op == "call_function":
                    self.workspace[i] = workspace_of(node)
        self.copied = (
            {index[p]: tensor_bytes(p.meta.get("val"), size_hint) for p in channels_last_copied(nodes)}
            if layout_copies
            else {}
        )
        self.users: list[list[int]] = [[] for _ in range(n)]
        for s, d in zip(src, dst):
            self.users[s].append(d)
        self._storage = self._roots(np.ones(n, dtype=bool), np.zeros(n, dtype=bool))  # each node's base, through views
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

    def _materialized(
        self, body: np.ndarray, outputs: np.ndarray, order: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Whether each node's value gets a buffer when ``body`` runs (in ``order``) and returns
        ``outputs``, and the copies of values without one that library calls make
        (``_input_copies``)."""
        if not self.fused:
            return np.ones(len(self.nodes), dtype=bool), []
        in_phase = body[self.dst]
        blocking = np.zeros(len(self.nodes), dtype=bool)
        blocked = in_phase & ~self.fusible[self.dst] & ~self.copied_in
        copying = blocked & self.copies_inputs[self.dst]  # copies what is not stored yet: ``_input_copies``
        blocking[self.src[blocked & ~copying]] = True
        # A view's reader reads its base's buffer: a pointwise value read through views by a matmul
        # (a recomputed GELU reshaped for the weight gradient's mm) gets a buffer as if read directly.
        needed = blocking | outputs
        viewed = np.flatnonzero(needed & (self.alias_of >= 0))
        while viewed.size:
            bases = self.alias_of[viewed]
            viewed = bases[~needed[bases] & (self.alias_of[bases] >= 0)]
            needed[bases] = True
        own = ~self.pointwise | needed
        copies = []
        if self.store_rules is not None:
            copying_calls = np.bincount(self._storage[self.src[copying]], minlength=len(self.nodes))
            stored_by_rules(self, body, outputs, own, copying_calls)
            copies = self._input_copies(body, order, own, copying)
        parent = self.getitem_of >= 0
        own[parent] = own[self.getitem_of[parent]]
        return own, copies

    def _input_copies(
        self, body: np.ndarray, order: np.ndarray, own: np.ndarray, copying: np.ndarray
    ) -> list[tuple[int, int, int]]:
        """The copies that calls of ``copy_each_input_ops`` make of pointwise values still computed
        inline (no buffer in ``own``), as (first call, call, bytes): a copy for each call, written
        just before it and freed after it. A recomputed attention's key or value expanded for
        grouped heads (a ``clone`` of an ``expand`` of its projection) is copied for the forward call
        and again for the backward one, and the projection lives until both have run. Copies of one
        value at most ``fusion_distance`` scheduler nodes apart are one kernel, run before the first
        call (the scheduler fuses siblings): the value then gets a buffer (set in ``own``), written
        there and read by the last call, and every other call's copy lives from the first call to
        its own."""
        calls_of: dict[int, set[int]] = {}
        for value, call in zip(self._storage[self.src[copying]].tolist(), self.dst[copying].tolist()):
            if body[value] and not own[value] and self.pointwise[value]:
                calls_of.setdefault(value, set()).add(call)
        if not calls_of:
            return []
        scheduled = scheduler_places(self, order, own)
        copies = []
        for value, calls in sorted(calls_of.items()):
            calls = sorted(calls, key=lambda c: scheduled[c])
            size = int(self.nbytes[value])
            if len(calls) > 1 and scheduled[calls[-1]] - scheduled[calls[0]] <= self.store_rules.fusion_distance:
                own[value] = True
                copies += [(calls[0], call, size) for call in calls[:-1]]
            else:
                copies += [(call, call, size) for call in calls]
        return copies

    def _written_in_place(self, order, pos, owners, mat, last, pinned, carried, fused_with) -> list[tuple[int, int]]:
        """Pointwise kernels that write their output over a buffer of the same size that they read
        for the last time (Inductor's ``inplace_buffers``): (step, bytes) for each. A buffer's last
        step is a kernel that reads it (directly or through values fused into it) or the last kernel
        of a fused kernel that reads it; only a kernel that reads it in its write order takes it."""
        dying = owners[mat[owners] & ~pinned[owners] & (last[owners] >= 0) & (self.getitem_of[owners] < 0)]
        dying = np.concatenate([dying, np.array([r for r in carried if last[r] >= 0], dtype=np.int64)])
        dying = dying[last[dying] < len(order)]
        kernel = order[last[dying]]
        fits = (
            (kernel != dying)
            & mat[kernel]
            & self.pointwise[kernel]
            & (self.alias_of[kernel] < 0)
            & (self.nbytes[dying] > 0)
            & (self.nbytes[dying] == self.nbytes[kernel])
            & ~self.scattered[dying]
        )

        # Not a buffer that another kernel of the same fused kernel reads too, unless that kernel
        # is an ancestor of this one: the CPU backend decides in-place writes kernel by kernel
        # while it generates the fused kernel, counting every reader not yet run and not an
        # ancestor (``SchedulerNode.decide_inplace_update``). A SwiGLU's gate gradient does not
        # write over the up projection that the recomputed activation beside it reads; a GELU's
        # backward writes over the incoming gradient, which no other kernel of it reads.
        grouped = set(fused_with) | set(fused_with.values())

        def is_ancestor(r: int, k: int) -> bool:
            pending, seen = [k], {k}
            while pending:
                for j in self.inputs[pending.pop()]:
                    if j == r:
                        return True
                    if j not in seen and pos[j] > pos[r]:
                        seen.add(j)
                        pending.append(j)
            return False

        def shared_in_kernel(d: int, k: int) -> bool:
            if k not in grouped:
                return False
            group, pending, seen = fused_with.get(k, k), [d], {d}
            while pending:  # the kernels reading d, through views and fused values
                for r in self.users[pending.pop()]:
                    if r in seen:
                        continue
                    seen.add(r)
                    if not mat[r] or self.alias_of[r] >= 0:
                        pending.append(r)
                    elif r != k and fused_with.get(r, r) == group and not is_ancestor(r, k):
                        return True
            return False

        steps = {
            int(last[d])
            for d, k in zip(dying[fits].tolist(), kernel[fits].tolist())
            if read_in_write_order(self, k, d, mat) and not (fused_with and shared_in_kernel(d, k))
        }
        return [(step, int(self.nbytes[order[step]])) for step in sorted(steps)]

    def _phase(
        self,
        order: np.ndarray,
        roots: np.ndarray,
        mat: np.ndarray,
        pinned_roots: np.ndarray,
        carried: dict[int, int],
        base: int,
        extra: Iterable[tuple[int, int, int]] = (),
        fused_with: dict[int, int] | None = None,
    ) -> tuple[int, int]:
        """Peak live bytes over ``order`` and the position where it is reached (-1: before the first step).

        ``carried`` maps storages that exist before the phase to their size: they are freed after
        their last reader in this phase (never, if none reads them). ``extra`` holds buffers of no
        graph node, as (written at, freed after or -1 for never, size). ``fused_with`` maps a node
        fused into an earlier sibling's kernel to that sibling (``kernel_rules.siblings_fused``).
        """
        fused_with = fused_with or {}
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
        # A view reads nothing: its base lives until the view's readers run, wherever the view sits
        # (a kernel fused into an earlier one runs before the views it reads would).
        reads = (pos[self.dst] >= 0) & (self.alias_of[self.dst] < 0)
        np.maximum.at(last, roots[self.src[reads]], pos[self.dst[reads]])
        # A value fused into its readers (no buffer) is computed inside their kernels, so what it
        # reads lives until its last reader runs: a recomputed matmul output feeding a fused GELU
        # lives until the GELU's backward, and a residual stream's inputs until the last kernel
        # that recomputes the stream (followed through every fused value, to where a stored one
        # ends the chain: ``_materialized``).
        dst = self.dst[reads]
        inlined = ~mat[dst] & (roots[dst] == dst)
        src, dst = roots[self.src[reads][inlined]], dst[inlined]
        while src.size and self.kernel_reads:
            extended = last.copy()
            np.maximum.at(extended, src, last[dst])
            if np.array_equal(extended, last):
                break
            last = extended
        # Kernels fused into an earlier one run as one kernel: what any of them reads lives until
        # the last of them, beside every output (a SwiGLU's backward holds gate, up and the hidden
        # gradient while it writes the recomputed activation and both gradients).
        if fused_with:
            kernel_end = np.arange(steps + 1)  # per step, the step its fused kernel ends at
            for k, g in fused_with.items():
                if pos[k] >= 0 and pos[g] >= 0:
                    kernel_end[pos[g] : pos[k] + 1] = np.maximum(kernel_end[pos[g] : pos[k] + 1], pos[k])
            read = last >= 0
            last[read] = kernel_end[last[read]]
        pinned = np.zeros(n, dtype=bool)
        pinned[pinned_roots] = True
        np.add.at(delta, written, sizes)
        freed = ~pinned[owners]
        np.add.at(delta, last[owners[freed]] + 1, -sizes[freed])
        for root, size in carried.items():
            if last[root] >= 0:
                delta[last[root] + 1] -= size
        if self.kernel_reads:
            for step, size in self._written_in_place(order, pos, owners, mat, last, pinned, carried, fused_with):
                delta[step] -= size  # the output takes the dying input's buffer:
                delta[step + 1] += size  # no new allocation, and the input's is not freed
        scratch = np.flatnonzero(self.workspace[order])
        extra = [*extra, *((int(step), int(step), int(self.workspace[order[step]])) for step in scratch)]
        for written_at, freed_after, size in extra:
            delta[written_at] += size
            if freed_after >= 0:
                delta[freed_after + 1] -= size
        if steps == 0:
            return base, -1
        live = base + np.cumsum(delta[:steps])
        at = int(np.argmax(live))
        return (int(live[at]), at) if live[at] > base else (base, -1)

    def _at_steps(self, order: np.ndarray, copies: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """``_input_copies``' (written before, freed after, bytes) in steps of ``order``."""
        pos = np.full(len(self.nodes), -1, dtype=np.int64)
        pos[order] = np.arange(len(order))
        return [(int(pos[first]), int(pos[call]), size) for first, call, size in copies]

    def _layout_copies(self, fw_order: np.ndarray, bw_order: np.ndarray) -> tuple[dict[int, int], list]:
        """The channels-last copies of ``copied`` inputs: those the backward reads are kept into it
        (placeholder index: bytes, held to the backward's end, as Inductor holds the inputs of
        static lifetime they replace), the others live in the forward from its first reader to its
        last (``_phase``'s ``extra``)."""
        if not self.copied:
            return {}, []
        fw_pos = {int(node): step for step, node in enumerate(fw_order)}
        in_backward = np.zeros(len(self.nodes), dtype=bool)
        in_backward[bw_order] = True
        kept, forward = {}, []
        for placeholder, size in self.copied.items():
            readers = [fw_pos[u] for u in self.users[placeholder] if u in fw_pos]
            if not readers:
                continue
            read_in_backward = any(in_backward[u] for u in self.users[placeholder])
            forward.append((min(readers), -1 if read_in_backward else max(readers), size))
            if read_in_backward:
                kept[placeholder] = size
        return kept, forward

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
        fw_mat, fw_copies = self._materialized(forward_body, fw_outputs, fw_order)
        fw_fused, bw_fused = {}, {}
        if self.store_rules is not None:
            fw_order, fw_fused = siblings_fused(self, fw_order, fw_roots, fw_mat)
            if self.store_rules.reorder_for_peak_memory:  # the forward's inputs are parameters: never freed
                fw_order = reordered(self, fw_order, fw_roots, fw_mat, fw_fused, {}, fw_roots[fw_outputs])
        bw_order = self.backward_order(backward, recomputed)
        copies_kept, copies_forward = self._layout_copies(fw_order, bw_order)
        fw_peak, fw_at = self._phase(
            fw_order,
            fw_roots,
            fw_mat,
            fw_roots[fw_outputs],
            {},
            0,
            [*copies_forward, *self._at_steps(fw_order, fw_copies)],
            fused_with=fw_fused,
        )

        # Live into the backward: storages the forward computed and returns (real outputs, saved values).
        def computed_in_forward(roots):
            return {int(r) for r in roots if forward_body[r]}

        saved_roots = computed_in_forward(fw_roots[saved])
        kept_roots = computed_in_forward(fw_roots[self.real_outputs]) | saved_roots
        size_of = {r: int(self.nbytes[r] * fw_mat[r]) for r in kept_roots}
        boundary = sum(size_of.values()) + sum(copies_kept.values())

        bw_body = np.zeros(len(self.nodes), dtype=bool)
        bw_body[bw_order] = True
        bw_roots = self._roots(bw_body, saved)
        bw_roots = np.where(saved[bw_roots], fw_roots[bw_roots], bw_roots)  # a saved value's storage is the forward's
        bw_outputs = np.zeros(len(self.nodes), dtype=bool)
        bw_outputs[self.grad_outputs] = True
        bw_outputs &= bw_body
        bw_mat, bw_copies = self._materialized(bw_body, bw_outputs, bw_order)
        pinned = np.concatenate([bw_roots[bw_outputs], np.fromiter(kept_roots - saved_roots, dtype=np.int64)])
        # The saved values are freed after their last reader. The channels-last copies of inputs
        # stand in for parameters the backward was handed: of static lifetime there, never freed.
        carried = {r: size_of[r] for r in saved_roots}
        if self.store_rules is not None:
            bw_order, bw_fused = siblings_fused(self, bw_order, bw_roots, bw_mat)
            if self.store_rules.reorder_for_peak_memory:
                bw_order = reordered(self, bw_order, bw_roots, bw_mat, bw_fused, carried, pinned)
        bw_peak, bw_at = self._phase(
            bw_order, bw_roots, bw_mat, pinned, carried, boundary, self._at_steps(bw_order, bw_copies), bw_fused
        )

        def name(order, at):
            return "start" if at < 0 else self.nodes[order[at]].name

        if bw_peak >= fw_peak:
            return PeakEstimate(bw_peak, "backward", name(bw_order, bw_at), fw_peak, boundary, bw_peak, ())
        return PeakEstimate(fw_peak, "forward", name(fw_order, fw_at), fw_peak, boundary, bw_peak, ())
