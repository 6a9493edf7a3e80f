"""The graph passes alone: flow, the remat network, budget search, and the torch contract we rely on."""

import math

import numpy as np
import pytest
import torch
from helpers import analysed, capture_joint_graph, clone, compiled_step
from oracles import plan_for_bytes

import rematpass
from rematpass.passes import torch_extract
from rematpass.passes.flow import INT_INF, FlowNetwork, InfeasibleCut, quantize
from rematpass.passes.mincut import CutNetwork
from rematpass.passes.synthetic import FORWARD, INPUT, SyntheticGraph
from rematpass.zoo import ResidualMLP


def min_cut(num_vertices, tails, heads, capacity, source, sink):
    """One min cut; ``inf`` capacities may never be cut."""
    capacity = np.asarray(capacity, dtype=np.float64)
    return FlowNetwork(num_vertices, tails, heads, ~np.isfinite(capacity), source, sink).min_cut(capacity)


def solve_min_cut(problem, lam):
    return CutNetwork(problem).solve(lam)


def test_quantize_keeps_small_costs_positive_and_infinity_infinite():
    q, scale = quantize(np.array([1e-12, 1.0, 3.0, math.inf, 0.0]))
    assert q[0] >= 1 and q[-1] == 0 and q[3] == INT_INF
    assert q[1:3].sum() <= 2**30 and abs(q[2] / q[1] - 3.0) < 1e-6


def test_min_cut_value_and_smallest_source_side():
    # s->a (3), s->b (2), a->t (2), b->t (3), a->b (1): min cut 4 = {s->b, a->t} ... check value only.
    tails = np.array([0, 0, 2, 3, 2])
    heads = np.array([2, 3, 1, 1, 3])
    cut = min_cut(4, tails, heads, np.array([3.0, 2.0, 2.0, 3.0, 1.0]), 0, 1)
    assert cut.value / cut.scale == pytest.approx(5.0, rel=1e-6)
    assert cut.source_side[0] and not cut.source_side[1]


def test_infinite_path_is_reported():
    with pytest.raises(InfeasibleCut):
        min_cut(3, np.array([0, 2]), np.array([2, 1]), np.array([math.inf, math.inf]), 0, 1)


def _chain_problem(save_bytes, recompute_cost):
    """input -> a -> b -> c, the backward reads c only; every node may be saved or recomputed."""
    g = SyntheticGraph()
    nodes = [g.node(FORWARD if i else INPUT, b, c) for i, (b, c) in enumerate(zip(save_bytes, recompute_cost))]
    g.chain(*nodes)
    g.needed_by_backward(nodes[-1])
    return g.problem()


def test_cut_trades_bytes_against_lambda_times_time():
    problem = _chain_problem([100, 400, 50, 300], [0, 1.0, 10.0, 1.0])
    # Saving c costs 300; recomputing c from saved b costs 50 + lam; from a: 400 + ...; from input: 100 + 12 lam.
    assert solve_min_cut(problem, lam=1000.0).saved.tolist() == [False, False, False, True]
    cheap = solve_min_cut(problem, lam=10.0)
    assert cheap.saved.tolist() == [False, False, True, False] and cheap.recomputed.tolist() == [
        False,
        False,
        False,
        True,
    ]
    assert solve_min_cut(problem, lam=1.0).saved.tolist() == [False, False, True, False]
    least = solve_min_cut(problem, lam=1e-9)
    assert least.saved_bytes == 50


def test_budget_search_walks_the_hull_with_few_solves():
    problem = _chain_problem([100, 400, 50, 300], [0, 1.0, 10.0, 1.0])
    plan = plan_for_bytes(problem, lam_default=1000.0, budget=60.0)
    assert plan.cut.saved_bytes <= 60 and plan.budget_met
    assert plan.num_solves <= 4
    unmet = plan_for_bytes(problem, lam_default=1000.0, budget=10.0)
    assert not unmet.budget_met and unmet.cut.saved_bytes == 50


def test_torch_contract_forward_outputs_then_saved_and_backward_inputs_saved_then_tangents():
    torch.manual_seed(0)
    model = ResidualMLP(depth=2)
    a = analysed(capture_joint_graph(model, (model.example(),)))
    joint, kwargs, roles, summary, table = a.gm, a.kwargs, a.roles, a.summary, a.table
    assert roles.tangents_closure and roles.required_fw
    cut = solve_min_cut(table.problem(summary), table.default_lambda)
    saved = [n for n, keep in zip(summary.nodes, cut.saved) if keep and n.op != "placeholder"]
    saved += [n for n, keep in zip(summary.nodes, cut.saved) if keep and n.op == "placeholder"]
    saved = [n for n in joint.graph.nodes if n in set(saved)]
    assert any(n.op == "call_function" for n in saved)
    fw, bw = torch_extract.extract_forward_backward(joint, saved, roles, kwargs["num_fwd_outputs"])
    fw_outputs = list(fw.graph.nodes)[-1].args[0]
    saved_outputs = [o.name for o in fw_outputs[kwargs["num_fwd_outputs"] :]]
    assert sorted(saved_outputs) == sorted(n.name for n in saved)
    bw_inputs = [n.name for n in bw.graph.nodes if n.op == "placeholder"]
    assert bw_inputs[: len(saved)] == saved_outputs
    assert bw_inputs[len(saved) :] and all(name.startswith("tangents") for name in bw_inputs[len(saved) :])


def test_recomputation_is_placed_near_its_first_use_in_the_backward():
    torch.manual_seed(0)
    model = ResidualMLP(depth=3)
    x = model.example()
    fw_bw = {}
    from helpers import _eager_compiler

    def keep(gm, example_inputs):
        fw_bw.setdefault("graphs", []).append(gm)
        return _eager_compiler(gm, example_inputs)

    from torch._dynamo.backends.common import aot_autograd

    partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"memory_budget": 0.0, "strict": True}))
    compiled_step(clone(model), (x,), aot_autograd(fw_compiler=keep, bw_compiler=keep, partition_fn=partitioner))
    forward, backward = fw_bw["graphs"]
    nodes = [n for n in backward.graph.nodes if n.op == "call_function"]
    recomputed = {n.name for n in rematpass.recent_reports()[-1].recomputed_nodes()}
    positions = [i for i, n in enumerate(nodes) if n.name in recomputed]
    first_tangent_use = next(
        i for i, n in enumerate(nodes) if any(a.name.startswith("tangents") for a in n.all_input_nodes)
    )
    assert positions, "nothing was recomputed at budget 0"
    assert max(positions) > first_tangent_use, "all recomputation was hoisted to the start of the backward"
