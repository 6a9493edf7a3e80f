"""A budget's check on probes of Inductor's schedule (rematpass.schedule_probe): the probe reads
the figure a whole compile would, and a budget then costs one compile."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from helpers import count_partitions, kept_attempt

import rematpass
import rematpass.inductor_hooks as hooks
from rematpass.inspect.cli import show
from rematpass.scheduled_peak import step_peak

pytestmark = pytest.mark.inductor


def _gelu_mlp():
    torch.manual_seed(0)
    blocks = []
    for _ in range(3):
        blocks += [torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.LayerNorm(256), torch.nn.Linear(256, 64)]
    return torch.nn.Sequential(*blocks), torch.randn(128, 64)


def _conv_stem():
    """Whisper's encoder stem: its backward writes gradients over saved (donated) activations."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv1d(16, 32, 3, padding=1), torch.nn.GELU()]
    layers += [torch.nn.Conv1d(32, 32, 3, stride=2, padding=1), torch.nn.GELU()]
    return torch.nn.Sequential(*layers), torch.randn(4, 16, 200)


@pytest.mark.parametrize("build", [_gelu_mlp, _conv_stem], ids=["gelu_mlp", "conv_stem"])
def test_codegen_effects_are_predicted_before_codegen(monkeypatch, build):
    """What codegen removes and writes in place, predicted from the scheduler alone, gives the
    peak read after codegen: fused GELU/LayerNorm chains and in-place pointwise writes (the MLP),
    gradients written over donated saved activations (the conv stem)."""
    figures, donated = [], []
    read_after_codegen = hooks.schedule_memory

    def both(graph, *, predict_codegen=False):
        after = read_after_codegen(graph)
        before = read_after_codegen(graph, predict_codegen=True)
        with monkeypatch.context() as patch:
            patch.setattr(hooks, "predicted_codegen_effects", lambda graph: (set(), {}))
            bare = read_after_codegen(graph, predict_codegen=True)
        figures.append((after, before, bare))
        _, reuses = hooks.predicted_codegen_effects(graph)
        donated.extend(source for source in reuses.values() if source in graph.graph_inputs)
        return after

    monkeypatch.setattr(hooks, "schedule_memory", both)
    model, x = build()
    # The least-peak plan, compiled once and unchecked: deep recomputation, where the buffers codegen
    # removes and the in-place writes set the step's peak (the default plan's no longer do, since
    # the peak model follows Inductor's kernels and picks another plan).
    options = {"memory_budget": 0.0, "verify_peak": False}
    torch.compile(model, backend="remat", options=options)(x).sum().backward()
    (forward, backward) = figures
    after = step_peak(forward[0], backward[0])
    assert step_peak(forward[1], backward[1]) == after
    if build is _gelu_mlp:  # the prediction is doing work: without it the figure is off
        assert step_peak(forward[2], backward[2]) != after
    else:
        assert donated, "the backward wrote over no saved activation"


@pytest.fixture(scope="module")
def gelu_mlp_scheduled_peaks() -> tuple[int, int]:
    """The scheduled peaks of the MLP's default and least-peak (0.0) plans."""
    peaks = []
    for fraction in (None, 0.0):
        model, x = _gelu_mlp()
        torch._dynamo.reset()
        options = {} if fraction is None else {"memory_budget": fraction}
        torch.compile(model, backend="remat", options=options)(x).sum().backward()
        peaks.append(rematpass.recent_reports()[-1].scheduled_peak_bytes)
    torch._dynamo.reset()
    return peaks[0], peaks[1]


@pytest.mark.parametrize("budget", [0.0, 0.5, "cap", "default_peak"])
def test_a_budget_compiles_once_and_its_probe_reads_what_the_compile_schedules(monkeypatch, tmp_path, budget, request):
    if budget in ("cap", "default_peak"):  # halfway between the least-peak and default plans', or the default's
        default, least = request.getfixturevalue("gelu_mlp_scheduled_peaks")
        budget = (default + least) // 2 if budget == "cap" else default
    partitions = count_partitions(monkeypatch)
    model, x = _gelu_mlp()
    torch._dynamo.reset()
    rematpass.clear_reports()
    options = {"memory_budget": budget, "strict": True, "dump_dir": str(tmp_path)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(model, backend="remat", options=options)(x).sum().backward()
    assert not [w for w in caught if issubclass(w.category, rematpass.RematBudgetWarning)]
    (report,) = rematpass.recent_reports()
    assert partitions == [None] and report.compiles == 1
    assert report.schedule_probes >= 1 and report.verification
    kept = kept_attempt(report)
    assert kept.scheduled_peak_bytes == report.scheduled_peak_bytes, "the probe and the compile disagree"
    if isinstance(budget, int):
        assert report.scheduled_peak_bytes <= budget
    # the dump says what the check cost
    (folder,) = [p.parent for p in tmp_path.glob("*/scheduled.json")]
    scheduled = json.loads((folder / "scheduled.json").read_text())
    assert (scheduled["compiles"], scheduled["schedule_probes"]) == (1, report.schedule_probes)
    assert ">compiles<" in (folder / "report.html").read_text()
    if len(report.verification) > 1:
        shown = io.StringIO()
        show(str(folder), out=shown)
        assert f"{report.schedule_probes} probed without compiling, 1 compiled" in shown.getvalue()


def test_a_schedule_that_cannot_be_probed_is_checked_by_compiling(monkeypatch, tmp_path):
    """The probe failing never fails the compile: the budget is checked the old way."""
    # a private report store: an aim another test's check kept for this graph would be reused
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    import rematpass.schedule_probe as schedule_probe

    monkeypatch.setattr(schedule_probe, "_schedule_read", _raise)
    model, x = _gelu_mlp()
    torch._dynamo.reset()
    rematpass.clear_reports()
    torch.compile(model, backend="remat", options={"memory_budget": 0.0, "strict": True})(x).sum().backward()
    (report,) = rematpass.recent_reports()
    # checked on compiles: the schedule read after codegen, no probe (one compile when the plan's
    # schedule is within 5% of its prediction, as it is since the planner models the GELU's buffer)
    assert report.schedule_probes == 0 and report.compiles == len(report.verification) >= 1
    assert report.scheduled_peak_bytes is not None


def _raise(*args, **kwargs):
    raise RuntimeError("no schedule here")


@pytest.mark.parametrize("budget", [0.0, 0.5])
def test_the_probe_knows_which_saved_tensors_the_backward_may_write_over(monkeypatch, budget):
    """AOTAutograd decides which saved tensors it donates to the backward only after the
    partitioner returns; the probe must lower the backward with the same donations, or it misses
    the gradients Inductor writes over them (whisper @0.0: 10.78 MB probed, 11.30 MB compiled)."""
    import torch._inductor.graph as lowering

    import rematpass.schedule_probe as schedule_probe

    seen = []
    schedule_read = schedule_probe._schedule_read

    def noting_donations(module, inputs, *, backward):
        if backward:
            seen.append(lowering.get_donated_idxs())
        return schedule_read(module, inputs, backward=backward)

    monkeypatch.setattr(schedule_probe, "_schedule_read", noting_donations)
    model, x = _conv_stem()
    torch._dynamo.reset()
    rematpass.clear_reports()
    torch.compile(model, backend="remat", options={"memory_budget": budget, "strict": True})(x).sum().backward()
    (report,) = rematpass.recent_reports()
    assert report.compiles == 1 and report.verification
    assert report.scheduled_peak_bytes in {a.scheduled_peak_bytes for a in report.verification}
    assert seen and all(seen), f"a probe lowered the backward without its donated saved tensors: {seen}"


def _conv_bn_net():
    torch.manual_seed(0)
    layers = []
    for cin, cout in ((3, 16), (16, 16), (16, 32)):
        layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers), torch.randn(8, 3, 24, 24)


def test_the_probe_lowers_the_backward_with_the_strides_the_forward_saved(monkeypatch):
    """Inductor's layout optimization may save a convolution's activations channels-last, and
    AOTAutograd restrides the backward's inputs to match before compiling it; lowered with the
    traced strides, the probe's backward converted them back (here 3,117,632 bytes probed against
    2,739,776 compiled; ResNet-50 @0.5: 1012 MB against 872 MB, so the check kept a shallower plan)."""
    import rematpass.schedule_probe as schedule_probe

    restrided, forward_strides = [], []
    schedule_read = schedule_probe._schedule_read

    def noting_strides(module, inputs, *, backward):
        if backward:
            traced = [n.meta["val"] for n in module.graph.find_nodes(op="placeholder")]
            restrided.append(sum(a.stride() != b.stride() for a, b in zip(inputs, traced) if hasattr(a, "stride")))
        else:
            forward_strides.append([tuple(a.stride()) for a in inputs if hasattr(a, "stride")])
        return schedule_read(module, inputs, backward=backward)

    monkeypatch.setattr(schedule_probe, "_schedule_read", noting_strides)
    model, x = _conv_bn_net()
    torch._dynamo.reset()
    rematpass.clear_reports()
    with torch._inductor.config.patch(force_layout_optimization=True):
        torch.compile(model, backend="remat", options={"memory_budget": 0.0, "strict": True})(x).sum().backward()
    (report,) = rematpass.recent_reports()
    assert report.compiles == 1 and report.verification
    assert restrided and all(restrided), f"no saved tensor restrided for a probe's backward: {restrided}"
    # a probe's restriding stays in the probe: every probe lowers the forward from the traced inputs
    # (the joint graph shares its placeholders' meta with the extracted modules)
    assert len(forward_strides) > 1 and all(s == forward_strides[0] for s in forward_strides), forward_strides
    kept = kept_attempt(report)
    assert kept.scheduled_peak_bytes == report.scheduled_peak_bytes, "the probe and the compile disagree"
