"""The one-pass module extraction builds exactly the modules PyTorch's ``_extract_fwd_bwd_modules`` builds."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import analysed, capture_joint_graph

from rematpass.passes import torch_extract
from rematpass.passes import torch_internals as ti
from rematpass.passes.analysis import FORWARD
from rematpass.passes.budget import plan_for_budget
from rematpass.zoo import ConvBN, ResidualMLP, TinyGPT


@pytest.fixture(scope="module")
def joint_graphs():
    torch.manual_seed(0)
    gpt = TinyGPT(layers=2, dropout=0.1)
    dynamic = ResidualMLP(depth=2)
    return {
        "mlp": capture_joint_graph(ResidualMLP(depth=3), (ResidualMLP.example(),)),
        "convbn": capture_joint_graph(ConvBN(), (ConvBN.example(),)),  # running-stat copy_ in the forward
        "gpt-dropout": capture_joint_graph(gpt, (gpt.example(),)),  # RNG seeds, views, getitems
        "mlp-dynamic": capture_joint_graph(dynamic, (ResidualMLP.example(),), dynamic=True),  # saved symints
    }


def _saved_sets(summary, table):
    """Saved sets that exercise the extraction: the default plan, the least-memory plan,
    and every forward value (most of which the backward never reads, so they must be dropped)."""
    problem = table.problem(summary)
    plans = [plan_for_budget(problem, table.default_lambda, b) for b in (None, lambda least, default: least)]
    for plan in plans:
        yield [n for n, keep in zip(summary.nodes, plan.saved) if keep]
    yield [
        n
        for n, keep, kind, view in zip(summary.nodes, plans[0].saved, summary.kind, summary.is_view)
        if keep or kind == FORWARD and not view
    ]


def _describe(gm: torch.fx.GraphModule):
    out = next(iter(reversed(gm.graph.nodes)))
    return (
        str(gm.graph),
        [repr(d) for d in out.meta.get("desc", [])],
        [n.meta.get("autograd_backward", False) for n in gm.graph.nodes],
    )


@pytest.mark.parametrize("name", ["mlp", "convbn", "gpt-dropout", "mlp-dynamic"])
def test_one_pass_modules_equal_pytorchs(joint_graphs, name):
    from torch._inductor.virtualized import V

    a = analysed(joint_graphs[name])
    gm, kwargs, roles = a.gm, a.kwargs, a.roles
    compared = dropped = 0
    with V.set_fake_mode(a.fake):
        for saved in _saved_sets(a.summary, a.table):
            sym = [n for n in saved if ti.is_sym_node(n) and not ti.is_assert_only_symbool(n)]
            tensors = [n for n in saved if not ti.is_sym_node(n)]
            ours = torch_extract.one_pass_modules(gm, list(tensors), list(sym), [], kwargs["num_fwd_outputs"])
            theirs = torch_extract.torch_modules(gm, list(tensors), list(sym), [], roles, kwargs["num_fwd_outputs"])
            for mine, reference in zip(ours, theirs):
                assert _describe(mine) == _describe(reference)
                assert mine.code == reference.code
            compared += 1
            fw_outputs = list(ours[0].graph.nodes)[-1].args[0]
            dropped += len(tensors) + len(sym) > len(fw_outputs) - kwargs["num_fwd_outputs"]
    assert compared == 3 and dropped, "no saved value was dropped: the trial-backward rule went untested"


def test_dynamic_graph_saves_symbol_bindings(joint_graphs):
    """With dynamic shapes the backward needs the batch size: the forward returns its binding."""
    from torch._inductor.virtualized import V

    a = analysed(joint_graphs["mlp-dynamic"])
    with V.set_fake_mode(a.fake):
        plan = plan_for_budget(a.table.problem(a.summary), a.table.default_lambda, None)
        saved = [n for n, keep in zip(a.summary.nodes, plan.saved) if keep]
        tensors = [n for n in saved if not ti.is_sym_node(n)]
        sym = [n for n in saved if ti.is_sym_node(n)]
        forward, backward = torch_extract.one_pass_modules(a.gm, tensors, sym, [], a.kwargs["num_fwd_outputs"])
    outputs = list(forward.graph.nodes)[-1].args[0]
    assert any(ti.is_sym_node(o) for o in outputs), "no symint saved although shapes are symbolic"
    inputs = [n for n in backward.graph.nodes if n.op == "placeholder"]
    assert ti.is_sym_node(inputs[0]), "bindings come first in the backward's inputs"


def test_partitioner_takes_the_one_pass_path(joint_graphs, monkeypatch):
    """The real partition never falls back to PyTorch's extraction on these graphs."""
    from torch._inductor.virtualized import V

    import rematpass

    def refuse(*args, **kwargs):
        raise AssertionError("PyTorch's extraction was used")

    monkeypatch.setattr(torch_extract, "torch_modules", refuse)
    for captured in joint_graphs.values():
        partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True}))
        with V.set_fake_mode(captured["fake"]):
            partitioner(copy.deepcopy(captured["joint"]), [], compiler="inductor", **captured["kwargs"])


@pytest.mark.parametrize("name", ["mlp", "convbn", "gpt-dropout", "mlp-dynamic"])
def test_classification_equals_pytorchs(joint_graphs, name):
    from torch._inductor.virtualized import V

    captured = joint_graphs[name]
    kwargs = captured["kwargs"]
    with V.set_fake_mode(captured["fake"]):
        gm = ti.prepare_joint_graph(copy.deepcopy(captured["joint"]))
        args = (gm, kwargs["static_lifetime_input_indices"], kwargs["num_fwd_outputs"])
        ours, theirs = ti.classify_joint_graph(*args), ti.torch_classify_nodes(*args)
    assert ours.inputs == theirs.inputs
    assert ours.required_fw == theirs.required_fw and ours.required_bw == theirs.required_bw
    assert ours.tangents_closure == theirs.tangents_closure
    assert list(ours.static_inputs) == list(theirs.static_inputs) and ours.static_inputs
