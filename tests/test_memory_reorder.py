"""passes.memory_reorder against the Inductor code it ports: on random kernel graphs, the three sorts
give Inductor's orders and the estimate Inductor's peaks (torch._inductor.memory, run on stand-ins
for its scheduler nodes); and on a plan whose kernels Inductor reorders, the peak model follows it."""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import pytest
import torch

from rematpass.passes import memory_reorder as mr

inductor_memory = pytest.importorskip("torch._inductor.memory")
OrderedSet = pytest.importorskip("torch.utils._ordered_set").OrderedSet


def random_graph(seed: int, kernels: int = 40) -> mr.KernelGraph:
    """Kernels writing one or two buffers, and library calls whose outputs are allocated by the call
    and freed through a node per output."""
    rng = random.Random(seed)
    freed, allocated, producers, outputs, reads = [], [], [], [], []

    def add(kernel: int, freed_bytes: int, allocated_bytes: int) -> int:
        freed.append(freed_bytes)
        allocated.append(allocated_bytes)
        producers.append(kernel)
        return len(freed) - 1

    for _ in range(rng.randint(0, 4)):  # inputs freed after their last reader
        size = rng.choice([64, 256, 1024, 4096])
        add(mr.INPUT, size, size)
    while len(outputs) < kernels:
        k = len(outputs)
        earlier = [b for b in range(len(freed)) if producers[b] != k]
        reads.append(sorted(set(rng.sample(earlier, min(len(earlier), rng.randint(0, 3))))))
        if rng.random() < 0.15:  # a library call and its outputs
            pieces = [rng.choice([64, 1024, 16384]) for _ in range(rng.choice([2, 3]))]
            outputs.append([add(k, 0, sum(pieces))])
            for size in pieces:
                outputs.append([add(len(outputs), size, 0)])
                reads.append([outputs[k][0]])
            continue
        sizes = [rng.choice([0, 64, 256, 1024, 4096, 16384]) for _ in range(rng.choice([1, 1, 1, 2]))]
        outputs.append([add(k, size, size) for size in sizes])
    unread = [b for b in range(len(freed)) if producers[b] == mr.INPUT and not any(b in bufs for bufs in reads)]
    reads[0] = sorted(reads[0] + unread)  # an input exists from its first reader on
    kept = np.array([rng.random() < 0.1 and freed[b] > 0 for b in range(len(freed))])
    as_array = functools.partial(np.array, dtype=np.int64)
    return mr.KernelGraph(outputs, reads, as_array(freed), as_array(producers), kept, as_array(allocated))


@dataclasses.dataclass(frozen=True)
class _Dep:
    name: str


class _Node:
    """What torch._inductor.memory reads of a scheduler node."""

    def __init__(self, index: int):
        self.index = index
        self.outputs: list = []
        self.unmet_dependencies: OrderedSet = OrderedSet()

    def get_outputs(self):
        return self.outputs

    def get_buffer_names(self):
        return OrderedSet(b.get_name() for b in self.outputs)


@dataclasses.dataclass(eq=False)
class _Buffer:
    name: str
    mpi_buffer: object

    def get_name(self) -> str:
        return self.name


def as_scheduler_nodes(graph: mr.KernelGraph):
    """Stand-ins for the scheduler's nodes and buffers, with the planning info Inductor assigns."""
    nodes = [_Node(k) for k in range(len(graph.outputs))]
    buffers, freeable = [], {}
    for b, (freed, allocated) in enumerate(zip(graph.freed.tolist(), graph.allocated.tolist())):
        readers = OrderedSet(nodes[k] for k in range(len(nodes)) if b in graph.reads[k])
        info = inductor_memory.MemoryPlanningInfoForBuffer(allocated, freed, readers, OrderedSet(readers))
        if graph.producer[b] == mr.INPUT:
            buffers.append(inductor_memory.FreeableInputBuffer(f"in{b}", info))
            freeable[f"in{b}"] = buffers[-1]
        else:
            buffers.append(_Buffer(f"buf{b}", info))
            nodes[graph.producer[b]].outputs.append(buffers[-1])
    preds = graph.predecessors
    for k, node in enumerate(nodes):
        for b in graph.reads[k]:
            if graph.producer[b] != mr.INPUT:
                node.unmet_dependencies.add(_Dep(f"buf{b}"))
        node.mpi_node = inductor_memory.MemoryPlanningInfoForNode(
            index=k,
            size=sum(int(graph.allocated[b]) for b in graph.outputs[k]),
            pred_buffers=OrderedSet(buffers[b] for b in graph.reads[k]),
            pred_nodes=OrderedSet(nodes[p] for p in sorted(preds[k])),
            succ_nodes=OrderedSet(nodes[s] for s in range(len(nodes)) if k in preds[s]),
        )
    name_to_buf = {b.get_name(): b for b in buffers if isinstance(b, _Buffer)}
    outputs = OrderedSet(buffers[b].get_name() for b in np.flatnonzero(graph.kept).tolist())
    return nodes, name_to_buf, freeable, outputs


@pytest.mark.parametrize("seed", range(12))
def test_the_sorts_and_the_estimate_are_inductors(seed):
    graph = random_graph(seed)
    nodes, name_to_buf, freeable, outputs = as_scheduler_nodes(graph)
    theirs = {
        mr.least_peak_first: inductor_memory.topological_sort_lpmf(nodes, freeable, name_to_buf, outputs),
        mr.breadth_first: inductor_memory.topological_sort_bfs(nodes),
        mr.depth_first: inductor_memory.topological_sort_dfs(nodes),
    }
    for sort, order in theirs.items():
        assert sort(graph) == [node.index for node in order], sort.__name__
        peak, _ = inductor_memory.estimate_peak_memory(order, freeable, outputs)
        assert mr.estimated_peak(graph, [node.index for node in order]) == peak, sort.__name__
    estimates = [mr.estimated_peak(graph, list(range(len(nodes))))] + [
        mr.estimated_peak(graph, sort(graph)) for sort in mr.SORTS
    ]
    assert mr.estimated_peak(graph, mr.best_order(graph)) == min(estimates)


def test_a_tie_keeps_the_given_order():
    # Two independent kernels, both returned: every order peaks at 24 bytes, and the depth-first
    # sort runs the smaller one first.
    sizes = np.array([16, 8])
    graph = mr.KernelGraph([[0], [1]], [[], []], sizes, np.array([0, 1]), np.array([True, True]), sizes)
    assert mr.depth_first(graph) == [1, 0]
    assert mr.best_order(graph) == [0, 1]


class _FusedQKV(torch.nn.Module):
    """Attention whose query, key and value are three pieces of one matmul (GPT-2's ``c_attn``)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).square().mean()


def _whole_step_kernels(module: torch.nn.Module, *inputs: torch.Tensor):
    """The peak model of ``module``'s joint graph and the kernel graph of all of it as one phase."""
    from helpers import analysed, capture_joint_graph

    from rematpass.partitioner import peak_predictor

    a = analysed(capture_joint_graph(module, inputs))
    model = peak_predictor(a.gm, a.summary, a.roles, a.kwargs["num_fwd_outputs"], "fused")._joint[0]
    body = model.is_call.copy()
    outputs = np.zeros(len(model.nodes), dtype=bool)
    outputs[model.real_outputs] = True
    roots = model._roots(body, np.zeros(len(model.nodes), dtype=bool))
    order = np.flatnonzero(body)
    mat, _ = model._materialized(body, outputs, order)
    graph, kernel_of = mr.kernel_graph(model, order, roots, mat, {}, {}, roots[model.real_outputs])
    return model, order, graph, kernel_of


def test_a_kernel_reading_pieces_of_a_split_reads_the_split_buffer():
    """The pieces of a split are views of one buffer: the attention reads the matmul's buffer, so
    no sort may run the matmul after it (a full-size GPT-2's depth-first sort did, and the forward
    read 16% high)."""
    model, order, graph, kernel_of = _whole_step_kernels(_FusedQKV(), torch.randn(2, 4, 32, 64))
    (matmul,) = [i for i in order if model.nodes[i].target is torch.ops.aten.addmm.default]
    attention = [i for i in order if "scaled_dot_product" in str(model.nodes[i].target)][0]
    assert kernel_of[matmul] in graph.predecessors[kernel_of[attention]]


def test_a_library_call_allocates_its_outputs_and_each_output_frees_its_own():
    """As Inductor plans a fallback's tuple (``MultiOutputLayout``): the attention's backward
    allocates the three gradients in its kernel, and each gradient is a kernel of its own that
    allocates nothing, reads the call and frees its tensor; its readers wait for that kernel."""
    model, order, graph, kernel_of = _whole_step_kernels(_FusedQKV(), torch.randn(2, 4, 32, 64))
    (call,) = [i for i in order if str(model.nodes[i].target).endswith("flash_attention_for_cpu_backward.default")]
    assert model.multi_output[call]
    (layout,) = graph.outputs[kernel_of[call]]
    pieces = [u for u in model.users[call] if u in set(order.tolist())]
    assert len(pieces) == 3 and len({int(kernel_of[u]) for u in pieces} | {int(kernel_of[call])}) == 4
    assert graph.freed[layout] == 0
    assert graph.allocated[layout] == sum(int(model.nbytes[u]) for u in pieces) > 0
    for u in pieces:
        (buffer,) = graph.outputs[kernel_of[u]]
        assert (graph.allocated[buffer], graph.freed[buffer]) == (0, model.nbytes[u])
        assert graph.reads[kernel_of[u]] == [layout]
        assert all(kernel_of[u] in graph.predecessors[r] for r in graph.readers[buffer])
    assert not model.multi_output[[i for i in order if model.nodes[i].target is torch.ops.aten.addmm.default]].any()
