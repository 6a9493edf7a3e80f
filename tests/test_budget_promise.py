"""A memory_budget is a promise about the measured peak: checked on real Inductor (CPU codegen),
exact CPU peaks (rematpass.measure.peak_memory), three small models, one a conv net with BatchNorm.

- a byte cap anywhere between the least-peak plan and the default holds within 1%;
- the measured peak never rises as a fractional budget falls, down to 0.0.
"""

import json

import pytest
import torch
from helpers import kept_attempt

import rematpass
from rematpass import zoo
from rematpass.measure import peak_memory

SLACK = 1.01  # measured / cap


def _mixer():
    torch.manual_seed(0)
    model = zoo.Mixer(image=16, patch=4, dim=64, depth=2)
    return model, (torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)))


def _conv_bn():
    torch.manual_seed(0)
    model = zoo.SmallCNN(width=8)
    return model, (torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)))


def _mlp():
    torch.manual_seed(0)
    model = zoo.ResidualMLP(dim=64, depth=4, loss="mean_square")
    return model, (model.example(batch=128),)


MODELS = {"mixer": _mixer, "conv_bn": _conv_bn, "mlp": _mlp}
# Fractions whose order is checked, and caps (as a share of the way from the least-peak plan's
# measured peak to the default's), per model: every compile costs seconds of gcc on two cores.
CHECKS = {
    "mixer": ([None, 0.1, 0.0], (0.5,)),  # the model whose deep plans schedule worse than shallower ones
    "conv_bn": ([None, 0.0], (0.5,)),
    "mlp": ([None, 0.0], (0.5,)),
}


def _measured(build, budget, dump_dir=None) -> tuple[int, rematpass.PartitionReport]:
    """The exact peak of a steady training step with ``memory_budget=budget``, and its report."""
    model, inputs = build()
    torch._dynamo.reset()
    rematpass.clear_reports()
    options = {"strict": True, "dump_dir": dump_dir}
    if budget is not None:
        options["memory_budget"] = budget
    compiled = torch.compile(model, backend="remat", options=options)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=False)
        compiled(*inputs).backward()
        optimizer.step()

    step()
    step()
    (report,) = rematpass.recent_reports()
    return peak_memory(step), report


@pytest.mark.inductor
@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_budgets_hold_on_the_measured_peak(name, tmp_path):
    build = MODELS[name]
    fractions, shares = CHECKS[name]
    peaks = {}
    for budget in fractions:
        peaks[budget], report = _measured(build, budget)
        assert report.scheduled_peak_bytes is not None
    # the measured peak never rises as the fraction falls
    falling = [peaks[b] for b in fractions]
    assert all(later <= earlier for earlier, later in zip(falling, falling[1:])), (name, falling)

    least, default = peaks[0.0], peaks[None]
    ratios = []
    for share in shares:
        cap = int(least + share * (default - least))
        measured, report = _measured(build, cap, dump_dir=str(tmp_path / str(share)))
        ratios.append(measured / cap)
        assert measured <= cap * SLACK, (name, cap, measured, report.verification)
        # one compile: its plan is dumped with its scheduled peak and the plans the check probed
        assert report.compiles == 1 and report.schedule_probes >= 1
        notes = [json.loads(p.read_text()) for p in (tmp_path / str(share)).glob("*/scheduled.json")]
        assert [n["kept"] for n in notes] == [True]
        assert (
            notes[0]["scheduled_peak_bytes"] == report.scheduled_peak_bytes == kept_attempt(report).scheduled_peak_bytes
        )
        assert len(notes[0]["attempts"]) == len(report.verification)
    print(f"{name}: fractions {[f'{p / 2**20:.3f}' for p in falling]} MiB; worst measured/cap {max(ratios):.4f}")
