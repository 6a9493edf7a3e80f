"""The one-pass module extraction builds exactly the modules PyTorch's ``_extract_fwd_bwd_modules`` builds.

The one-pass path runs on the releases in ``torch_extract.ONE_PASS_RELEASES`` (2.13, 2.14 and 2.15);
the tests that pin it say so, and on any other release check that PyTorch's extraction runs instead.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from helpers import analysed, capture_joint_graph

from rematpass.passes import torch_extract
from rematpass.passes import torch_internals as ti
from rematpass.passes.analysis import FORWARD
from rematpass.passes.fastest import fastest_plan
from rematpass.passes.hull import LOWEST_LAMBDA_FRACTION
from rematpass.zoo import ConvBN, ResidualMLP, TinyGPT

ONE_PASS_HERE = torch_extract.one_pass_supported_here()


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
    """Saved sets that exercise the extraction: the fastest plan, the least-memory plan (the min cut
    where recompute time is nearly free), and every forward value (most of which the backward never reads, so they must be dropped)."""
    problem = table.problem(summary)
    plans = [fastest_plan(problem, table.default_lambda * f) for f in (1, LOWEST_LAMBDA_FRACTION)]
    for plan in plans:
        yield [n for n, keep in zip(summary.nodes, plan.saved) if keep]
    yield [
        n
        for n, keep, kind, view in zip(summary.nodes, plans[0].saved, summary.kind, summary.is_view)
        if keep or kind == FORWARD and not view
    ]


def _describe(gm: torch.fx.GraphModule):
    """Everything of a module that its compilation or a dump reads, beyond the code."""
    out = next(iter(reversed(gm.graph.nodes)))
    return (
        str(gm.graph),
        [repr(d) for d in out.meta.get("desc", [])],
        out.meta.get("output_stack_traces"),
        [n.meta.get("autograd_backward", False) for n in gm.graph.nodes],
        [n.meta.get("stack_trace") for n in gm.graph.nodes],  # the dumps' source lines
        [n.meta.get("is_static_input") for n in gm.graph.find_nodes(op="placeholder")],  # torch 2.15's stamp
    )


def _extracted(extract, joint: torch.fx.GraphModule):
    """The two modules ``extract`` builds and their descriptions, taken before the other extraction
    runs: placeholders share the joint primals' meta, so a later stamp would show on both."""
    for node in joint.graph.find_nodes(op="placeholder"):
        node.meta.pop("is_static_input", None)
    modules = extract()
    return modules, [_describe(m) for m in modules]


@pytest.mark.parametrize("name", ["mlp", "convbn", "gpt-dropout", "mlp-dynamic"])
def test_one_pass_modules_equal_pytorchs(joint_graphs, name):
    """On torch 2.13, 2.14 and 2.15 (``ONE_PASS_RELEASES``); elsewhere the one-pass path must refuse."""
    from torch._inductor.virtualized import V

    a = analysed(joint_graphs[name])
    gm, kwargs, roles = a.gm, a.kwargs, a.roles
    if not ONE_PASS_HERE:
        with pytest.raises(ti.NeedsTorchExtraction, match="not among the releases checked"):
            torch_extract.one_pass_modules(gm, [], [], [], kwargs["num_fwd_outputs"], roles.static_inputs)
        return
    compared = dropped = 0
    with V.set_fake_mode(a.fake):
        for saved in _saved_sets(a.summary, a.table):
            sym = [n for n in saved if ti.is_sym_node(n) and not ti.is_assert_only_symbool(n)]
            tensors = [n for n in saved if not ti.is_sym_node(n)]
            args = (gm, list(tensors), list(sym), [])
            ours, mine = _extracted(
                lambda: torch_extract.one_pass_modules(*args, kwargs["num_fwd_outputs"], roles.static_inputs), gm
            )
            theirs, reference = _extracted(
                lambda: torch_extract.torch_modules(*args, roles, kwargs["num_fwd_outputs"]), gm
            )
            assert mine == reference
            assert [m.code for m in ours] == [m.code for m in theirs]
            compared += 1
            fw_outputs = list(ours[0].graph.nodes)[-1].args[0]
            dropped += len(tensors) + len(sym) > len(fw_outputs) - kwargs["num_fwd_outputs"]
    assert compared == 3 and dropped, "no saved value was dropped: the trial-backward rule went untested"


def test_dynamic_graph_saves_symbol_bindings(joint_graphs):
    """With dynamic shapes the backward needs the batch size: the forward returns its binding.
    Checked on the extraction that runs here: the one-pass path on ``ONE_PASS_RELEASES``, PyTorch's elsewhere."""
    from torch._inductor.virtualized import V

    a = analysed(joint_graphs["mlp-dynamic"])
    extract = torch_extract.one_pass_modules if ONE_PASS_HERE else torch_extract.torch_modules
    with V.set_fake_mode(a.fake):
        plan = fastest_plan(a.table.problem(a.summary), a.table.default_lambda)
        saved = [n for n, keep in zip(a.summary.nodes, plan.saved) if keep]
        tensors = [n for n in saved if not ti.is_sym_node(n)]
        sym = [n for n in saved if ti.is_sym_node(n)]
        if ONE_PASS_HERE:
            forward, backward = extract(a.gm, tensors, sym, [], a.kwargs["num_fwd_outputs"], a.roles.static_inputs)
        else:
            forward, backward = extract(a.gm, tensors, sym, [], a.roles, a.kwargs["num_fwd_outputs"])
    outputs = list(forward.graph.nodes)[-1].args[0]
    assert any(ti.is_sym_node(o) for o in outputs), "no symint saved although shapes are symbolic"
    inputs = [n for n in backward.graph.nodes if n.op == "placeholder"]
    assert ti.is_sym_node(inputs[0]), "bindings come first in the backward's inputs"


def test_partitioner_takes_the_one_pass_path(joint_graphs, monkeypatch):
    """On torch 2.13, 2.14 and 2.15 (``ONE_PASS_RELEASES``) the real partition never falls back to
    PyTorch's extraction on these graphs; on any other release it always does."""
    from torch._inductor.virtualized import V

    import rematpass

    used_torchs = []
    torch_modules = torch_extract.torch_modules

    def record(*args, **kwargs):
        used_torchs.append(True)
        return torch_modules(*args, **kwargs)

    monkeypatch.setattr(torch_extract, "torch_modules", record)
    for captured in joint_graphs.values():
        partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True}))
        with V.set_fake_mode(captured["fake"]):
            partitioner(copy.deepcopy(captured["joint"]), [], compiler="inductor", **captured["kwargs"])
    if ONE_PASS_HERE:
        assert not used_torchs, f"PyTorch's extraction was used on torch {torch.__version__}"
    else:
        assert len(used_torchs) == len(joint_graphs), f"the one-pass path ran on unchecked torch {torch.__version__}"


def test_partition_logs_no_opaque_deprecation(joint_graphs):
    """torch >= 2.14 logs "is_opaque_type is deprecated" (a logging record, not a Python warning)
    on each call of its old opaque-object names; partitioning must call none of them, on any release."""
    from torch._inductor.virtualized import V

    import rematpass

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger("torch._library.opaque_object")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*opaque.* deprecated")  # should a release make it a warning
            for captured in joint_graphs.values():
                partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True}))
                with V.set_fake_mode(captured["fake"]):
                    partitioner(copy.deepcopy(captured["joint"]), [], compiler="inductor", **captured["kwargs"])
            assert ti.is_opaque_type(torch.Tensor) is False
    finally:
        logger.removeHandler(collect)
    assert not [m for m in collect.messages if "deprecated" in m]


@pytest.mark.parametrize(
    "version, release",
    [("2.15.0+cu132", (2, 15)), ("2.9.1", (2, 9)), ("2.16.0.dev20260101+cpu", (2, 16)), ("2.13.0+cpu", (2, 13))],
)
def test_torch_release_parses_versions(version, release):
    """Versions compare as numbers: 2.9 < 2.15, and a 2.16 nightly is 2.16, not one of the checked releases."""
    assert ti.torch_release(version) == release
    assert (release in torch_extract.ONE_PASS_RELEASES) == (release in {(2, 13), (2, 14), (2, 15)})


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
