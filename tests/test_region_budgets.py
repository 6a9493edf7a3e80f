"""``torch.autograd.graph.region_activation_memory_budget`` under ``backend="remat"``, on real
Inductor: PyTorch's meaning where PyTorch supports it, and several or partial regions where it
raises. Matmul chains, so that Inductor generates no C++ kernel and each compile takes seconds."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_close_grads, train_step
from torch.autograd.graph import region_activation_memory_budget as region

import rematpass
from rematpass.measure import saved_activation_bytes

pytestmark = pytest.mark.inductor

LAYERS, WIDTH, BATCH = 4, 64, 256


class Chain(torch.nn.Module):
    """Four bias-free linears; ``budgets[i]`` is layer i's region budget (None: outside every region)."""

    def __init__(self, budgets):
        super().__init__()
        self.budgets = tuple(budgets)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS))

    def forward(self, x):
        for layer, budget in zip(self.layers, self.budgets):
            if budget is None or not torch.compiler.is_compiling():  # eager, the reference, has no regions
                x = layer(x)
            else:
                with region(budget):
                    x = layer(x)
        whole = len(set(self.budgets)) == 1 and self.budgets[0] is not None and torch.compiler.is_compiling()
        if whole:  # one budget everywhere: the loss too, so the region covers the graph as PyTorch requires
            with region(self.budgets[0]):
                return (x * x).sum()
        return (x * x).sum()


def _compiled(budgets, backend="remat", **options):
    torch.manual_seed(0)
    model = Chain(budgets)
    torch._dynamo.reset()
    rematpass.clear_reports()
    options = {"strict": True, **options} if backend == "remat" else None
    return model, torch.compile(copy.deepcopy(model), backend=backend, options=options)


def _inputs():
    torch.manual_seed(1)
    return (torch.randn(BATCH, WIDTH),)


def _plan(budgets, **options):
    """Train one step (gradients checked against eager); the graph's report and saved bytes."""
    model, compiled = _compiled(budgets, **options)
    x = _inputs()
    assert_close_grads(train_step(model, x), train_step(compiled, x))
    (report,) = rematpass.recent_reports()
    saved = saved_activation_bytes(lambda: compiled(*x).backward(), compiled)
    return report, saved


def _saved_names_of_layers(report, layer_indices):
    return sorted(n.name for n in report.saved_nodes() if any(n.module_path == f"layers.{i}" for i in layer_indices))


def test_a_region_over_the_whole_graph_at_zero_saves_no_more_than_pytorch_and_less_than_none():
    unannotated, none_saved = _plan([None] * LAYERS)
    annotated, zero_saved = _plan([0.0] * LAYERS)
    assert zero_saved < none_saved, (zero_saved, none_saved)
    (fitted,) = annotated.region_budgets
    assert fitted.fraction == 0.0 and fitted.saved_bytes <= fitted.target_bytes
    assert any(n.reason_kind == "region_budget" for n in annotated.recomputed_nodes())
    _, inductor = _compiled([0.0] * LAYERS, backend="inductor")
    x = _inputs()
    pytorch_saved = saved_activation_bytes(lambda: inductor(*x).backward(), inductor)
    assert zero_saved <= pytorch_saved, (zero_saved, pytorch_saved)


def test_a_region_at_one_plans_as_no_region_does():
    plain, _ = _plan([None] * LAYERS)
    one, _ = _plan([1.0] * LAYERS)
    assert sorted(n.name for n in one.saved_nodes()) == sorted(n.name for n in plain.saved_nodes())


def test_two_regions_with_different_budgets_in_one_graph_each_get_their_own():
    """PyTorch raises 'conflicting budgets within a single joint graph'; each region is planned alone here."""
    plain, _ = _plan([None] * LAYERS)
    mixed, _ = _plan([0.0, 0.0, 1.0, 1.0])
    fractions = {r.fraction: r for r in mixed.region_budgets}
    assert set(fractions) == {0.0, 1.0}
    assert fractions[0.0].saved_bytes < fractions[0.0].default_bytes
    assert fractions[1.0].saved_bytes == fractions[1.0].default_bytes
    assert _saved_names_of_layers(mixed, (2, 3)) == _saved_names_of_layers(plain, (2, 3))


def test_a_partial_region_leaves_the_rest_to_the_graphs_budget():
    """PyTorch requires a region to cover every forward op; here the unannotated layers keep the default plan."""
    plain, plain_saved = _plan([None] * LAYERS)
    partial, partial_saved = _plan([0.0, 0.0, None, None])
    assert partial_saved < plain_saved
    assert _saved_names_of_layers(partial, (2, 3)) == _saved_names_of_layers(plain, (2, 3))


def test_the_memory_budget_knob_plans_only_outside_the_regions():
    """A region's own budget wins inside it: at memory_budget=0.0 a region at 1.0 keeps its default decisions."""
    plain, _ = _plan([None] * LAYERS)
    knob, _ = _plan([1.0, 1.0, None, None], memory_budget=0.0)
    everywhere, _ = _plan([None] * LAYERS, memory_budget=0.0)
    assert _saved_names_of_layers(knob, (0, 1)) == _saved_names_of_layers(plain, (0, 1))
    assert _saved_names_of_layers(knob, (2, 3)) == _saved_names_of_layers(everywhere, (2, 3))
