"""Smoke test of ``python -m rematpass.bench``: one tiny model, remat at budgets 1.0 and 0.1."""

from __future__ import annotations

import json

import pytest

from rematpass import bench

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
            "remat@1.0",
            "remat@0.1",
            "--steps",
            "2",
            "--no-warmup",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "[tiny-mlp 1/2] remat@1.0" in printed and "remat@0.1" in printed  # progress lines and the table

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["schema"] == bench.SCHEMA
    assert {"torch", "cpu_count", "platform"} <= on_disk["machine"].keys()
    assert on_disk["config"]["variants"] == ["remat@1.0", "remat@0.1"]
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
    assert (full["budget"], low["budget"]) == (1.0, 0.1)
    assert low["saved_bytes"] < full["saved_bytes"]
    assert low["peak_bytes"] < full["peak_bytes"]
    assert low["recompute_elements"] > full["recompute_elements"]
    assert (tmp_path / "results.md").read_text().count("| `remat@") == 2
    assert "predicted peak" in (tmp_path / "results.md").read_text()
    assert "step_ratio" not in full  # inductor, the baseline, did not run
