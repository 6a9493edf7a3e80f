"""The fast paths agree with the slow ones they replace.

In-place CSE against PyTorch's copying ``fx_graph_cse``; a reused flow network
(scipy's Dinic) against networkx's max-flow, which PyTorch's partitioner uses; the vectorised "used by the backward" search
against the plain loop; the cost table's static-shape path against the
general one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import analysed, standard_joint_graphs
from torch._functorch.compile_utils import fx_graph_cse

from rematpass.cost import _hint, _tensor_bytes
from rematpass.passes import torch_extract
from rematpass.passes import torch_internals as ti
from rematpass.passes.flow import FlowNetwork, InfeasibleCut
from rematpass.passes.mincut import used_in_backward


@pytest.fixture(scope="module")
def joint_graphs():
    return standard_joint_graphs()


def test_cse_in_place_matches_fx_graph_cse(joint_graphs):
    from torch._inductor.virtualized import V

    erased = 0
    for captured in joint_graphs:
        with V.set_fake_mode(captured["fake"]):
            theirs = copy.deepcopy(captured["joint"]).graph
            ours = copy.deepcopy(captured["joint"]).graph
            theirs.eliminate_dead_code()
            ours.eliminate_dead_code()
            expected = fx_graph_cse(theirs)
            erased += ti.cse_in_place(ours)
            ours.lint()
            assert str(ours) == str(expected)
    assert erased > 0, "no duplicates in any graph: the test proves nothing"


def test_cost_table_matches_the_general_size_path(joint_graphs):
    for captured in joint_graphs:
        a = analysed(captured)
        for node, cost in zip(a.summary.nodes, a.table.costs):
            val = node.meta.get("val")
            raw = _tensor_bytes(val)
            assert cost.bytes == _hint(raw, val), node.name
            assert int(cost.bytes_expr) == cost.bytes


def _random_network(rng, n_vertices=40, n_edges=160):
    tails = rng.integers(0, n_vertices, n_edges)
    heads = rng.integers(0, n_vertices, n_edges)
    keep = tails != heads
    return tails[keep], heads[keep]


def _networkx_min_cut(n_vertices, tails, heads, caps):
    """networkx's max-flow (what PyTorch's partitioner uses) on the same network: its value, or
    None when an uncuttable path joins source and sink. Parallel edges add up."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(range(n_vertices))
    for tail, head, cap in zip(tails.tolist(), heads.tolist(), caps.tolist()):
        if not np.isfinite(cap):
            graph.add_edge(tail, head)  # no capacity attribute: infinite
        elif graph.has_edge(tail, head):
            if "capacity" in graph[tail][head]:
                graph[tail][head]["capacity"] += cap
        else:
            graph.add_edge(tail, head, capacity=cap)
    try:
        return nx.minimum_cut_value(graph, 0, 1)
    except nx.NetworkXUnbounded:
        return None


def test_reused_flow_network_matches_networkx_and_merging_its_answer_changes_nothing():
    """scipy's Dinic on our reused network against networkx on a fresh one: the same cut value
    (integer capacities: quantisation is exact), a source side whose crossing edges add up to
    it, and an uncuttable path reported as InfeasibleCut exactly when networkx finds none."""
    rng = np.random.default_rng(0)
    solved = infeasible = 0
    for _ in range(30):
        tails, heads = _random_network(rng)
        infinite = rng.random(len(tails)) < 0.1
        caps = np.where(infinite, np.inf, rng.integers(0, 50, len(tails)).astype(float))
        expected = _networkx_min_cut(40, tails, heads, caps)
        if expected is None:
            with pytest.raises(InfeasibleCut):
                FlowNetwork(40, tails, heads, infinite, 0, 1).min_cut(caps)
            infeasible += 1
            continue
        network = FlowNetwork(40, tails, heads, infinite, 0, 1)
        for _ in range(3):
            cut = network.min_cut(caps)
            assert cut.value / cut.scale == pytest.approx(expected, rel=1e-6)  # quantised capacities
            crossing = cut.source_side[tails] & ~cut.source_side[heads]
            assert cut.source_side[0] and not cut.source_side[1]
            assert caps[crossing].sum() == pytest.approx(expected, abs=1e-6)
            merged = network.min_cut(caps, inside=cut.source_side, outside=~cut.source_side)
            assert merged.value == cut.value and np.array_equal(merged.source_side, cut.source_side)
            caps = np.where(infinite, np.inf, rng.integers(0, 50, len(tails)).astype(float))
            expected = _networkx_min_cut(40, tails, heads, caps)
        solved += 1
    assert solved >= 10 and infeasible >= 1, (solved, infeasible)


def _used_reference(summary, in_backward):
    used = summary.needed_by_backward | summary.must_recompute
    users = {}
    for u, v in zip(summary.edge_src.tolist(), summary.edge_dst.tolist()):
        users.setdefault(u, []).append(v)
    used = used.copy()
    for i in range(summary.num_nodes - 1, -1, -1):
        used[i] = used[i] or any(used[v] and in_backward[v] for v in users.get(i, ()))
    return used


def test_used_in_backward_matches_the_plain_loop(joint_graphs):
    rng = np.random.default_rng(1)
    for captured in joint_graphs:
        summary = analysed(captured).summary
        for p in (0.1, 0.5, 0.9):
            in_backward = rng.random(summary.num_nodes) < p
            assert np.array_equal(used_in_backward(summary, in_backward), _used_reference(summary, in_backward))


def test_reorder_in_place_matches_pytorchs_reordering(joint_graphs):
    import torch._functorch.partitioners as p
    from oracles import plan_for_bytes

    moved = 0
    for captured in joint_graphs:
        a = analysed(captured)
        gm, kwargs, roles, summary, table = a.gm, a.kwargs, a.roles, a.summary, a.table
        for budget in (None, 0.0):  # budget 0 recomputes a lot: much to reorder
            fraction = None if budget is None else (lambda least, default: least)
            plan = plan_for_bytes(table.problem(summary), table.default_lambda, fraction)
            saved = [n for n, keep in zip(summary.nodes, plan.saved) if keep]
            saved_tensors = [n for n in saved if not ti.is_sym_node(n)]
            _, bw = p._extract_fwd_bwd_modules(
                gm,
                saved_tensors,
                saved_sym_nodes=[n for n in saved if ti.is_sym_node(n)],
                num_fwd_outputs=kwargs["num_fwd_outputs"],
                static_lifetime_input_nodes=roles.static_inputs,
            )
            before = [n.name for n in bw.graph.nodes]
            expected = str(p.reordering_to_mimic_autograd_engine(copy.deepcopy(bw)).graph)
            ours = torch_extract.reorder_like_autograd_engine(bw)
            ours.graph.lint()
            assert str(ours.graph) == expected
            moved += before != [n.name for n in ours.graph.nodes]
    assert moved, "no graph was reordered: the test proves nothing"
