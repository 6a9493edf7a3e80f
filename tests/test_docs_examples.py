"""The examples in the public API's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "rematpass",
    "rematpass.backend",
    "rematpass.budget",
    "rematpass.calibrate",
    "rematpass.config",
    "rematpass.measure",
    "rematpass.report_cache",
    "rematpass.scheduled_peak",
    "rematpass.user_warnings",
    "rematpass.inspect.cli",
    "rematpass.passes.chunk_price",
    "rematpass.passes.op_sums",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
