import pickle

import pytest

import rematpass
from rematpass import KnobError, config
from rematpass.partitioner import RematPartitioner


def test_defaults():
    knobs = config.resolve({}, environ={})
    assert knobs == rematpass.Knobs()
    assert knobs.memory_budget is None


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"memroy_budget": 0.5}, "Did you mean 'memory_budget'"),
        ({"memory_budget": -1}, "memory_budget=-1"),
        ({"memory_budget": 1.5}, "[0, 1]"),
        ({"memory_budget": True}, "memory_budget=True"),
        ({"memory_budget": 1}, "ambiguous"),
        ({"memory_budget": "lots"}, "memory_budget='lots'"),
        ({"memory_budget": [0.5]}, "wrong type list"),
        ({"flops_per_second": 0}, "flops_per_second=0"),
        ({"bytes_per_second": "fast"}, "bytes_per_second='fast'"),
        ({"never_recompute": ["aten.not_an_op"]}, "no op aten.not_an_op"),
        ({"always_recompute": 3}, "always_recompute=3"),
        ({"strict": "maybe"}, "strict='maybe'"),
        ({"solver": "greedy"}, "'mincut' or 'ilp'"),
        ({"solver": "ilp", "memory_budget": 0.5}, "cannot be combined with memory_budget=0.5"),
        ({"solver": "ilp", "memory_budget": "1GiB"}, "cannot be combined with memory_budget=1073741824"),
        ({"buffer_reuse": "yes please"}, "buffer_reuse='yes please'"),
    ],
)
def test_bad_knobs_name_the_knob_and_what_is_allowed(options, needle):
    with pytest.raises(KnobError) as err:
        config.resolve(options, environ={})
    assert needle in str(err.value)
    name = next(iter(options))
    assert "allowed" in str(err.value) or "Known knobs" in str(err.value)
    assert name.split("_")[0] in str(err.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.0, 0.0),
        (0.3, 0.3),
        (1.0, 1.0),
        ("1.5GiB", 1610612736),
        ("800MB", 800_000_000),
        (4096, 4096),
        ("0.5", 0.5),
        ("2048", 2048),
        (None, None),
    ],
)
def test_memory_budget_forms(value, expected):
    assert config.resolve({"memory_budget": value}, environ={}).memory_budget == expected


def test_op_names_are_canonical():
    import torch

    knobs = config.resolve({"never_recompute": ["mm", "aten::convolution", torch.ops.aten.bmm.default]}, environ={})
    assert knobs.never_recompute == ("aten.bmm", "aten.convolution", "aten.mm")
    assert config.resolve({"always_recompute": "gelu, aten.relu"}, environ={}).always_recompute == (
        "aten.gelu",
        "aten.relu",
    )


def test_precedence_defaults_env_patch_options():
    env = {"REMAT_MEMORY_BUDGET": "0.7", "REMAT_STRICT": "1"}
    assert config.resolve({}, environ=env).memory_budget == 0.7
    assert config.resolve({}, environ=env).strict is True
    with config.patch(memory_budget=0.5):
        assert config.resolve({}, environ=env).memory_budget == 0.5
        assert config.resolve({"memory_budget": 0.2}, environ=env).memory_budget == 0.2
    assert config.resolve({}, environ=env).memory_budget == 0.7


def test_patch_as_decorator_and_validation():
    @config.patch(memory_budget="1MiB")
    def inside():
        return config.resolve({}, environ={}).memory_budget

    assert inside() == 2**20
    assert config.resolve({}, environ={}).memory_budget is None
    with pytest.raises(KnobError, match="memory_budget"):
        config.patch(memory_budget=-3)
    with pytest.raises(KnobError, match="unknown rematpass knob"):
        config.patch(budget=0.5)


def test_unknown_environment_variable_is_an_error():
    with pytest.raises(KnobError, match="REMAT_MEMORY_BUGDET"):
        config.resolve({}, environ={"REMAT_MEMORY_BUGDET": "0.5"})


def test_uuid_covers_every_knob_and_survives_pickling():
    base = RematPartitioner(config.resolve({}, environ={}))
    other = RematPartitioner(config.resolve({"memory_budget": 0.5}, environ={}))
    rates = RematPartitioner(config.resolve({"flops_per_second": 1e9}, environ={}))
    assert base.uuid() != other.uuid() != rates.uuid() != base.uuid()
    assert base.uuid() == RematPartitioner(config.resolve({}, environ={})).uuid()
    clone = pickle.loads(pickle.dumps(other))
    assert clone.uuid() == other.uuid()


def test_backend_is_registered_through_the_entry_point():
    import subprocess
    import sys

    code = "import torch, sys; sys.exit(0 if 'remat' in torch._dynamo.list_backends() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
