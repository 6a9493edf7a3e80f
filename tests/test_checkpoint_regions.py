"""What works with torch.compile's default partitioner works with ours: torch.utils.checkpoint
regions and their selective policies, dropout inside them under ``fallback_random``, backward hooks
under compiled autograd. Our own tests of the behaviours PyTorch's activation-checkpointing tests
check, on the CPU."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import _eager_compiler, assert_close_grads, cheap_backend
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import rematpass

MM = torch.ops.aten.mm.default


class _Graphs:
    """A compiler that keeps the graphs it is given (forward first, then backward), then runs them eagerly."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return _eager_compiler(gm, example_inputs)

    def count(self, op) -> list[int]:
        return [sum(1 for n in g.graph.nodes if n.target is op) for g in self.graphs]


def _policy(op, policy):
    def decide(ctx, func, *args, **kwargs):
        return policy if func is op else CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, decide)


def _two_matmuls(x, y):
    return torch.sigmoid(torch.matmul(torch.matmul(x, y), y)) * y


def _grads(fn, *args):
    """(loss, gradients by argument position), as helpers.assert_close_grads compares them."""
    args = [a.detach().clone().requires_grad_() for a in args]
    torch.manual_seed(0)
    loss = fn(*args).sum()
    loss.backward()
    return loss.detach(), {str(i): a.grad for i, a in enumerate(args)}


@pytest.mark.parametrize(
    ("policy", "backward_mms"),
    [(CheckpointPolicy.MUST_SAVE, 4), (CheckpointPolicy.MUST_RECOMPUTE, 6)],
    ids=["must_save", "must_recompute"],
)
def test_selective_checkpoint_policies_decide_matmul_recomputation(policy, backward_mms):
    """Two matmuls in a region: saved, the backward runs only their 2 x 2 gradient matmuls;
    recomputed, it runs both again too."""

    def fn(x, y):
        return checkpoint(_two_matmuls, x, y, use_reentrant=False, context_fn=_policy(MM, policy))

    x, y = torch.randn(4, 4), torch.randn(4, 4)
    graphs = _Graphs()
    compiled = torch.compile(fn, backend=cheap_backend(compiler=graphs), fullgraph=True)
    assert_close_grads(_grads(fn, x, y), _grads(compiled, x, y))
    assert graphs.count(MM) == [2, backward_mms]
    assert rematpass.recent_reports(), "planned by PyTorch's partitioner, not ours"


def test_a_checkpoint_region_is_recomputed_and_the_rest_is_planned():
    """Only the region's ops are forced into the backward: the matmul outside it is still ours to decide."""

    def fn(x, w):
        inside = checkpoint(lambda a: torch.sin(a @ w).cos(), x, use_reentrant=False)
        return (inside @ w).relu().sum()

    x, w = torch.randn(8, 8), torch.randn(8, 8)
    compiled = torch.compile(fn, backend=cheap_backend(), fullgraph=True)
    assert_close_grads(_grads(fn, x, w), _grads(compiled, x, w))
    report = rematpass.recent_reports()[-1]
    policy = [n for n in report.nodes if n.reason_kind == "checkpoint_policy"]
    assert {n.op for n in policy} >= {"aten.mm", "aten.sin"}, [(n.op, n.reason) for n in report.nodes]
    assert not [n for n in report.nodes if n.decision == "recomputed" and n.op == "aten.relu"]


class _DropoutBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.outer = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def block(self, x):
        return torch.nn.functional.dropout(self.inner(x).relu(), 0.5, training=True)

    def forward(self, x):
        return self.outer(checkpoint(self.block, x, use_reentrant=False)).sum()


def _param_grads(model, x):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    loss = model(x)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


def test_dropout_in_a_checkpoint_under_fallback_random_is_planned_by_rematpass():
    """fallback_random keeps aten's native_dropout, which a region asks to recompute: recomputed
    with the RNG state the forward saved (the same mask), not refused as an infeasible cut."""
    torch.manual_seed(1)
    model, x = _DropoutBlock(), torch.randn(8, 16)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(copy.deepcopy(model), backend=cheap_backend(strict=True), fullgraph=True)
        got = _param_grads(compiled, x)
    assert_close_grads(_param_grads(copy.deepcopy(model), x), got)
    (dropout,) = [n for n in rematpass.recent_reports()[-1].nodes if n.op == "aten.native_dropout"]
    assert dropout.decision == "recomputed" and dropout.reason_kind == "replayed_random", dropout


@pytest.mark.inductor
def test_dropout_in_a_checkpoint_under_fallback_random_through_inductor_equals_eager():
    torch.manual_seed(1)
    model, x = _DropoutBlock(), torch.randn(8, 16)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(copy.deepcopy(model), backend="remat", options={"strict": True})
        first, second = _param_grads(compiled, x), _param_grads(compiled, x)
    expected = _param_grads(copy.deepcopy(model), x)
    assert_close_grads(expected, first)
    assert_close_grads(expected, second)  # the replay holds on every step, not only the first


class _HookedSquare(torch.nn.Module):
    def forward(self, x):
        y = torch.matmul(x, x)
        return y * y


class _HookedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.square, self.norm = _HookedSquare(), torch.nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(checkpoint(self.square, x, use_reentrant=False))


@pytest.mark.inductor
def test_a_backward_hook_registered_in_the_forward_compiles_under_compiled_autograd():
    """The hooked tensor travels in a BackwardState: AOTAutograd cannot lower that backward with
    the forward, so the backend compiles it lazily and says the schedule was not read."""
    from torch._dynamo import compiled_autograd

    def hook_output(module, args, output):
        output.register_hook(lambda grad: grad * 2)
        return output

    model = _HookedModel()
    model.square.register_forward_hook(hook_output)
    x = torch.randn(4, 4, requires_grad=True)
    model(x).sum().backward()
    expected, x.grad = x.grad.clone(), None
    compiled = torch.compile(model, backend="remat", fullgraph=True, options={"strict": True})
    with compiled_autograd._enable(torch.compile(backend="eager")):
        compiled(x).sum().backward()
    torch.testing.assert_close(x.grad, expected)
    (report,) = rematpass.recent_reports()
    assert report.scheduled_peak_bytes is None and "backward hooks" in report.schedule_note
    assert "mul" in [n.name for n in report.saved_nodes()], "the hooked tensor must be saved for its hook"
