"""Inductor's scheduled peak (rematpass.scheduled_peak) and the byte-budget check (rematpass.verify),
without Inductor: schedules and compiles are stand-ins."""

import dataclasses
import warnings

import pytest

import rematpass
from rematpass.passes.peak import ScoredPlan
from rematpass.scheduled_peak import GraphMemory, ScheduledBuffer, graph_memory, step_peak
from rematpass.verify import FLAT_STEPS, MAX_RECOMPILES, CompileOutcome, RematBudgetWarning, compile_within, next_aim

MiB = 2**20


def test_graph_memory_replays_allocations_and_frees():
    buffers = [
        ScheduledBuffer("saved", 4, 4, 0, 1, graph_input=True),
        ScheduledBuffer("a", 8, 8, 0, 2),
        ScheduledBuffer("b", 16, 16, 1, 1),
        ScheduledBuffer("grad", 2, 2, 2, -1),
    ]
    memory = graph_memory(buffers, steps=3, backward=True)
    # step 0: saved + a; step 1: + b; step 2: saved and b gone, grad added
    assert (memory.start_bytes, memory.peak_bytes, memory.end_bytes) == (4, 28, 2)


def test_in_place_output_takes_its_inputs_memory_and_lifetime():
    buffers = [ScheduledBuffer("a", 8, 8, 0, 1), ScheduledBuffer("b", 8, 8, 1, 3), ScheduledBuffer("c", 4, 4, 2, 2)]
    apart = graph_memory(buffers, steps=4, backward=False)
    in_place = graph_memory(buffers, steps=4, backward=False, reuses={"b": "a"})
    assert apart.peak_bytes == 16  # a and b overlap at step 1
    assert in_place.peak_bytes == 12  # b is a: 8 bytes live until step 3, c on top
    assert in_place.end_bytes == 0


def test_a_chain_of_in_place_writes_and_a_removed_buffer():
    buffers = [
        ScheduledBuffer("a", 8, 8, 0, 0),
        ScheduledBuffer("b", 8, 8, 1, 1),
        ScheduledBuffer("c", 8, 8, 2, -1),
        ScheduledBuffer("tmp", 100, 100, 1, 1),
    ]
    memory = graph_memory(buffers, steps=3, backward=False, reuses={"b": "a", "c": "b"}, removed={"tmp"})
    assert (memory.peak_bytes, memory.end_bytes) == (8, 8)  # one buffer, kept as the output


def test_step_peak_adds_the_backwards_rise_to_what_the_forward_left():
    forward = GraphMemory(backward=False, start_bytes=0, peak_bytes=30, end_bytes=20)
    # the backward counts 22 at its start: a saved view counted twice; only its rise of 15 counts
    backward = GraphMemory(backward=True, start_bytes=22, peak_bytes=37, end_bytes=5)
    assert step_peak(forward, backward) == 35
    assert step_peak(dataclasses.replace(forward, peak_bytes=40), backward) == 40


@dataclasses.dataclass(frozen=True)
class _Report:
    predicted_peak_bytes: int
    saved_bytes: int
    peak_plans: tuple = ()
    budget_met: bool = True
    target_peak_bytes: float | None = None
    scheduled_peak_bytes: int | None = None
    verification: tuple = ()
    schedule_note: str = ""
    from_cache: bool = False
    compile_id: str | None = None
    compiles: int = 1


class _Compiler:
    """Plans whose Inductor schedule peaks ``error`` times their predicted peak: the planner takes the
    largest predicted peak within the aim, the way plan_for_peak does."""

    def __init__(self, predicted: list[int], error, knob_aim: int):
        """``knob_aim``: the predicted peak the user's knob plans for (the first compile, aim None)."""
        self.predicted, self.error, self.aims, self.outcomes = sorted(predicted), error, [], []
        self.knob_aim = knob_aim

    def __call__(self, aim: int | None) -> CompileOutcome:
        aim = self.knob_aim if aim is None else aim
        self.aims.append(aim)
        fitting = [p for p in self.predicted if p <= aim] or self.predicted[:1]
        chosen = fitting[-1]
        plans = tuple(ScoredPlan(p // 2, 1.0 / p, p) for p in self.predicted)  # deeper plans take longer
        report = _Report(chosen, saved_bytes=chosen // 2, peak_plans=plans, budget_met=chosen <= aim)
        self.outcomes.append(CompileOutcome(object(), report=report, scheduled_peak_bytes=int(self.error(chosen))))
        return self.outcomes[-1]


def test_a_plan_that_fits_is_compiled_once():
    compiler = _Compiler([10 * MiB, 20 * MiB, 30 * MiB], error=lambda p: p, knob_aim=25 * MiB)
    outcome = compile_within(25 * MiB, compiler)
    assert compiler.aims == [25 * MiB]
    assert outcome.scheduled_peak_bytes == 20 * MiB
    assert [a.scheduled_peak_bytes for a in outcome.report.verification] == [20 * MiB]


def test_over_the_cap_recompiles_aiming_lower_by_the_ratio_seen():
    compiler = _Compiler([10 * MiB, 16 * MiB, 20 * MiB, 30 * MiB], error=lambda p: 1.25 * p, knob_aim=22 * MiB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = compile_within(22 * MiB, compiler)
    # 20 MiB predicted is 25 MiB scheduled: aim at 22 / 1.25 = 17.6 MiB, which takes the 16 MiB plan
    assert len(compiler.aims) == 2 and compiler.aims[1] == int(22 * MiB * 20 / 25)
    assert outcome.scheduled_peak_bytes == 20 * MiB
    assert outcome.report.scheduled_peak_bytes == 20 * MiB
    assert [a.predicted_peak_bytes for a in outcome.report.verification] == [20 * MiB, 16 * MiB]


def test_when_no_plan_fits_the_least_scheduled_is_kept_with_a_warning():
    # deeper plans schedule worse: down to the least-peak plan, up once to 30 MiB (worse), and the
    # first plan, the best, is kept as first compiled
    scheduled = {10 * MiB: 40 * MiB, 16 * MiB: 30 * MiB, 20 * MiB: 25 * MiB, 30 * MiB: 35 * MiB}
    compiler = _Compiler(list(scheduled), error=scheduled.__getitem__, knob_aim=21 * MiB)
    with pytest.warns(RematBudgetWarning, match="cannot be met.*least peaks at 26,214,400"):
        outcome = compile_within(21 * MiB, compiler)
    assert outcome.scheduled_peak_bytes == 25 * MiB
    assert outcome is compiler.outcomes[0]  # not compiled again
    assert compiler.aims[0] == 21 * MiB and compiler.aims[-1] == 30 * MiB
    assert len(compiler.aims) == 4 <= MAX_RECOMPILES + 1


def test_a_fraction_climbs_to_shallower_plans_while_the_schedule_does_not_rise():
    # the planner's pick (10 MiB) schedules 40; 16 schedules the same, 20 less, 30 more
    scheduled = {10 * MiB: 40 * MiB, 16 * MiB: 40 * MiB, 20 * MiB: 25 * MiB, 30 * MiB: 35 * MiB}
    # the fraction's own first compile is planned as the least-peak plan would be
    compiler = _Compiler(list(scheduled), error=scheduled.__getitem__, knob_aim=1)
    outcome = compile_within(None, compiler)
    assert outcome.scheduled_peak_bytes == 25 * MiB
    assert [a.scheduled_peak_bytes for a in outcome.report.verification] == [40 * MiB, 40 * MiB, 25 * MiB, 35 * MiB]
    assert outcome is compiler.outcomes[2] and len(compiler.aims) == 4  # the best kept as compiled


def test_a_climb_stops_when_two_shallower_plans_in_a_row_schedule_the_same_peak():
    # OLMo 2's least-peak plan and the plans above it all scheduled one peak, set by what they
    # share: after two flat steps the climb stops, keeping the shallowest of the equals
    scheduled = {10 * MiB: 40 * MiB, 16 * MiB: 40 * MiB, 20 * MiB: 40 * MiB, 30 * MiB: 25 * MiB}
    compiler = _Compiler(list(scheduled), error=scheduled.__getitem__, knob_aim=1)
    outcome = compile_within(None, compiler)
    assert [a.scheduled_peak_bytes for a in outcome.report.verification] == [40 * MiB] * (FLAT_STEPS + 1)
    assert outcome is compiler.outcomes[-1] and outcome.report.predicted_peak_bytes == 20 * MiB


def test_next_aim_stops_at_the_least_peak_plan_and_always_moves_down():
    from rematpass.verify import VerifyAttempt

    at_least = VerifyAttempt(aim_bytes=5, predicted_peak_bytes=10, scheduled_peak_bytes=20, saved_bytes=1)
    assert next_aim(15, at_least, least=10) is None
    barely_over = VerifyAttempt(aim_bytes=100, predicted_peak_bytes=100, scheduled_peak_bytes=101, saved_bytes=1)
    assert next_aim(100, barely_over, least=10) == 99
    far_over = VerifyAttempt(aim_bytes=100, predicted_peak_bytes=100, scheduled_peak_bytes=1000, saved_bytes=1)
    assert next_aim(100, far_over, least=40) == 40


def test_verify_peak_is_a_validated_knob():
    from rematpass import config
    from rematpass.config import KnobError

    assert config.resolve({"verify_peak": False}).verify_peak is False
    with pytest.raises(KnobError, match="verify_peak.*True or False"):
        config.resolve({"verify_peak": "sometimes"})


def test_a_fraction_scheduled_as_predicted_compiles_once():
    compiler = _Compiler([10 * MiB, 20 * MiB, 30 * MiB], error=lambda p: 1.02 * p, knob_aim=15 * MiB)
    outcome = compile_within(None, compiler)
    assert len(compiler.aims) == 1
    assert len(outcome.report.verification) == 1


def test_the_next_run_compiles_the_kept_plan_once_from_the_cache(tmp_path, monkeypatch):
    """rematpass.backend under a byte cap where the schedule cannot be probed, with Inductor
    replaced by ``_Compiler`` and a cache of what was compiled: the first run needs two compiles
    (the first plan schedules over the cap), the next run of the same graph finds the knobs' plan
    unchecked in the cache and then takes the kept plan from it, no partition, no codegen."""
    import torch

    import rematpass.backend as backend

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    compiler = _Compiler([10 * MiB, 16 * MiB, 20 * MiB, 30 * MiB], error=lambda p: 1.25 * p, knob_aim=22 * MiB)
    cached: set = set()
    calls = []

    def fake_compile_once(
        gm, example_inputs, knobs, mode, *, verifying, aim=None, caches=True, loss_heads=(), probe=False
    ):
        # probe=True: the one compile whose partitioner probes the schedule; the fake cannot, so
        # its report carries no verification and the backend checks by compiling
        calls.append((aim, caches))
        if caches and aim in cached:
            return CompileOutcome(object(), cache_hit=True)  # Inductor's cache: no partition, no codegen
        cached.add(aim)
        return compiler(aim)

    monkeypatch.setattr(backend, "_compile_once", fake_compile_once)
    gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
    options = {"memory_budget": 22 * MiB}
    backend.remat(gm, [torch.randn(1, 2)], options=options)
    first = rematpass.recent_reports()[-1]
    assert [aim for aim, _ in calls] == [None, int(22 * MiB * 20 / 25)] and first.compiles == 2
    calls.clear()
    backend.remat(gm, [torch.randn(1, 2)], options=options)
    second = rematpass.recent_reports()[-1]
    assert calls == [(None, True), (int(22 * MiB * 20 / 25), True)], "the kept plan, through the cache"
    assert second.compiles == 2 and second.from_cache and second.scheduled_peak_bytes == 20 * MiB


def test_a_cap_a_shallower_plan_fits_keeps_the_shallower_plan():
    """A cap equal to the default plan's scheduled peak, which the planner predicts 0.05% over it:
    the planner's pick for the cap is deeper, fits with room to spare, and the default plan is
    tried next, fits, and is kept: the cap asked for no recomputation."""
    default = 30 * MiB
    predicted = [10 * MiB, 20 * MiB, int(default * 1.0005)]
    scheduled = {10 * MiB: 10 * MiB, 20 * MiB: 20 * MiB, int(default * 1.0005): default}
    compiler = _Compiler(predicted, error=scheduled.__getitem__, knob_aim=default)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = compile_within(default, compiler)
    assert [a.scheduled_peak_bytes for a in outcome.report.verification] == [20 * MiB, default]
    assert outcome is compiler.outcomes[1] and outcome.scheduled_peak_bytes == default


def test_a_shallower_plan_over_the_cap_is_not_kept_and_bounds_the_next_try():
    # 30 is predicted within the cap but schedules over it; 25, the next plan down, is tried next and fits
    scheduled = {10 * MiB: 10 * MiB, 20 * MiB: 20 * MiB, 25 * MiB: 26 * MiB, 30 * MiB: 33 * MiB}
    compiler = _Compiler(list(scheduled), error=scheduled.__getitem__, knob_aim=21 * MiB)
    outcome = compile_within(30 * MiB, compiler)
    assert [a.predicted_peak_bytes for a in outcome.report.verification] == [20 * MiB, 30 * MiB, 25 * MiB]
    assert outcome is compiler.outcomes[2] and outcome.scheduled_peak_bytes == 26 * MiB
