"""Peak memory: the liveness simulator against measured peaks, and the peak-aware budget."""

import numpy as np
import pytest
import torch
from helpers import cheap_backend, clone, freeing_compiler
from module_liveness import simulate_step

import rematpass
from rematpass.budget import Fraction
from rematpass.measure import peak_memory
from rematpass.passes.liveness import inductor_materialized
from rematpass.passes.op_facts import aliased_input
from rematpass.zoo import ResidualMLP, TinyGPT


def _graphs(fn, *args):
    """The forward and backward graphs of ``fn`` as AOTAutograd splits them, with no recomputation."""
    from functorch.compile import aot_function, default_partition

    graphs = {}

    def keep(name):
        def compiler(gm, example_inputs):
            graphs[name] = gm
            return gm

        return compiler

    def partition(joint, inputs, **kwargs):
        graphs["num_fwd_outputs"] = kwargs["num_fwd_outputs"]
        return default_partition(joint, inputs, **kwargs)

    compiled = aot_function(fn, fw_compiler=keep("fw"), bw_compiler=keep("bw"), partition_fn=partition)
    compiled(*args).sum().backward()
    return graphs


def test_views_alias_and_storages_die_after_their_last_reader():
    def fn(x):
        a = x * 2  # 4 KiB, dies after b
        b = a.view(-1).sin()  # the view shares a's storage
        return b.cos()

    x = torch.randn(32, 32, requires_grad=True)
    g = _graphs(fn, x)
    view = next(n for n in g["fw"].graph.nodes if n.target is torch.ops.aten.view.default)
    assert aliased_input(view) is view.args[0]
    estimate = simulate_step(g["fw"], g["bw"], num_fwd_outputs=g["num_fwd_outputs"])
    kib = 32 * 32 * 4
    # Forward: a (x*2), then sin(a) while a lives, then cos: at most three 4 KiB buffers.
    assert estimate.forward_peak == 3 * kib
    assert estimate.peak_bytes >= estimate.boundary_bytes >= kib


def test_a_multi_output_op_writes_its_outputs_while_its_inputs_are_alive():
    def fn(x):
        values, indices = torch.sort(x.sin(), dim=1)  # sin dies at the sort
        return values.sum() + indices.sum()

    x = torch.randn(32, 32, requires_grad=True)
    g = _graphs(fn, x)
    estimate = simulate_step(g["fw"], g["bw"], num_fwd_outputs=g["num_fwd_outputs"])
    kib = 32 * 32 * 4
    # sin, the sorted values and the int64 indices at once, not sin freed before the sort writes
    assert estimate.forward_peak == kib + kib + 2 * kib


def test_inductor_materialization_skips_fused_pointwise():
    def fn(x, w):
        return (torch.relu(x * 2 + 1) @ w).sum()

    x, w = torch.randn(8, 8, requires_grad=True), torch.randn(8, 8, requires_grad=True)
    g = _graphs(fn, x, w)
    nodes = {n.target: n for n in g["fw"].graph.nodes if n.op == "call_function"}
    assert not inductor_materialized(nodes[torch.ops.aten.mul.Tensor])  # fused into add
    assert inductor_materialized(nodes[torch.ops.aten.relu.default])  # read by the matmul
    assert inductor_materialized(nodes[torch.ops.aten.mm.default])


def test_a_pointwise_value_a_matmul_reads_through_a_view_gets_a_buffer():
    """Inductor realizes a pointwise value when a matmul reads a view of it (a recomputed GELU
    reshaped for the weight gradient's mm); the peak model missed that buffer on a ViT."""

    def fn(x, w):
        return ((x * 2 + 1).view(16, 4) @ w).sum()

    # w needs no gradient, so the backward saves nothing of the forward: only the mm reads the add
    x, w = torch.randn(8, 8, requires_grad=True), torch.randn(4, 4)
    g = _graphs(fn, x, w)
    nodes = {n.target: n for n in g["fw"].graph.nodes if n.op == "call_function"}
    assert not inductor_materialized(nodes[torch.ops.aten.mul.Tensor])  # fused into the add
    assert inductor_materialized(nodes[torch.ops.aten.add.Tensor])  # the mm reads its view


def test_layout_optimization_adds_the_channels_last_copies_of_convolution_inputs(joint_graphs):
    """Under Inductor's layout optimization a convolution copies its graph inputs (image, weights)
    to channels-last and the forward keeps the copies for the backward, which holds them as it holds
    parameters, to its end: the predicted step holds exactly their bytes more from the forward's
    end on (a full-size ResNet-50 read 5% low while the backward freed each copy after its last
    reader)."""
    from helpers import analysed
    from torch._inductor.virtualized import V

    from rematpass.passes.joint_liveness import channels_last_copied
    from rematpass.planner import PeakPredictor

    a = analysed(joint_graphs[1])  # the conv net with BatchNorm
    copied = channels_last_copied(a.gm.graph.nodes)
    shapes = sorted(tuple(p.meta["val"].shape) for p in copied)
    assert shapes == [(4, 3, 16, 16), (8, 3, 3, 3), (8, 8, 3, 3), (8, 8, 3, 3)]  # the image and 3 weights
    copies = sum(p.meta["val"].numel() * 4 for p in copied)
    with V.set_fake_mode(a.fake):
        args = (a.gm, a.summary, a.roles, a.kwargs["num_fwd_outputs"], "fused")
        plain = PeakPredictor(*args).joint_estimate(_default_cut(a))
        with_copies = PeakPredictor(*args, layout_copies=True).joint_estimate(_default_cut(a))
    assert with_copies.boundary_bytes == plain.boundary_bytes + copies
    assert with_copies.peak_phase == plain.peak_phase == "backward"
    assert with_copies.peak_bytes == plain.peak_bytes + copies


def test_a_cpu_convolution_backward_holds_two_weights_of_scratch(joint_graphs):
    from rematpass.inductor_hooks import workspace_bytes

    a = joint_graphs[1]["joint"]  # the conv net with BatchNorm
    backward = [n for n in a.graph.nodes if n.target is torch.ops.aten.convolution_backward.default]
    assert backward
    for node in backward:
        assert workspace_bytes(node) == 2 * node.args[2].meta["val"].numel() * 4
    assert all(workspace_bytes(n) == 0 for n in a.graph.nodes if n not in backward)


def _default_cut(a):
    from rematpass.passes.mincut import CutNetwork

    return CutNetwork(a.table.problem(a.summary)).solve(a.table.default_lambda)


def _measured_and_predicted(model, x, budget):
    torch._dynamo.reset()
    rematpass.clear_reports()
    knobs = {"peak_model": "unfused"} if budget is None else {"peak_model": "unfused", "memory_budget": budget}
    compiled = torch.compile(model, backend=cheap_backend(compiler=freeing_compiler, **knobs))
    compiled(x).backward()
    measured = peak_memory(lambda: compiled(x).backward())
    return measured, rematpass.recent_reports()[-1].predicted_peak_bytes


@pytest.mark.parametrize("make", [ResidualMLP, TinyGPT], ids=["mlp", "gpt"])
def test_simulator_predicts_measured_peak_of_op_by_op_execution(make):
    torch.manual_seed(0)
    model = make()
    x = model.example(16)
    for budget in (None, 0.5, 0.0):
        measured, predicted = _measured_and_predicted(clone(model), x, budget)
        assert predicted == pytest.approx(measured, rel=0.02), (budget, measured, predicted)


@pytest.mark.slow
def test_predicted_peak_never_rises_as_budget_falls():
    torch.manual_seed(0)
    model = TinyGPT()
    x = model.example(16)
    predicted = [_measured_and_predicted(clone(model), x, b)[1] for b in (None, 0.8, 0.5, 0.3, 0.1, 0.0)]
    assert predicted == sorted(predicted, reverse=True), predicted


@pytest.mark.inductor
@pytest.mark.slow
def test_inductor_measured_peak_never_rises_as_budget_falls_and_stays_below_eager():
    """Real Inductor: the decomposed backward only beats eager's fused kernels once Inductor fuses it."""
    torch.manual_seed(0)
    model = TinyGPT(layers=1, dim=64, seq=64)
    x = model.example(8)
    eager_model = clone(model)
    eager_model(x).backward()
    eager_peak = peak_memory(lambda: eager_model(x).backward())
    peaks = []
    for budget in (None, 0.0):
        torch._dynamo.reset()
        options = {"strict": True} if budget is None else {"strict": True, "memory_budget": budget}
        compiled = torch.compile(clone(model), backend="remat", options=options)
        compiled(x).backward()
        peaks.append(peak_memory(lambda: compiled(x).backward()))
    assert peaks == sorted(peaks, reverse=True), peaks
    assert peaks[0] <= eager_peak, (peaks, eager_peak)
    assert peaks[-1] < 0.8 * eager_peak, (peaks, eager_peak)


@pytest.fixture(scope="module")
def joint_graphs():
    from helpers import standard_joint_graphs

    return standard_joint_graphs()


@pytest.mark.parametrize("peak_model", ["fused", "unfused"])
@pytest.mark.slow
def test_joint_model_predicts_the_peak_of_the_extracted_modules(joint_graphs, peak_model):
    """The array simulation on the joint graph gives, for every hull plan, the peak the
    node-by-node simulator gives on the modules the partition really returns."""
    from helpers import analysed
    from torch._inductor.virtualized import V

    from rematpass.passes import torch_extract
    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork
    from rematpass.planner import PeakPredictor

    compared = differing_plans = 0
    for captured in joint_graphs:
        a = analysed(captured)
        gm, kwargs, roles, summary, table = a.gm, a.kwargs, a.roles, a.summary, a.table
        with V.set_fake_mode(a.fake):
            predictor = PeakPredictor(gm, summary, roles, kwargs["num_fwd_outputs"], peak_model)
            lam = table.default_lambda
            plans = walk_hull(CutNetwork(table.problem(summary)), [lam * 1e-7, lam]).vertices
            peaks = set()
            for cut in plans:
                saved = [n for n, keep in zip(summary.nodes, cut.saved) if keep]
                fw, bw = torch_extract.extract_forward_backward(gm, saved, roles, kwargs["num_fwd_outputs"])
                materialized = inductor_materialized if peak_model == "fused" else (lambda *_: True)
                expected = simulate_step(fw, bw, num_fwd_outputs=kwargs["num_fwd_outputs"], materialized=materialized)
                got = predictor.joint_estimate(cut)
                assert (got.peak_bytes, got.boundary_bytes, got.forward_peak) == (
                    expected.peak_bytes,
                    expected.boundary_bytes,
                    expected.forward_peak,
                ), (peak_model, len(saved))
                peaks.add(got.peak_bytes)
                compared += 1
            differing_plans += len(peaks) > 1
    assert compared >= 6 and differing_plans, "plans with different peaks are needed for this test to mean anything"


@pytest.fixture(scope="module")
def six_layer_problem():
    """A residual MLP of six identical layers: its hull vertices switch all six at once."""
    from helpers import analysed, capture_joint_graph

    torch.manual_seed(0)
    a = analysed(capture_joint_graph(ResidualMLP(depth=6), (ResidualMLP.example(),)))
    return a.table.problem(a.summary), a.table.default_lambda


def test_plans_between_hull_vertices_tie_at_the_breakpoint_and_nest(six_layer_problem):
    import numpy as np

    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork

    problem, lam_default = six_layer_problem
    network = CutNetwork(problem)
    hull = walk_hull(network, [lam_default * 1e-7, lam_default]).vertices
    filled = 0
    for more, less in zip(hull, hull[1:]):
        lam = (more.saved_bytes - less.saved_bytes) / (less.time_cost - more.time_cost)
        between = [c for c in network.plans_between(lam, 8) if less.saved_bytes < c.saved_bytes < more.saved_bytes]
        for cut in between:  # optimal at the breakpoint, like both ends
            assert cut.objective(lam) == pytest.approx(more.objective(lam), rel=1e-6)
        for earlier, later in zip(between, between[1:]):  # each adds to the last: less recomputed
            assert later.saved_bytes >= earlier.saved_bytes
            assert not np.any(later.recomputed & ~earlier.recomputed)
        filled += len(between) >= 2
    assert filled, "no hull edge was filled in: six identical layers should give plans in between"


def test_budgets_choose_plans_between_hull_vertices(six_layer_problem):
    """Budgets reach plans that recompute some of the identical layers, not only all or none."""
    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork
    from rematpass.planner import plan_for_peak

    problem, lam_default = six_layer_problem
    vertices = {
        round(c.saved_bytes) for c in walk_hull(CutNetwork(problem), [lam_default * 1e-7, lam_default]).vertices
    }

    def fake_peak(cut):  # peak falls with saved bytes: every plan is on the frontier
        return int(cut.saved_bytes) + 1_000_000

    chosen = [plan_for_peak(problem, lam_default, Fraction(b), fake_peak).plan.cut for b in (0.9, 0.7, 0.5, 0.3, 0.1)]
    saved = [c.saved_bytes for c in chosen]
    assert saved == sorted(saved, reverse=True)
    assert any(round(s) not in vertices for s in saved), (saved, sorted(vertices))


def test_a_fractions_check_climbs_only_to_plans_the_fraction_allows(six_layer_problem):
    """When a fraction's schedule comes out over its prediction, rematpass.verify climbs to
    shallower plans by aiming at their predicted peaks. The aimed plan must be one the fraction
    allows, at most as deep as its own: planned as a peak cap, an aim could pick a deeper plan
    than the fraction's (ViT at 0.5 kept one that spent 1.57x the fraction's allowance)."""
    import hashlib

    from rematpass.planner import plan_for_peak

    problem, lam_default = six_layer_problem

    def bumpy_peak(cut):  # some deeper plans peak lower than their shallower neighbours
        bump = int(hashlib.sha256(cut.saved.tobytes()).hexdigest(), 16) % 400_000
        return int(cut.saved_bytes) + 1_000_000 + bump

    climbed = 0
    for budget in (0.7, 0.5, 0.3):
        own = plan_for_peak(problem, lam_default, Fraction(budget), bumpy_peak).plan.cut
        for aim in range(bumpy_peak(own), bumpy_peak(own) + 3_000_000, 100_000):
            aimed = plan_for_peak(problem, lam_default, Fraction(budget), bumpy_peak, aim=aim).plan.cut
            assert aimed.time_cost <= own.time_cost * (1 + 1e-9), (budget, aim)
            assert bumpy_peak(aimed) <= aim
            climbed += aimed.time_cost < own.time_cost
    assert climbed, "some aim must reach a shallower plan"


def test_default_takes_the_least_peak_within_the_time_tolerance(six_layer_problem):
    from rematpass.passes.fastest import fastest_plan
    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork
    from rematpass.planner import plan_for_peak, plan_for_speed

    problem, lam_default = six_layer_problem

    def fake_peak(cut):  # peak falls with saved bytes: every plan is on the frontier
        return int(cut.saved_bytes) + 1_000_000

    fastest = fastest_plan(problem, lam_default).cut
    assert plan_for_speed(problem, lam_default, fake_peak, 0.0).plan.cut.same_plan(fastest)
    hull = walk_hull(CutNetwork(problem), [lam_default * 1e-7, lam_default]).vertices

    def seconds(cut):  # what the fastest plan minimises: time cost plus reading saved bytes back
        return cut.objective(lam_default) / lam_default

    span = max(seconds(c) for c in hull) - seconds(fastest)
    previous = fastest
    for share in (0.01, 0.1, 0.3, 1.0):
        cut = plan_for_speed(problem, lam_default, fake_peak, share * span).plan.cut
        assert seconds(cut) <= (seconds(fastest) + share * span) * (1 + 1e-9)
        assert fake_peak(cut) <= fake_peak(previous)  # more slack never peaks higher
        previous = cut
    assert previous.saved_bytes < fastest.saved_bytes, "slack over the whole hull must buy a lower peak"
    # No fraction peaks above the default that has the same slack.
    default = plan_for_speed(problem, lam_default, fake_peak, 0.3 * span).plan.cut
    for budget in (0.9, 0.5, 0.1):
        chosen = plan_for_peak(problem, lam_default, Fraction(budget), fake_peak, 0.3 * span).plan.cut
        assert fake_peak(chosen) <= fake_peak(default)


def test_default_plan_reports_what_it_recomputes_for_its_peak():
    torch.manual_seed(0)
    model = ResidualMLP()
    x = ResidualMLP.example()
    fastest = _report(clone(model), x, time_tolerance=0)
    default = _report(clone(model), x)
    assert default.predicted_peak_bytes <= fastest.predicted_peak_bytes
    if default.saved_bytes != fastest.saved_bytes:
        moved = [n for n in default.nodes if n.reason_kind == "for_lower_peak"]
        assert moved and all(n.decision == "recomputed" for n in moved)
        assert not any(n.reason_kind == "forced_by_budget" for n in default.nodes)
    wide = _report(clone(model), x, time_tolerance=0.5)
    assert wide.predicted_peak_bytes <= default.predicted_peak_bytes


def _report(model, x, **knobs):
    from helpers import compiled_step

    compiled_step(model, (x,), cheap_backend(**knobs))
    return rematpass.recent_reports()[-1]


def _point(saved_bytes, flops, peak, recompute_seconds=0.0):
    import numpy as np

    from rematpass.passes.peak import PeakPoint
    from rematpass.passes.plan import Cut

    recomputed = np.array([flops > 0])
    cut = Cut(0.0, np.array([True]), recomputed, recomputed, float(saved_bytes), recompute_seconds)
    return PeakPoint(cut, peak), flops


def _flops_table(*points):
    table = {id(p.cut): flops for p, flops in points}
    return [p for p, _ in points], lambda cut: table[id(cut)]


def test_recompute_allowance_prices_the_byte_cap_on_the_convex_hull():
    import math

    from rematpass.passes.peak import recompute_allowance

    points, flops_of = _flops_table(
        _point(100, 0, 10),
        _point(50, 10, 8),
        _point(0, 100, 5),
        _point(60, 30, 9),  # above the hull: never the price
    )
    assert recompute_allowance(points, 100, flops_of) == (0, True)
    assert recompute_allowance(points, 75, flops_of) == (pytest.approx(5), True)
    assert recompute_allowance(points, 60, flops_of) == (pytest.approx(8), True)
    assert recompute_allowance(points, 50, flops_of) == (pytest.approx(10), True)
    assert recompute_allowance(points, 25, flops_of) == (pytest.approx(55), True)
    assert recompute_allowance(points, -1, flops_of) == (math.inf, False)


def test_one_op_between_two_plans_is_paid_whole():
    """A fractional price between plans that differ by one convolution would buy part of it; a
    0/1 knapsack (PyTorch's default) cannot, so neither does the allowance."""
    from rematpass.passes.peak import recompute_allowance

    points, flops_of = _flops_table(_point(100, 0, 10), _point(50, 10, 8))
    saves_all, saves_less = (p.cut for p in points)
    for ops, price in (({7}, 10), ({7, 8}, 5)):
        table = {id(saves_all): frozenset(), id(saves_less): frozenset(ops)}
        assert recompute_allowance(points, 75, flops_of, lambda cut: table[id(cut)]) == (pytest.approx(price), True)
    assert recompute_allowance(points, 75, flops_of) == (pytest.approx(5), True)  # no op sets: fractional


def test_least_peak_within_spends_the_allowance_on_the_peak():
    from rematpass.passes.peak import least_peak_within

    points, flops_of = _flops_table(
        _point(100, 0, 10),
        _point(70, 0, 9, recompute_seconds=2.0),
        _point(80, 0, 9, recompute_seconds=1.0),
        _point(50, 10, 8),
        _point(0, 100, 5),
    )
    chosen = [least_peak_within(points, allowance, flops_of) for allowance in (0, 9, 10, 100)]
    assert [p.peak for p in chosen] == [9, 9, 8, 5]
    assert chosen[0].cut.saved_bytes == 80  # equal peaks: the one that recomputes less


def test_a_fraction_does_not_recompute_more_for_a_peak_the_predictor_cannot_tell_apart():
    """A plan that a shallower one matches to within PEAK_TIE of its peak is left out."""
    from rematpass.passes.peak import PEAK_TIE, least_peak_within

    close = 1_000_000 * (1 + PEAK_TIE / 2)
    far = 1_000_000 * (1 + PEAK_TIE * 2)
    for shallower_peak, kept_saved in ((close, 80), (far, 50)):
        points, flops_of = _flops_table(
            _point(80, 5, int(shallower_peak), recompute_seconds=1.0),
            _point(50, 10, 1_000_000, recompute_seconds=2.0),
        )
        assert least_peak_within(points, 10, flops_of).cut.saved_bytes == kept_saved


@pytest.mark.parametrize("make", [ResidualMLP, TinyGPT], ids=["mlp", "gpt"])
def test_fractions_recompute_no_more_flops_than_pytorchs_budget_at_the_same_number(make):
    """A fraction is PyTorch's budget scale priced in compute-bound FLOPs: never a costlier plan than its."""
    import copy

    from helpers import capture_joint_graph
    from torch._inductor.virtualized import V

    from rematpass.bench.partition_records import duplicated_work
    from rematpass.config import resolve
    from rematpass.partitioner import RematPartitioner
    from rematpass.passes import torch_internals as ti

    torch.manual_seed(0)
    model = make()
    captured = capture_joint_graph(model, (model.example(),))
    spent = {}
    for budget in (0.8, 0.5, 0.3, 0.1):
        for who in ("pytorch", "rematpass"):
            gm = copy.deepcopy(captured["joint"])
            with V.set_fake_mode(captured["fake"]):
                if who == "pytorch":
                    with torch._functorch.config.patch(activation_memory_budget=budget):
                        fw, bw = ti.torch_min_cut_partition(gm, [], **captured["kwargs"])
                else:
                    fw, bw = RematPartitioner(resolve({"memory_budget": budget}))(gm, [], **captured["kwargs"])
            spent[who, budget] = duplicated_work(fw, bw)["recompute_flops"]
    assert all(spent["rematpass", b] <= spent["pytorch", b] for b in (0.8, 0.5, 0.3, 0.1)), sorted(spent.items())
    assert spent["rematpass", 0.1] > 0, "the lowest budget should recompute a matmul"


def _layers_problem(layers: int = 6, sizes: tuple[float, ...] | None = None):
    """``layers`` independent matmuls, each saved (100 bytes) or recomputed (1 s, 1 GFLOP) from a
    parameter, or ``sizes`` times that each: every split of them is a plan, and the hull only has
    all-saved and all-recomputed."""

    from rematpass.passes.plan import CutProblem
    from rematpass.passes.synthetic import FORWARD, INPUT, SyntheticGraph

    g = SyntheticGraph()
    for size in sizes or (1.0,) * layers:
        weight = g.node(INPUT, static=True)
        product = g.node(FORWARD, bytes=100.0 * size, cost=1.0 * size)
        g.edge(weight, product)
        g.needed_by_backward(product)
    base = g.problem()
    flops = base.recompute_seconds * 1e9
    return CutProblem(base.summary, base.save_bytes, base.recompute_seconds, recompute_flops=flops)


def test_split_by_ops_recomputes_the_earliest_of_the_ops_between_two_hull_vertices():
    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork
    from rematpass.passes.peak import split_by_ops

    problem = _layers_problem(layers=12)  # 11 sums: more than ALL_LEVELS, so ``count`` spreads
    network = CutNetwork(problem)
    hull = walk_hull(network, [1e-3, 1e3]).vertices
    assert [c.saved_bytes for c in hull] == [1200.0, 0.0]
    plans = split_by_ops(network, hull, problem.compute_ops_of, problem.budget_spend, count=4)
    assert len(plans) == 4
    everything = sorted(problem.compute_ops_of(hull[-1]))
    for cut in plans:
        ops = sorted(problem.compute_ops_of(cut))
        assert 0 < len(ops) < len(everything)
        assert ops == everything[: len(ops)], "the latest ops are the ones kept out of the backward"
        assert cut.saved_bytes == 1200.0 - 100.0 * len(ops)
    # Kept out of the backward means saved, never dropped: every plan is a valid split.
    assert sorted(c.saved_bytes for c in plans) == sorted({c.saved_bytes for c in plans})


def test_split_by_ops_has_a_plan_for_every_sum_a_knapsack_can_pay():
    """One small op and two large ones: recomputing the two large ones alone (a sum no prefix of
    the ops in order reaches) is a plan too, as PyTorch's 0/1 knapsack can choose it."""
    from rematpass.passes.hull import walk_hull
    from rematpass.passes.mincut import CutNetwork
    from rematpass.passes.peak import split_by_ops

    problem = _layers_problem(sizes=(1.0, 4.0, 4.0))
    network = CutNetwork(problem)
    hull = walk_hull(network, [1e-3, 1e3]).vertices
    assert [c.saved_bytes for c in hull] == [900.0, 0.0]
    plans = split_by_ops(network, hull, problem.compute_ops_of, problem.budget_spend)
    spends = sorted(problem.budget_spend_of(c) / 1e9 for c in plans)
    assert spends == pytest.approx([1.0, 4.0, 5.0, 8.0])
    two_large = next(c for c in plans if problem.budget_spend_of(c) == pytest.approx(8e9))
    assert two_large.saved_bytes == 100.0


def test_the_allowance_between_two_plans_is_what_whole_ops_between_them_sum_to():
    """Interpolating between plans three ops apart (1, 4 and 4 GFLOP) prices a target at part of
    an op; a 0/1 knapsack pays the least sum of whole ops that reaches it."""
    from rematpass.passes.peak import recompute_allowance

    points, flops_of = _flops_table(_point(900, 0, 10), _point(0, 9, 5))
    saves_all, saves_none = (p.cut for p in points)
    ops = {id(saves_all): frozenset(), id(saves_none): frozenset({0, 1, 2})}
    op_flops = np.array([1.0, 4.0, 4.0])
    for target, fractional, whole in ((850, 0.5, 1.0), (700, 2.0, 4.0), (350, 5.5, 8.0), (50, 8.5, 9.0)):
        assert recompute_allowance(points, target, flops_of) == (pytest.approx(fractional), True)
        priced = recompute_allowance(points, target, flops_of, lambda cut: ops[id(cut)], op_flops)
        assert priced == (pytest.approx(whole), True)


def test_a_fraction_pays_whole_ops_and_reaches_its_target():
    """ResNet-50 at 0.5 in small: five convolutions (1, 4, 4, 4 and 4 GFLOP) between the only two hull
    vertices. Cutting saved bytes to half needs 8.5 GFLOP of them; whole ops pay 9 (1 + 4 + 4), and
    the plan that pays it saves no more than half. A fractional price (8.5) bought only 5 (1 + 4),
    which left the plan above the target."""
    from rematpass.planner import plan_for_peak

    problem = _layers_problem(sizes=(1.0, 4.0, 4.0, 4.0, 4.0))

    def fake_peak(cut):  # peak falls with saved bytes
        return int(cut.saved_bytes) + 1_000

    chosen = plan_for_peak(problem, 1e3, Fraction(0.5), fake_peak).plan
    assert chosen.target_bytes == pytest.approx(850.0)
    assert problem.budget_spend_of(chosen.cut) == pytest.approx(9e9)
    assert chosen.cut.saved_bytes <= chosen.target_bytes


def test_fractions_reach_plans_between_hull_vertices_no_min_cut_holds():
    """A fraction spends whole ops: with six ops between the only two hull vertices, the fractions
    between pick plans that recompute some of them, and recompute more as the fraction falls."""
    from rematpass.planner import plan_for_peak

    problem = _layers_problem()

    def fake_peak(cut):  # peak falls with saved bytes
        return int(cut.saved_bytes) + 1_000

    spent = [
        problem.budget_spend_of(plan_for_peak(problem, 1e3, Fraction(b), fake_peak).plan.cut) for b in (0.9, 0.6, 0.3)
    ]
    assert spent == sorted(spent)
    assert any(0 < s < 6e9 for s in spent), spent
