"""The step's peak simulated node by node on the extracted forward and backward modules: the
reference that passes.joint_liveness (the planner's array model) is tested against.

The step runs the forward graph, keeps what it returns (outputs and saved tensors), then runs the
backward graph. Each call_function node allocates its output unless it aliases an input (a view,
or an in-place op's result); a multi-output op allocates all its outputs while its inputs are
alive; a storage is freed after the last node that reads any of its aliases, unless a graph
output keeps it. ``materialized(node, users, is_output)`` says whether a node's output gets a
buffer of its own: always in eager execution, ``liveness.inductor_materialized`` under Inductor.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch.fx as fx

from rematpass.passes.liveness import PeakEstimate, hinted_size, tensor_bytes
from rematpass.passes.op_facts import aliased_input


class _Storages:
    """Storages alive now: who allocated each, its size, and which nodes still read it."""

    def __init__(self):
        self.owner: dict[fx.Node, object] = {}  # node -> storage key
        self.size: dict[object, int] = {}
        self.readers: dict[object, int] = {}
        self.pinned: set[object] = set()
        self.live = 0

    def allocate(self, key: object, nbytes: int, readers: int) -> None:
        self.size[key] = nbytes
        self.readers[key] = readers
        self.live += nbytes

    def release(self, key: object) -> None:
        if key in self.size and key not in self.pinned and self.readers.get(key, 0) <= 0:
            self.live -= self.size.pop(key)
            self.readers.pop(key, None)


def _run(
    phase: str,
    inputs: list[fx.Node],
    nodes: list[fx.Node],
    readers: Callable[[fx.Node], int],
    outputs: set[fx.Node],
    storages: _Storages,
    preexisting: dict[fx.Node, object],
    materialized: Callable[..., bool],
    size_hint: Callable[[object], int],
    timeline: list,
) -> tuple[int, str]:
    """Allocate and free for ``nodes`` run in order; returns the phase's peak and the node at it.

    ``readers(n)`` counts the nodes of this phase that read n; an input's
    storage comes from ``preexisting`` (values carried over from the forward)
    or existed before the step and is not counted.
    """
    owner = storages.owner
    phase_nodes = set(nodes)
    for node in inputs:
        key = preexisting.get(node, ("pre", phase, node.name))
        owner[node] = key
        storages.readers[key] = storages.readers.get(key, 0) + readers(node)
    peak, peak_node = storages.live, "start"
    for node in nodes:
        base = aliased_input(node)
        if base is not None and base in owner:
            key = owner[base]
            storages.readers[key] = storages.readers.get(key, 0) + readers(node)
        elif node.target is operator.getitem and isinstance(node.args[0], fx.Node):
            key = (node.args[0], node.args[1])  # allocated with its parent, below
        else:
            key = node
            val = node.meta.get("val")
            keep = materialized(node, [u for u in node.users if u in phase_nodes], node in outputs)
            if isinstance(val, (list, tuple)):
                # A multi-output op writes every output while its inputs are still alive.
                storages.allocate(key, 0, readers(node))
                for item in node.users:
                    if item in phase_nodes and item.target is operator.getitem:
                        nbytes = tensor_bytes(item.meta.get("val"), size_hint) if keep else 0
                        storages.allocate((node, item.args[1]), nbytes, readers(item))
            else:
                storages.allocate(key, tensor_bytes(val, size_hint) if keep else 0, readers(node))
        owner[node] = key
        if node in outputs:
            storages.pinned.add(key)
        if storages.live > peak:
            peak, peak_node = storages.live, node.name
        for arg in node.all_input_nodes:  # this node has read its inputs
            arg_key = owner.get(arg)
            if arg_key is not None:
                storages.readers[arg_key] -= 1
                storages.release(arg_key)
        storages.release(key)
        timeline.append((phase, node.name, storages.live))
    return peak, peak_node


def _graph_parts(graph: fx.Graph):
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    body = [n for n in nodes if n.op == "call_function"]
    outputs = list(nodes[-1].all_input_nodes)
    return inputs, body, outputs


def _phase_readers(phase_nodes: set[fx.Node]) -> Callable[[fx.Node], int]:
    return lambda node: sum(1 for user in node.users if user in phase_nodes)


def _simulate(
    forward_parts,
    backward_parts,
    saved: list[fx.Node],
    carried: Callable[[fx.Node], fx.Node | None],
    real_outputs: list[fx.Node],
    materialized,
    size_hint,
) -> PeakEstimate:
    storages = _Storages()
    timeline: list[tuple[str, str, int]] = []
    fw_inputs, fw_body, fw_outputs = forward_parts
    fw_peak, fw_node = _run(
        "forward",
        fw_inputs,
        fw_body,
        _phase_readers(set(fw_body)),
        set(fw_outputs),
        storages,
        {},
        materialized,
        size_hint,
        timeline,
    )
    # Between the passes only the real outputs and the saved tensors stay alive;
    # saved tensors live until the backward's last read of them.
    saved_keys = {storages.owner[n] for n in saved if n in storages.owner}
    storages.pinned = {storages.owner[n] for n in real_outputs if n in storages.owner} | saved_keys
    for key in list(storages.size):
        storages.release(key)
    boundary = storages.live
    storages.pinned -= saved_keys
    for key in saved_keys:
        storages.readers[key] = 0
    bw_inputs, bw_body, bw_outputs = backward_parts
    preexisting = {}
    for node in bw_inputs:
        source = carried(node)
        if source is not None and source in storages.owner:
            preexisting[node] = storages.owner[source]
    bw_peak, bw_node = _run(
        "backward",
        bw_inputs,
        bw_body,
        _phase_readers(set(bw_body)),
        set(bw_outputs),
        storages,
        preexisting,
        materialized,
        size_hint,
        timeline,
    )
    for key in set(preexisting.values()):
        storages.release(key)
    if bw_peak >= fw_peak:
        peak, phase, where = bw_peak, "backward", bw_node
    else:
        peak, phase, where = fw_peak, "forward", fw_node
    return PeakEstimate(peak, phase, where, fw_peak, boundary, bw_peak, tuple(timeline))


def simulate_step(
    forward: fx.GraphModule,
    backward: fx.GraphModule,
    *,
    num_fwd_outputs: int,
    materialized: Callable[..., bool] = lambda node, users=None, is_output=False: True,
    size_hint: Callable[[object], int] = hinted_size,
) -> PeakEstimate:
    """Simulate a partition's forward then backward module; see the module docstring."""
    forward_parts = _graph_parts(forward.graph)
    fw_outputs = list(forward.graph.nodes)[-1].args[0]
    saved = [n for n in fw_outputs[num_fwd_outputs:] if isinstance(n, fx.Node)]
    real_outputs = [n for n in fw_outputs[:num_fwd_outputs] if isinstance(n, fx.Node)]
    # The partition keeps names: a backward placeholder named like a saved value is that value.
    by_name = {n.name: n for n in saved}
    return _simulate(
        forward_parts,
        _graph_parts(backward.graph),
        saved,
        lambda node: by_name.get(node.name),
        real_outputs,
        materialized,
        size_hint,
    )
