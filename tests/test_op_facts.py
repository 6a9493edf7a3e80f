"""passes/op_facts.py: per-op answers that must still be read per node where arguments matter."""

from __future__ import annotations

import torch
import torch.fx as fx

from rematpass.passes.op_facts import OpFacts, is_random

ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


def _attention_graph(*dropouts: float) -> list[fx.Node]:
    graph = fx.Graph()
    q, k, v = (graph.placeholder(name) for name in "qkv")
    return [graph.call_function(ATTENTION, (q, k, v), {"dropout_p": p}) for p in dropouts]


def test_attention_is_random_only_with_dropout_whatever_node_was_seen_first():
    for order in ((0.0, 0.1), (0.1, 0.0)):
        nodes = _attention_graph(*order)
        facts = OpFacts()
        assert [facts.op(n).random for n in nodes] == [p != 0 for p in order]
        assert [is_random(n) for n in nodes] == [p != 0 for p in order]


def test_ops_without_arguments_that_matter_are_answered_once_per_op():
    graph = fx.Graph()
    x = graph.placeholder("x")
    seeds = graph.call_function(torch.ops.prims.inductor_seeds.default, (2, torch.device("cpu")))
    relu = graph.call_function(torch.ops.aten.relu.default, (x,))
    facts = OpFacts()
    assert facts.op(seeds).random and not facts.op(relu).random
    assert facts.op(relu).name == "aten.relu" and not facts.op(relu).mutating


def test_cpu_flash_attention_is_compute_bound_with_the_cuda_formula():
    from torch.utils.flop_counter import flop_registry

    from rematpass.passes.op_facts import flop_formula, is_compute_bound

    (node,) = _attention_graph(0.0)
    assert is_compute_bound(node)
    q = torch.empty(2, 4, 128, 32)
    out = (torch.empty(2, 4, 128, 32), torch.empty(2, 4, 128))
    flops = flop_formula(node)(q, q, q, out_val=out)
    cuda = flop_registry[torch.ops.aten._scaled_dot_product_flash_attention](q, q, q, out_val=out)
    assert flops == cuda == 2 * 2 * (2 * 4 * 128 * 128 * 32)  # two matmuls of B*H*S*S*D multiply-adds
