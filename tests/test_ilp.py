"""The exact ILP against the min cut: same objective, same optimum, valid plans.

Real joint graphs (the tests' models in rematpass/zoo.py, captured as the partitioner
sees them) and random DAGs drawn by hypothesis. Under a byte target between
two hull points the ILP (tests/oracles.py) can beat the lambda search; the gap
is printed (run with ``-s``) and recorded as a junit property.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import assert_close_grads, cheap_backend, clone, compiled_step, train_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import compare_with_hull, plan_for_bytes, solve_ilp_budget

import rematpass
import rematpass.planner as planner_module
from rematpass.passes.evaluate import budget_time, quantized_objective, violations
from rematpass.passes.fastest import fastest_plan
from rematpass.passes.flow import InfeasibleCut
from rematpass.passes.ilp import INFEASIBLE, ILPFallbackWarning, ilp_plan, solve_ilp
from rematpass.passes.mincut import CutNetwork
from rematpass.passes.plan import Cut, CutProblem
from rematpass.passes.synthetic import BACKWARD_ONLY, FORWARD, INPUT, SyntheticGraph
from rematpass.zoo import ConvBN, ResidualMLP, TinyGPT

LAMBDA_FRACTIONS = (1e-7, 1e-3, 0.3, 1.0, 30.0)


# ---------------------------------------------------------------- real graphs


def _capture_problems(model, inputs):
    """Compile one training step; return [(CutProblem, default lambda)] the partitioner solved."""
    seen = []
    real = planner_module.fastest_plan

    def recorder(problem, lam_default):
        seen.append((problem, lam_default))
        return real(problem, lam_default)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(planner_module, "fastest_plan", recorder)
        compiled_step(model, inputs, cheap_backend(time_tolerance=0))  # the fastest plan, through fastest_plan
    torch._dynamo.reset()
    return seen


@pytest.fixture(scope="module")
def real_problems():
    torch.manual_seed(0)
    found = {}
    for name, model, inputs in [
        ("ResidualMLP", ResidualMLP(depth=3), (ResidualMLP.example(),)),
        ("ConvBN", ConvBN(), (ConvBN.example(),)),
        ("TinyGPT", TinyGPT(layers=2, dropout=0.1), None),
    ]:
        inputs = inputs or (model.example(),)
        problems = _capture_problems(model, inputs)
        assert problems, f"{name}: the partitioner never solved"
        found[name] = problems[0]
    return found


def _check_same_optimum(problem: CutProblem, lam: float):
    network = CutNetwork(problem)
    flow = network.min_cut(lam)
    cut = network.solve(lam)
    ilp = solve_ilp(problem, lam, time_limit=30)
    assert ilp.optimal, ilp.message
    assert violations(problem, cut) == []
    assert violations(problem, ilp.cut) == []
    mincut_value = quantized_objective(problem, lam, cut, network)
    # The min cut's value, the plan it decodes to, and the ILP optimum agree to the unit.
    assert mincut_value == flow.value == ilp.objective
    assert quantized_objective(problem, lam, ilp.cut, network) == ilp.objective
    return cut, ilp


@pytest.mark.parametrize("name", ["ResidualMLP", "ConvBN", "TinyGPT"])
def test_ilp_optimum_equals_min_cut_on_real_graphs(real_problems, name):
    problem, lam_default = real_problems[name]
    assert problem.summary.num_nodes > 50
    for fraction in LAMBDA_FRACTIONS:
        _check_same_optimum(problem, lam_default * fraction)


def _target_between_hull_points(problem: CutProblem, lam_default: float) -> float | None:
    """A byte target strictly inside a hull edge near the middle, or None if the hull is one point."""
    plan = plan_for_bytes(problem, lam_default, lambda least, default: least + 0.5 * (default - least))
    points = sorted({(b, t) for _, b, t in plan.hull})
    lower = [p for p in points if p[0] <= plan.cut.saved_bytes]
    upper = [p for p in points if p[0] > plan.cut.saved_bytes]
    if not lower or not upper:
        return None
    return 0.5 * (lower[-1][0] + upper[0][0])


def _check_budget_gap(problem: CutProblem, lam_default: float, target: float):
    gap = compare_with_hull(problem, lam_default, target, time_limit=30)
    assert violations(problem, gap.hull) == [] and violations(problem, gap.ilp) == []
    assert gap.hull.saved_bytes <= target and gap.ilp.saved_bytes <= target
    # Exact, in the integer units both plans are priced in: the optimum is never worse.
    assert gap.ilp_recompute <= gap.hull_recompute
    assert gap.gap >= -1e-12 * max(gap.hull_seconds, 1e-300)
    return gap


@pytest.mark.parametrize("name", ["ResidualMLP", "TinyGPT"])
def test_budget_between_hull_points_reports_gap_on_real_graphs(real_problems, name, record_property):
    problem, lam_default = real_problems[name]
    target = _target_between_hull_points(problem, lam_default)
    assert target is not None, "the hull has a single point"
    gap = _check_budget_gap(problem, lam_default, target)
    print(f"\n{name} ({problem.summary.num_nodes} candidates): {gap}")
    record_property("budget_gap", str(gap))


def test_ilp_solver_knob_trains_like_eager():
    torch.manual_seed(0)
    model = TinyGPT(layers=2)
    x = model.example()
    expected = train_step(clone(model), (x,))
    for budget in (None, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ILPFallbackWarning)
            actual = compiled_step(clone(model), (x,), cheap_backend(solver="ilp", memory_budget=budget))
        assert_close_grads(expected, actual)
        report = rematpass.recent_reports()[-1]
        assert report.num_solves >= 1


def test_ilp_time_limit_falls_back_to_min_cut_with_warning(real_problems):
    problem, lam_default = real_problems["TinyGPT"]
    mincut = fastest_plan(problem, lam_default)
    with pytest.warns(ILPFallbackWarning, match="min-cut plan"):
        plan = ilp_plan(problem, lam_default, time_limit=1e-9)
    assert plan.solver == "mincut" and plan.cut.same_plan(mincut.cut)
    exact = ilp_plan(problem, lam_default, time_limit=30)
    assert exact.solver == "ilp" and exact.num_solves == mincut.num_solves
    assert exact.cut.objective(lam_default) == pytest.approx(mincut.cut.objective(lam_default), rel=1e-6)


def test_violations_catches_a_broken_plan(real_problems):
    problem, lam_default = real_problems["ResidualMLP"]
    cut = CutNetwork(problem).solve(lam_default)
    needed = np.flatnonzero(problem.summary.needed_by_backward & cut.saved & (problem.summary.kind == FORWARD))
    assert len(needed)
    saved = cut.saved.copy()
    saved[needed[0]] = False
    broken = Cut(cut.lam, saved, cut.recomputed, cut.in_backward, cut.saved_bytes, cut.time_cost)
    found = violations(problem, broken)
    assert any("neither saved nor computed" in v for v in found) and any("saved_bytes" in v for v in found)


# ---------------------------------------------------------------- random DAGs


@st.composite
def random_problems(draw, max_nodes: int = 28):
    """A random joint-graph summary whose rules always admit a plan.

    Inputs may only be saved; other nodes may be banned from saving or from
    recomputation but never both, so whatever the backward reads can be saved
    or rebuilt from saved values. Forward nodes read only inputs and forward
    nodes, like AOTAutograd's required forward set.
    """
    n = draw(st.integers(3, max_nodes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_inputs = draw(st.integers(1, max(1, n // 3)))
    p_edge = draw(st.sampled_from([0.1, 0.25, 0.5]))
    kind = np.full(n, FORWARD, dtype=np.int8)
    kind[:n_inputs] = INPUT
    kind[n_inputs:][rng.random(n - n_inputs) < 0.25] = BACKWARD_ONLY
    src, dst = [], []
    for v in range(n_inputs, n):
        allowed = [u for u in range(v) if kind[v] != FORWARD or kind[u] != BACKWARD_ONLY]
        chosen = [u for u in allowed if rng.random() < p_edge] or [int(rng.choice(allowed))]
        src += chosen
        dst += [v] * len(chosen)
    is_static = (kind == INPUT) & (rng.random(n) < 0.4)
    no_recompute, no_save = [], []
    for v in range(n):
        r = rng.random()
        if kind[v] == INPUT:
            no_recompute.append("input"), no_save.append(None)
        else:
            no_recompute.append("random op" if r < 0.1 else None)
            no_save.append("view" if 0.1 <= r < 0.3 else None)
    recomputable = np.array([reason is None for reason in no_recompute])
    must = recomputable & (kind == FORWARD) & (rng.random(n) < 0.05)
    needed = (rng.random(n) < 0.35) & (kind != BACKWARD_ONLY)
    needed[n - 1] |= kind[n - 1] != BACKWARD_ONLY
    save_bytes = np.where(is_static, 0.0, rng.integers(1, 10_000, n).astype(float))
    save_bytes[rng.random(n) < 0.1] = 0.0  # free values (sizes, scalars)
    recompute = rng.choice([0.0, 1e-9, 1e-7, 1e-6, 1e-5], n) * rng.random(n)
    recompute[kind != FORWARD] = 0.0
    g = SyntheticGraph()
    g.nodes(
        kind, save_bytes, recompute, no_recompute=no_recompute, no_save=no_save, static=is_static, must_recompute=must
    )
    g.edges(src, dst)
    g.needed_by_backward(needed)
    return g.problem()


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(random_problems())
def test_ilp_optimum_equals_min_cut_on_random_dags(problem):
    for lam in (1e2, 1e6, 1e9, 1e12):
        _check_same_optimum(problem, lam)


@FAST
@given(random_problems(), st.floats(0.05, 0.95))
def test_budget_ilp_never_worse_than_hull_on_random_dags(problem, where):
    lam_default = 1e10
    network = CutNetwork(problem)
    least, default = network.solve(lam_default * 1e-7), network.solve(lam_default)
    target = least.saved_bytes + where * (default.saved_bytes - least.saved_bytes)
    _check_budget_gap(problem, lam_default, target)
    # With room for everything the default plan saves, the ILP recomputes no more than it.
    roomy = solve_ilp_budget(problem, default.saved_bytes, time_limit=30)
    assert roomy.optimal and roomy.objective <= budget_time(problem, default)


@FAST
@given(random_problems())
def test_search_between_known_plans_matches_a_full_solve(problem):
    """The budget search merges what two plans agree on; on these graphs that loses nothing."""
    network = CutNetwork(problem)
    low, high = network.min_cut(1e3).source_side, network.min_cut(1e12).source_side
    lam = 1e7
    merged = network.min_cut(lam, (low, high))
    full = network.min_cut(lam)
    # Equal up to quantisation, which may break the nesting by a unit here and there.
    assert full.value <= merged.value <= full.value * (1 + 1e-6) + 1
    assert violations(problem, network.solve(lam)) == []


def test_infeasible_rules_are_reported_by_both_solvers():
    g = SyntheticGraph()
    x, a = g.node(INPUT, 1.0, 1e-6), g.node(FORWARD, 1.0, 1e-6)
    b = g.node(FORWARD, 1.0, 1e-6, no_recompute="random op", no_save="not a tensor")
    g.chain(x, a, b)
    g.needed_by_backward(b)
    problem = g.problem()
    with pytest.raises(InfeasibleCut):
        CutNetwork(problem).solve(1.0)
    result = solve_ilp(problem, 1.0)
    assert result.status == INFEASIBLE and result.cut is None
    assert solve_ilp_budget(problem, 10.0).status == INFEASIBLE
