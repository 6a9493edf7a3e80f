"""The order Inductor's scheduler finally runs a phase's kernels in: reordered for peak memory.

After fusion, Inductor's scheduler (``memory.reorder_for_peak_memory``, on by default:
``config.reorder_for_peak_memory``) estimates the peak of its kernel order and of three topological
sorts of the same kernels (least peak memory first, breadth first, depth first by bytes touched) and
runs the one estimated lowest, its own order on a tie. Its estimate is simpler than the peak model's:
a buffer is allocated when its kernel runs and freed after its last reader, the graph's outputs are
never freed, and the inputs other than parameters and tangents (in a backward, the saved values)
are live from the start until their last reader; outputs written in place are not seen. An MLP's
recompute-everything plan runs its last weight gradient's matmul before the input gradient's, so
the recomputed activation dies before a larger buffer is written: 3.3% below the graph's order.

This module ports the three sorts and the estimate onto the peak model's kernels
(``kernel_graph``): each stored value of a phase is a buffer of the kernel that writes it, a fused
group of siblings is one kernel, and a kernel reads the buffers its fused values and views read.
A library call returning several tensors (a convolution's backward, attention) is one kernel
allocating all of them and one kernel per output (Inductor's ``MultiOutput``), which allocates
nothing and frees its tensor: the depth-first sort visits those first, as they touch no bytes.
``reordered`` picks the order as Inductor does and lays the phase's nodes out in it.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .joint_liveness import JointPeakModel

INPUT = -1  # the producer of a buffer that exists before the phase (a freeable input)


@dataclass(frozen=True)
class KernelGraph:
    """A phase's kernels as Inductor's memory planning sees them. Kernels are numbered in the
    phase's order, buffers by their index in the arrays: ``producer[b]`` is the kernel writing b
    (``INPUT`` for an input freed after its last reader), ``kept[b]`` whether the phase returns
    it. A buffer's bytes are allocated when its producer runs (``allocated``, Inductor's
    ``size_alloc``) and freed after its last reader (``freed``, ``size_free``); the two differ only
    for a library call's several outputs, allocated by the call and freed through the node of each
    output."""

    outputs: list[list[int]]  # per kernel, the buffers it writes
    reads: list[list[int]]  # per kernel, the buffers other kernels wrote (or inputs) it reads, sorted, each once
    freed: np.ndarray
    producer: np.ndarray
    kept: np.ndarray
    allocated: np.ndarray

    @functools.cached_property
    def readers(self) -> list[list[int]]:
        """Per buffer, the kernels that read it."""
        readers: list[list[int]] = [[] for _ in range(len(self.freed))]
        for k, bufs in enumerate(self.reads):
            for b in bufs:
                readers[b].append(k)
        return readers

    @functools.cached_property
    def allocates(self) -> list[int]:
        """Per kernel, the bytes it allocates when it runs (Inductor's node ``size``)."""
        allocated = self.allocated.tolist()
        return [sum(allocated[b] for b in bufs) for bufs in self.outputs]

    @functools.cached_property
    def predecessors(self) -> list[set[int]]:
        """Per kernel, the kernels that write what it reads."""
        return [
            {int(self.producer[b]) for b in bufs if self.producer[b] != INPUT} - {k}
            for k, bufs in enumerate(self.reads)
        ]

    @functools.cached_property
    def successors(self) -> list[list[int]]:
        successors: list[list[int]] = [[] for _ in self.outputs]
        for k, preds in enumerate(self.predecessors):
            for p in sorted(preds):
                successors[p].append(k)
        return successors

    @functools.cached_property
    def read_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (kernel, buffer) read, as two arrays."""
        kernels = [k for k, bufs in enumerate(self.reads) for _ in bufs]
        buffers = [b for bufs in self.reads for b in bufs]
        return np.array(kernels, dtype=np.int64), np.array(buffers, dtype=np.int64)


def estimated_peak(graph: KernelGraph, order: list[int]) -> int:
    """Inductor's peak estimate of running ``graph``'s kernels in ``order`` (``estimate_peak_memory``)."""
    steps = len(order)
    step_of = np.empty(len(graph.outputs), dtype=np.int64)
    step_of[order] = np.arange(steps)
    start = np.where(graph.producer == INPUT, 0, step_of[np.maximum(graph.producer, 0)])
    last = np.full(len(graph.freed), -1, dtype=np.int64)
    kernels, buffers = graph.read_pairs
    np.maximum.at(last, buffers, step_of[kernels])
    end = np.where(last < 0, start, last)
    delta = np.zeros(steps + 1, dtype=np.int64)
    np.add.at(delta, start, graph.allocated)
    dropped = ~graph.kept
    np.add.at(delta, end[dropped] + 1, -graph.freed[dropped])
    return int(np.cumsum(delta).max(initial=0))


def least_peak_first(graph: KernelGraph) -> list[int]:
    """``topological_sort_lpmf``: among the kernels ready to run, one that allocates no more than
    the peak so far and leaves the least live, else the one that allocates least."""
    n = len(graph.outputs)
    preds, succs = graph.predecessors, graph.successors
    readers = graph.readers  # each kernel once per buffer: its reads are distinct
    indegree = [len(ps) for ps in preds]
    outdegree = [len(readers[b]) + int(graph.kept[b]) for b in range(len(graph.freed))]
    freed = graph.freed.tolist()
    allocated = graph.allocates
    reads = graph.reads
    to_free = [0] * n
    for k in range(n):
        to_free[k] += sum(freed[b] for b in reads[k] if outdegree[b] == 1)
        to_free[k] += sum(freed[b] for b in graph.outputs[k] if outdegree[b] == 0)
    live = sum(freed[b] for b in range(len(freed)) if graph.producer[b] == INPUT)
    kept = sum(freed[b] for b in range(len(freed)) if graph.kept[b])
    peak = max(live, kept)
    gap = peak - live
    ready = {k for k in range(n) if indegree[k] == 0}
    order = []
    while ready:
        k = min(ready, key=lambda k: (allocated[k] if allocated[k] > gap else 0, allocated[k] - to_free[k], k))
        ready.remove(k)
        order.append(k)
        live += allocated[k]
        peak = max(peak, live)
        live -= to_free[k]
        gap = peak - live
        for s in succs[k]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.add(s)
        for b in reads[k]:
            outdegree[b] -= 1
            if outdegree[b] == 1:
                for r in readers[b]:
                    to_free[r] += freed[b]
    return order


def breadth_first(graph: KernelGraph) -> list[int]:
    """``topological_sort_bfs``: the ready kernel whose predecessors ran earliest (their run steps, sorted)."""
    preds, succs = graph.predecessors, graph.successors
    indegree = [len(ps) for ps in preds]
    ran_at = [-1] * len(preds)
    ready = [(sorted(ran_at[p] for p in preds[k]), k) for k in range(len(preds)) if indegree[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        ran_at[k] = len(order)
        order.append(k)
        for s in succs[k]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, (sorted(ran_at[p] for p in preds[s]), s))
    return order


def depth_first(graph: KernelGraph) -> list[int]:
    """``topological_sort_dfs``: kernels visited by the bytes they write and read, fewest first,
    each after its predecessors (visited the same way)."""
    preds = graph.predecessors
    freed = graph.freed.tolist()
    touched = [graph.allocates[k] + sum(freed[b] for b in graph.reads[k]) for k in range(len(preds))]
    seen, order = set(), []

    def visit(k: int) -> None:
        # Iterative, as the recursion would be as deep as the graph.
        stack = [(k, iter(sorted(preds[k], key=lambda p: (touched[p], p))))]
        seen.add(k)
        while stack:
            node, pending = stack[-1]
            nxt = next((p for p in pending if p not in seen), None)
            if nxt is None:
                stack.pop()
                order.append(node)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(preds[nxt], key=lambda p: (touched[p], p)))))

    for k in sorted(range(len(preds)), key=lambda k: (touched[k], k)):
        if k not in seen:
            visit(k)
    return order


SORTS = (least_peak_first, breadth_first, depth_first)


def best_order(graph: KernelGraph) -> list[int]:
    """The kernel order Inductor keeps: the least estimated peak among its own order and the three
    sorts, the first of them on a tie."""
    best = list(range(len(graph.outputs)))
    best_peak = estimated_peak(graph, best)
    for sort in SORTS:
        order = sort(graph)
        peak = estimated_peak(graph, order)
        if peak < best_peak:
            best, best_peak = order, peak
    return best


def kernel_graph(
    model: JointPeakModel,
    order: np.ndarray,
    roots: np.ndarray,
    mat: np.ndarray,
    fused_with: dict[int, int],
    inputs: dict[int, int],
    kept: np.ndarray,
) -> tuple[KernelGraph, np.ndarray]:
    """The kernels of a phase that runs ``order`` and the kernel of each node (-1 for a view or a
    fused value: computed in its readers' kernels). ``inputs`` maps the storages that exist before
    the phase and are freed in it to their bytes; ``kept`` lists the storages the phase returns."""
    n = len(model.nodes)
    in_phase = np.zeros(n, dtype=bool)
    in_phase[order] = True
    kernel_of = np.full(n, -1, dtype=np.int64)
    parents = model.getitem_of
    # An output of a library call returning several tensors: a kernel of its own (``MultiOutput``).
    call_output = (parents >= 0) & model.multi_output[np.maximum(parents, 0)]
    count = 0
    for node in order.tolist():
        parent = parents[node]
        if parent >= 0 and not call_output[node]:
            kernel_of[node] = kernel_of[parent]
        elif (call_output[node] and kernel_of[parent] >= 0) or (
            mat[node] and model.alias_of[node] < 0 and model.is_call[node]
        ):
            leader = fused_with.get(node, node)
            if kernel_of[leader] < 0:
                kernel_of[leader] = count
                count += 1
            kernel_of[node] = kernel_of[leader]
    buffer_of: dict[int, int] = {}
    freed, allocated, producers = [], [], []
    outputs: list[list[int]] = [[] for _ in range(count)]

    def add_buffer(node: int, freed_bytes: int, allocated_bytes: int) -> None:
        buffer_of[node] = len(freed)
        freed.append(freed_bytes)
        allocated.append(allocated_bytes)
        producers.append(int(kernel_of[node]))
        outputs[kernel_of[node]].append(buffer_of[node])

    for node in order.tolist():
        if kernel_of[node] < 0:
            continue
        if model.multi_output[node]:  # allocates its outputs; each output's node frees its own
            pieces = [u for u in model.users[node] if in_phase[u] and roots[u] == u and kernel_of[u] >= 0]
            add_buffer(node, 0, sum(int(model.nbytes[u]) for u in pieces))
        elif roots[node] == node and model.nbytes[node] > 0:
            nbytes = int(model.nbytes[node])
            add_buffer(node, nbytes, 0 if call_output[node] else nbytes)

    def loaded(node: int) -> set[int]:
        """The buffers ``node``'s kernel loads: through fused values (computed in it) and views."""
        found, pending, seen = set(), [node], {node}
        while pending:
            for j in model.inputs[pending.pop()]:
                r = int(roots[j])
                if r not in buffer_of and r in inputs:  # an input counts from its first reader on
                    buffer_of[r] = len(freed)
                    freed.append(int(inputs[r]))
                    allocated.append(int(inputs[r]))
                    producers.append(INPUT)
                if r in buffer_of:
                    found.add(buffer_of[r])
                elif in_phase[r] and not mat[r] and r not in seen:
                    seen.add(r)
                    pending.append(r)
        return found

    reads: list[set[int]] = [set() for _ in range(count)]
    for node in order.tolist():
        k = kernel_of[node]
        if k >= 0 and (parents[node] < 0 or call_output[node]):
            reads[k] |= loaded(node)
    producer = np.array(producers, dtype=np.int64)
    reads_of = [sorted(b for b in bufs if producer[b] != k) for k, bufs in enumerate(reads)]
    kept_mask = np.zeros(len(freed), dtype=bool)
    for storage in np.unique(kept).tolist():
        if storage in buffer_of:
            kept_mask[buffer_of[storage]] = True
    freed_bytes, allocated_bytes = np.array(freed, dtype=np.int64), np.array(allocated, dtype=np.int64)
    graph = KernelGraph(outputs, reads_of, freed_bytes, producer, kept_mask, allocated_bytes)
    return graph, kernel_of


def reordered(
    model: JointPeakModel,
    order: np.ndarray,
    roots: np.ndarray,
    mat: np.ndarray,
    fused_with: dict[int, int],
    inputs: dict[int, int],
    kept: np.ndarray,
) -> np.ndarray:
    """``order`` laid out in the kernel order Inductor keeps (``best_order``); unchanged when that is
    the given one. A view or fused value runs just before the first kernel that reads it."""
    graph, kernel_of = kernel_graph(model, order, roots, mat, fused_with, inputs, kept)
    kernels = best_order(graph)
    if kernels == sorted(kernels):
        return order
    rank_of_kernel = np.empty(len(kernels), dtype=np.int64)
    rank_of_kernel[kernels] = np.arange(len(kernels))
    n = len(model.nodes)
    rank = np.full(n, -1, dtype=np.int64)
    in_kernel = kernel_of[order] >= 0
    rank[order[in_kernel]] = rank_of_kernel[kernel_of[order[in_kernel]]]
    for node in order[~in_kernel][::-1].tolist():  # readers come later in the phase
        ranks = [rank[u] for u in model.users[node] if rank[u] >= 0]
        rank[node] = min(ranks) if ranks else max([0, *(int(rank[j]) for j in model.inputs[node])])
    return order[np.lexsort((np.arange(len(order)), in_kernel, rank[order]))]
