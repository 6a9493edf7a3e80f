"""What a user meets first: errors caught by their own name, warnings that point at the user's
line, and a report for every compile, a cached one included."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import cheap_backend, count_partitions

import rematpass
from rematpass.inspect import dump


def test_a_bad_knob_is_caught_as_knob_error_through_torch_compile():
    model = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memory_budget": -1})
    with pytest.raises(rematpass.KnobError, match="memory_budget") as caught:
        model(torch.randn(2, 4))
    assert isinstance(caught.value, ValueError)  # KnobError is a ValueError, as documented
    assert "BackendCompilerFailed" not in type(caught.value).__name__


def test_an_unknown_knob_is_caught_as_knob_error_through_torch_compile():
    model = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memroy_budget": 0.5})
    with pytest.raises(rematpass.KnobError, match="memroy_budget"):
        model(torch.randn(2, 4))


@pytest.mark.inductor
def test_budget_warning_points_at_the_users_line():
    # matmuls only: Inductor generates no C++ kernel, so the real backend compiles in seconds
    model = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False))
    model = torch.compile(model, backend="remat", options={"memory_budget": 64, "verify_peak": False})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(4, 8)).backward(torch.ones(4, 8))  # the line a user would be shown
    budget = [w for w in caught if issubclass(w.category, rematpass.RematBudgetWarning)]
    assert budget, [str(w.message) for w in caught]
    assert budget[0].filename == __file__, budget[0].filename
    assert "cannot be met" in str(budget[0].message)


def test_random_ops_replayed_from_their_seed_say_so():
    """A dropout mask recomputed in the backward is the same mask, drawn again from the saved seed."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    # the bool mask is cheap to keep; asking to recompute it makes the backward draw it again
    compiled = torch.compile(model, backend=cheap_backend(always_recompute=("aten.gt", "prims.inductor_random")))
    compiled(torch.randn(8, 16)).sum().backward()
    nodes = rematpass.recent_reports()[-1].nodes
    draws = [n for n in nodes if n.op == "prims.inductor_random"]
    assert draws, sorted({n.op for n in nodes})
    recomputed = [n for n in draws if n.decision == "recomputed"]
    assert recomputed, [(n.decision, n.reason) for n in draws]
    assert all(n.reason_kind == "replayed_random" and "saved seed" in n.reason for n in recomputed)


def test_with_no_budget_no_reason_mentions_a_budget():
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    torch.compile(model, backend=cheap_backend())(torch.randn(4, 8)).sum().backward()
    reasons = {n.reason for n in rematpass.recent_reports()[-1].nodes}
    assert not [r for r in reasons if "budget" in r], reasons


def _runs_with_caches_on(tmp_path, monkeypatch, step, runs: int = 2):
    """``step()`` in ``runs`` fresh Dynamo sessions sharing one private Inductor cache folder, as
    a script run again finds its caches; the recent reports after each run."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    reports = []
    with (
        torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True),
        torch._functorch.config.patch(enable_autograd_cache=True),
    ):
        for _ in range(runs):
            torch._dynamo.reset()
            rematpass.clear_reports()
            step()
            reports.append(rematpass.recent_reports())
    return reports


def _compile_twice_with_caches_on(tmp_path, monkeypatch, options):
    """A matmul-only model (no C++ kernels: fast) through real Inductor, twice, caches on."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False))

    def step():
        out = torch.compile(model, backend="remat", options=options)(torch.randn(4, 8))
        out.backward(torch.ones_like(out))

    return _runs_with_caches_on(tmp_path, monkeypatch, step)


@pytest.mark.inductor
def test_recent_reports_answer_after_a_cache_hit(tmp_path, monkeypatch):
    first, second = _compile_twice_with_caches_on(tmp_path, monkeypatch, {"dump_dir": str(tmp_path / "dump")})
    assert len(first) == 1 and not first[0].from_cache
    assert (tmp_path / "dump" / "0_0.1" / dump.CACHE_HIT_FILE).is_file(), "the second compile was not a cache hit"
    assert len(second) == 1 and second[0].from_cache
    assert second[0].saved_bytes == first[0].saved_bytes
    assert [n.name for n in second[0].saved_nodes()] == [n.name for n in first[0].saved_nodes()]
    assert "from the cache" in second[0].one_line()


@pytest.mark.inductor
def test_dump_compares_with_torch_compiles_own_partitioner(tmp_path):
    import json

    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8, bias=False))
    compiled = torch.compile(model, backend="remat", options={"dump_dir": str(tmp_path)})
    compiled(torch.randn(16, 8)).sum().backward()
    report = rematpass.recent_reports()[-1]
    # Inductor's partitioner saves the tanh output (16 x 64 fp32) and the input; so do we at most
    assert report.inductor_saved_bytes is not None and report.inductor_saved_bytes >= 16 * 64 * 4
    assert report.saved_bytes <= report.inductor_saved_bytes
    totals = json.loads((tmp_path / "0_0" / "plan.json").read_text())["totals"]
    assert totals["inductor_saved_bytes"] == report.inductor_saved_bytes


@pytest.mark.inductor
@pytest.mark.parametrize("budget", [0.0, "1KiB"], ids=["fraction", "unmeetable_byte_cap"])
def test_a_budget_checked_once_is_compiled_once_from_the_cache_on_the_next_run(tmp_path, monkeypatch, budget):
    """The first run checks the budget on Inductor's schedule (one or more compiles); it remembers
    the kept plan, so the next run of the same graph compiles just that plan, from the cache."""
    partitions = count_partitions(monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64, bias=False) for _ in range(4)])
    x = torch.randn(256, 64)

    def step():
        compiled = torch.compile(model, backend="remat", options={"memory_budget": budget, "strict": True})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled(x).sum().backward()
        unmet = [w for w in caught if issubclass(w.category, rematpass.RematBudgetWarning)]
        assert bool(unmet) == (budget == "1KiB"), [str(w.message) for w in unmet]

    reports = [report for (report,) in _runs_with_caches_on(tmp_path, monkeypatch, step)]
    first, second = reports
    assert len(partitions) == first.compiles >= 1 and not first.from_cache
    assert second.compiles == 1 and second.from_cache, "the second run should take the kept plan from the cache"
    assert [n.name for n in second.saved_nodes()] == [n.name for n in first.saved_nodes()]
    assert second.scheduled_peak_bytes == first.scheduled_peak_bytes
