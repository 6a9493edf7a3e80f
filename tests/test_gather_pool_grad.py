"""passes.gather_pool_grad: a non-overlapping max-pool backward becomes a gather that fuses."""

import pytest
import torch
import torch._inductor.lowering  # noqa: F401  (Inductor's max-pool decomposition reads it)
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

from rematpass.measure import peak_memory
from rematpass.passes.gather_pool_grad import gather_max_pool_backward

aten = torch.ops.aten


def pool_and_grad(kernel, stride):
    def fn(x, grad_out):
        _, indices = aten.max_pool2d_with_indices(x, kernel, stride)
        return (aten.max_pool2d_with_indices_backward(grad_out, x, kernel, stride, [0, 0], [1, 1], False, indices),)

    return fn


def traced(fn, *args, mode="fake"):
    return make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode=mode)(*args)


def targets(gm):
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


def inputs(shape, kernel, stride, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(shape).relu()  # zeros give ties inside windows: the forward's choice must be kept
    pooled = [(s - k) // st + 1 for s, k, st in zip(shape[-2:], kernel, stride)]
    return x.to(dtype), torch.randn(*shape[:-2], *pooled).to(dtype)


@pytest.mark.parametrize("shape,kernel", [((4, 3, 8, 8), [2, 2]), ((2, 5, 9, 6), [3, 2])])
def test_non_overlapping_pool_gradient_is_a_gather_with_the_same_values(shape, kernel):
    fn = pool_and_grad(kernel, kernel)
    args = inputs(shape, kernel, kernel)
    gm = traced(fn, *args)
    assert aten.scatter_add.default in targets(gm)
    assert gather_max_pool_backward(gm.graph) == 1
    gm.graph.lint()
    gm.recompile()
    assert aten.scatter_add.default not in targets(gm)
    assert aten.where.self in targets(gm)
    torch.testing.assert_close(gm(*args)[0], fn(*args)[0], rtol=0, atol=0)


def test_channels_last_input_keeps_its_layout_and_values():
    fn = pool_and_grad([2, 2], [2, 2])
    x, grad_out = inputs((2, 4, 6, 6), [2, 2], [2, 2])
    args = (x.to(memory_format=torch.channels_last), grad_out.to(memory_format=torch.channels_last))
    gm = traced(fn, *args)
    assert gather_max_pool_backward(gm.graph) == 1
    gm.recompile()
    got, expected = gm(*args)[0], fn(*args)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.stride() == expected.stride()


@pytest.mark.parametrize(
    "shape,kernel,stride,dtype",
    [
        ((2, 3, 9, 9), [3, 3], [2, 2], torch.float32),  # overlapping windows: the scatter sums
        ((2, 3, 7, 8), [2, 2], [2, 2], torch.float32),  # the last row is in no window
        ((2, 3, 8, 8), [2, 2], [2, 2], torch.bfloat16),  # the decomposition accumulates in float32
    ],
)
def test_pools_the_gather_does_not_cover_are_left_alone(shape, kernel, stride, dtype):
    gm = traced(pool_and_grad(kernel, stride), *inputs(shape, kernel, stride, dtype))
    assert gather_max_pool_backward(gm.graph) == 0
    assert aten.scatter_add.default in targets(gm)


def test_symbolic_spatial_sizes_are_left_alone():
    args = inputs((2, 3, 8, 8), [2, 2], [2, 2])
    gm = traced(pool_and_grad([2, 2], [2, 2]), *args, mode="symbolic")
    assert gather_max_pool_backward(gm.graph) == 0


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x, labels):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return F.cross_entropy(self.head(self.conv2(h).mean(dim=(2, 3))), labels)


@pytest.mark.inductor
@pytest.mark.slow
def test_inductor_backward_peaks_lower_with_the_gather(monkeypatch):
    """Real Inductor: the scatter's zero tensor is a pool-input-sized buffer of the backward."""
    import rematpass.backend as backend

    torch.manual_seed(0)
    x, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    peaks, grads = {}, {}
    for gather in (True, False):
        if not gather:
            monkeypatch.setattr(backend.GatherMaxPoolBackward, "__call__", lambda self, graph: None)
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = PoolNet()
        step = torch.compile(model, backend="remat", options={"strict": True})
        step(x, labels).backward()
        grads[gather] = [p.grad.clone() for p in model.parameters()]
        peaks[gather] = peak_memory(lambda: step(x, labels).backward())
    for with_gather, without in zip(grads[True], grads[False]):
        torch.testing.assert_close(with_gather, without, rtol=1e-4, atol=1e-6)
    pool_input_bytes = 16 * 16 * 32 * 32 * 4
    assert peaks[True] <= peaks[False] - pool_input_bytes // 2, peaks


@pytest.mark.inductor
@pytest.mark.slow
def test_dynamic_batch_is_rewritten_and_matches_eager(monkeypatch):
    """Real Inductor with a symbolic batch (the spatial sizes stay static): the shape lists hold SymInts."""
    import copy

    import rematpass.passes.gather_pool_grad as gather_pool_grad

    rewrites = []
    original = gather_pool_grad.gather_max_pool_backward
    monkeypatch.setattr(gather_pool_grad, "gather_max_pool_backward", lambda graph: rewrites.append(original(graph)))
    torch.manual_seed(0)
    model = PoolNet()
    reference = copy.deepcopy(model)
    step = torch.compile(model, backend="remat", options={"strict": True})
    for batch in (8, 12):
        x, labels = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(labels, 0)
        model.zero_grad()
        reference.zero_grad()
        step(x, labels).backward()
        reference(x, labels).backward()
        for got, expected in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-5)
    assert rewrites == [1]
