"""``benchmarks/gpu_check.sh``: its CPU fallback end to end, and (on a GPU) the CUDA rates against the defaults."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from rematpass.calibrate import DEFAULT_RATES, measure_rates

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
@pytest.mark.inductor
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_cpu_fallback_runs_every_stage(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "CPU fallback" in printed
    assert "measured / default" in printed  # calibrate, next to DEFAULT_RATES["cpu"]
    assert "STOPPED" not in printed and "FAILED" not in printed and "skipped" not in printed, printed[-4000:]
    assert "predicted / measured" in printed  # the summary's table
    assert (out / "gpu_check.log").read_text().count("== summary") == 1

    small = json.loads((out / "small" / "results.json").read_text())
    (model,) = small["models"]
    assert [r["name"] for r in model["variants"]] == ["inductor", "remat"]  # a budget: test_bench, test_budget_promise
    for row in model["variants"]:
        assert "error" not in row, row["error"]
        assert row["grads"]["status"] == "match" and row["step_rounds"] == 2
    assert model["variants"][1]["remat_reports"]["predicted_peak_bytes"] > 0

    full = json.loads((out / "full" / "results.json").read_text())
    assert full["config"]["size"] == "full" and full["config"]["batch"] == 1
    (model,) = full["models"]
    assert model["name"] == "resnet50" and model["inputs"] == [[1, 3, 224, 224], [1]]
    assert 25e6 < model["params"] < 26e6 and model["blocks"] == 16  # ResNet-50: 25.6 M, 3+4+6+3 bottlenecks
    (row,) = model["variants"]
    assert "error" not in row, row.get("error")
    assert row["peak_bytes"] > 0 and row["step_rounds"] == 2 and "partition_peak_host_bytes" not in row


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rates_within_an_order_of_magnitude_of_the_defaults():
    rates = measure_rates("cuda", seconds=2)
    default_flops, default_bytes = DEFAULT_RATES["cuda"]
    assert 0.1 <= rates.flops_per_second / default_flops <= 10, rates
    assert 0.1 <= rates.bytes_per_second / default_bytes <= 10, rates
