"""Smoke test of ``python -m rematpass.bench``: one tiny model, the fastest remat plan and budget 0.1; the full-size
suite's options (its ResNet-50 runs eager in tests/test_gpu_check.py); the partitioner's host-memory measurement."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import torch

from rematpass import bench
from rematpass.bench import models as bench_models
from rematpass.bench.partition_records import HostPeak, PartitionRecorder

VARIANT_KEYS = {
    "name",
    "kind",
    "budget",
    "peak_bytes",
    "saved_bytes",
    "recompute_flops",
    "recompute_ops",
    "recompute_elements",
    "partitions",
    "partition_seconds",
    "partition_peak_host_bytes",
    "compile_seconds",
    "step_seconds",
    "step_rounds",
    "grads",
    "loss",
}


@pytest.mark.inductor
@pytest.mark.slow
def test_bench_writes_results_and_budget_lowers_peak(tmp_path, capsys):
    results = bench.main(
        [
            "--models",
            "tiny-mlp",
            "--variants",
            "remat-fastest",
            "remat@0.1",
            "--steps",
            "2",
            "--no-warmup",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "[tiny-mlp 1/2] remat-fastest" in printed and "remat@0.1" in printed  # progress lines and the table

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["schema"] == bench.SCHEMA
    assert {"torch", "cpu_count", "platform"} <= on_disk["machine"].keys()
    assert on_disk["config"]["variants"] == ["remat-fastest", "remat@0.1"]
    (model,) = on_disk["models"]
    assert model["name"] == "tiny-mlp" and model["blocks"] == 4 and model["params"] > 0
    full, low = model["variants"]
    for row in (full, low):
        assert "error" not in row, row.get("error")
        assert VARIANT_KEYS <= row.keys()
        assert row["kind"] == "remat" and row["partitions"] >= 1 and row["step_rounds"] == 2
        assert row["grads"]["status"] == "match", row["grads"]
        assert row["remat_reports"]["graphs"] >= 1
        assert row["remat_reports"]["predicted_peak_bytes"] > 0  # predicted next to measured
        assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0
        if HostPeak.rss_available():
            assert isinstance(row["partition_peak_host_bytes"], int) and row["partition_peak_host_bytes"] >= 0
    assert (full["budget"], low["budget"]) == (None, 0.1)
    assert low["saved_bytes"] < full["saved_bytes"]
    assert low["peak_bytes"] < full["peak_bytes"]
    assert low["recompute_elements"] > full["recompute_elements"]
    assert (tmp_path / "results.md").read_text().count("| `remat") == 2
    assert "predicted peak" in (tmp_path / "results.md").read_text()
    assert "partition host peak" in (tmp_path / "results.md").read_text()
    # a budget's check probes its plans and compiles each graph once; the table says so
    assert set(low["remat_reports"]["compiles"]) == {1} and min(low["remat_reports"]["schedule_probes"]) >= 1
    assert "compiles / probes per graph" in (tmp_path / "results.md").read_text()
    assert "step_ratio" not in full  # inductor, the baseline, did not run


def test_host_peak_measures_and_stops_tracing():
    with HostPeak("tracemalloc") as peak:
        held = [object() for _ in range(100_000)]
        del held
    assert peak.bytes > 1_000_000
    assert not tracemalloc.is_tracing()  # nothing after the partitioner (the timed steps) pays for tracing
    if HostPeak.rss_available():
        with HostPeak("rss") as peak:
            big = torch.ones(2**24)  # 64 MiB, written, so resident
            del big
        assert peak.bytes >= 2**25
    with HostPeak("off") as peak:
        pass
    assert peak.bytes is None
    with pytest.raises(ValueError, match="tracemalloc"):
        PartitionRecorder("exact")


def test_size_full_selects_the_full_suite_and_rejects_mixtures():
    assert bench_models.parse_size("full") == "full" and bench_models.parse_size("0.5") == 0.5
    assert bench_models.default_models("full") == ["gpt2-small", "llama-8l", "vit-b16", "resnet50"]
    assert bench_models.full_shape("gpt2-small", "cpu") == bench_models.Shape(4, 512)
    assert bench_models.full_shape("gpt2-small", "cuda:0", batch=4).batch == 4
    assert bench_models.full_shape("llama-8l", "cpu", batch=2, seq=256) == bench_models.Shape(2, 256)
    assert bench_models.full_shape("resnet50", "cpu", seq=256).seq is None  # no sequence to override
    with pytest.raises(KeyError, match="use --size full"):
        bench_models.build("resnet50", 1.0)
    for argv in (
        ["--size", "full", "--models", "mlp"],
        ["--models", "resnet50"],
        ["--batch", "2"],
        ["--seq", "128"],
        ["--size", "x"],
    ):
        with pytest.raises(SystemExit):
            bench.main([*argv, "--out", "/nonexistent/never-written"])


def test_recompute_figures_come_from_the_plan_each_graph_kept():
    """The scheduled-peak check partitions a graph once per plan it compiles: only the kept plan's
    partition counts (the least scheduled peak, the latest of equals, as its report lists the
    attempts), and a compile's partition is tagged with its dynamo compile id."""
    from types import SimpleNamespace

    from helpers import cheap_backend

    from rematpass.bench.partition_records import kept_partitions
    from rematpass.verify import VerifyAttempt

    def attempt(scheduled):
        return VerifyAttempt(aim_bytes=0, predicted_peak_bytes=0, scheduled_peak_bytes=scheduled, saved_bytes=0)

    records = [
        {"compile_id": "0/0", "recompute_flops": 9},
        {"compile_id": "0/0", "recompute_flops": 5},
        {"compile_id": "0/0", "recompute_flops": 7},
        {"compile_id": "1/0", "recompute_flops": 2},
        {"compile_id": None, "recompute_flops": 1},
        {"compile_id": None, "recompute_flops": 1},
    ]
    reports = [SimpleNamespace(compile_id="0/0", verification=(attempt(30), attempt(20), attempt(20)))]
    assert [r["recompute_flops"] for r in kept_partitions(records, reports)] == [7, 2, 1, 1]
    reports = [SimpleNamespace(compile_id="0/0", verification=(attempt(30), attempt(20), attempt(25)))]
    assert [r["recompute_flops"] for r in kept_partitions(records, reports)] == [5, 2, 1, 1]
    assert [r["recompute_flops"] for r in kept_partitions(records, [])] == [7, 2, 1, 1]
    torch._dynamo.reset()
    with PartitionRecorder("off") as recorder:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        torch.compile(model, backend=cheap_backend())(torch.randn(2, 4)).sum().backward()
    torch._dynamo.reset()
    assert [r["compile_id"] for r in recorder.records] == ["0/0"]
