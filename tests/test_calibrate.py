"""``rematpass calibrate``: measured rates, the rates file, and the cost model reading it."""

from __future__ import annotations

import json
import time

import pytest

from rematpass import calibrate
from rematpass.calibrate import DEFAULT_RATES
from rematpass.config import Knobs
from rematpass.cost import CostModel
from rematpass.inspect import cli
from rematpass.partitioner import RematPartitioner


@pytest.fixture
def rates_path(tmp_path, monkeypatch):
    path = tmp_path / "rates.json"
    monkeypatch.setenv(calibrate.RATES_FILE_ENV, str(path))
    return path


def test_measure_rates_is_quick_and_plausible():
    started = time.perf_counter()
    rates = calibrate.measure_rates("cpu", seconds=0.5)
    assert time.perf_counter() - started < 10
    # Any CPU this runs on does between 1 GFLOP/s and 100 TFLOP/s, and moves 0.1 GB/s to 10 TB/s.
    assert 1e9 < rates.flops_per_second < 1e14
    assert 1e8 < rates.bytes_per_second < 1e13
    assert rates.device == "cpu" and rates.threads >= 1 and rates.dtype == "float32"


def test_bad_arguments_name_what_is_allowed():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        calibrate.measure_rates("mps")
    with pytest.raises(ValueError, match="seconds must be positive"):
        calibrate.measure_rates("cpu", seconds=0)


def test_saved_rates_are_read_per_device_and_knobs_override_them(rates_path):
    assert calibrate.load_rates("cpu") is None
    assert CostModel().rates_for("cpu") == DEFAULT_RATES["cpu"]
    calibrate.save_rates(calibrate.Rates("cuda", 5e14, 3e12))
    calibrate.save_rates(calibrate.Rates("cpu", 4e10, 2e10))
    assert set(json.loads(rates_path.read_text())) == {"cpu", "cuda"}  # one entry per device, both kept
    assert calibrate.load_rates("cpu").flops_per_second == 4e10
    assert CostModel().rates_for("cpu") == (4e10, 2e10)
    assert CostModel().rates_for("cuda") == (5e14, 3e12)
    assert CostModel(flops_per_second=1e9).rates_for("cpu") == (1e9, 2e10)
    assert CostModel(1e9, 1e9).rates_for("cpu") == (1e9, 1e9)


def test_rates_file_is_part_of_the_cache_key(rates_path):
    partitioner = RematPartitioner(Knobs())
    before = partitioner.uuid()
    calibrate.save_rates(calibrate.Rates("cpu", 4e10, 2e10))
    assert partitioner.uuid() != before


def test_a_broken_rates_file_names_itself(rates_path):
    rates_path.write_text('{"cpu": {"flops_per_second": -1, "bytes_per_second": 1}}')
    with pytest.raises(ValueError, match="rates.json"):
        CostModel().rates_for("cpu")
    rates_path.write_text("not json")
    with pytest.raises(ValueError, match="cannot read the rates file"):
        calibrate.load_rates("cpu")


def test_cli_calibrate_prints_and_writes(rates_path, capsys):
    assert cli.main(["calibrate", "--seconds", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "FLOP/s" in printed and "B/s" in printed and str(rates_path) in printed
    written = calibrate.load_rates("cpu")
    assert written is not None and written.flops_per_second > 0
    rates_path.unlink()
    assert cli.main(["calibrate", "--seconds", "0.3", "--no-write"]) == 0
    assert "REMAT_FLOPS_PER_SECOND=" in capsys.readouterr().out and not rates_path.exists()
