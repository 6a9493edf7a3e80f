"""Peak live bytes of one training step, simulated from the forward and backward graphs.

The step runs the forward graph, keeps what it returns (outputs and saved
tensors), then runs the backward graph. Each call_function node allocates its
output unless it aliases an input (a view, or an in-place op's result); a
storage is freed after the last node that reads any of its aliases, unless a
graph output keeps it. What is counted is what the step allocates on top of
what existed before it: parameters, buffers and the batch are not counted;
gradients the backward returns are (they are allocated during the step).

``materialized(node)`` says whether a node's output gets a buffer of its own:
always in eager execution, only for unfused values under Inductor (a pointwise
op fused into its consumer never allocates).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_random)
import torch.fx as fx


@dataclass(frozen=True)
class PeakEstimate:
    peak_bytes: int
    peak_phase: str  # "forward" or "backward"
    peak_node: str  # the node running when the peak was reached
    forward_peak: int
    boundary_bytes: int  # live between the forward and the backward: outputs and saved tensors
    backward_peak: int
    timeline: tuple[tuple[str, str, int], ...]  # (phase, node, live bytes after it ran)


def _tensor_bytes(val: object, size_hint: Callable[[object], int]) -> int:
    if isinstance(val, torch.Tensor):
        numel = 1
        for s in val.shape:
            numel *= size_hint(s)
        return numel * val.dtype.itemsize
    return 0


def _default_hint(value: object) -> int:
    if isinstance(value, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        return int(optimization_hint(value, fallback=4096))
    return int(value)


def aliased_input(node: fx.Node) -> fx.Node | None:
    """The input whose storage ``node``'s output shares (views, in-place results), if any."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:
        return None
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.returns or schema.returns[0].alias_info is None:
        return None
    alias_set = schema.returns[0].alias_info.before_set
    for argument, value in zip(schema.arguments, node.args):
        if argument.alias_info is not None and argument.alias_info.before_set & alias_set and isinstance(value, fx.Node):
            return value
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


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


def _run_graph(
    graph: fx.Graph,
    phase: str,
    storages: _Storages,
    preexisting: dict[fx.Node, object],
    materialized: Callable[[fx.Node], bool],
    size_hint: Callable[[object], int],
    keep_outputs: bool,
    timeline: list,
) -> tuple[int, str]:
    """Run one graph's allocations; returns its peak and the node at the peak."""
    nodes = list(graph.nodes)
    output = nodes[-1]
    outputs = {a for a in output.all_input_nodes} if keep_outputs else set()
    # Per storage, count reading nodes (users of any alias), so it dies after the last.
    owner = storages.owner
    for node in nodes:
        if node.op == "placeholder":
            key = preexisting.get(node)
            if key is None:
                key = ("pre", phase, node.name)  # allocated before the step: not counted
            owner[node] = key
            storages.readers.setdefault(key, 0)
    peak, peak_node = storages.live, "start"

    def readers_of(n: fx.Node) -> int:
        return sum(1 for u in n.users if u.op != "output")

    for node in nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            if node.op == "placeholder":
                storages.readers[owner[node]] = storages.readers.get(owner[node], 0) + readers_of(node)
            continue
        base = aliased_input(node)
        if base is not None and base in owner:
            key = owner[base]
            storages.readers[key] = storages.readers.get(key, 0) + readers_of(node)
        elif node.target is operator.getitem and isinstance(node.args[0], fx.Node):
            key = (node.args[0], node.args[1])
            storages.allocate(key, _tensor_bytes(node.meta.get("val"), size_hint) if materialized(node.args[0]) else 0, readers_of(node))
        else:
            val = node.meta.get("val")
            key = node
            if isinstance(val, (list, tuple)):
                storages.allocate(key, 0, readers_of(node))
            else:
                nbytes = _tensor_bytes(val, size_hint) if materialized(node) else 0
                storages.allocate(key, nbytes, readers_of(node))
        owner[node] = key
        if node in outputs:
            storages.pinned.add(key)
        if storages.live > peak:
            peak, peak_node = storages.live, node.name
        # This node has read its inputs: release storages it was the last reader of.
        for arg in node.all_input_nodes:
            arg_key = owner.get(arg)
            if arg_key is None:
                continue
            storages.readers[arg_key] -= 1
            storages.release(arg_key)
        storages.release(key)
        timeline.append((phase, node.name, storages.live))
    return peak, peak_node


def simulate_step(
    forward: fx.GraphModule,
    backward: fx.GraphModule,
    *,
    num_fwd_outputs: int,
    materialized: Callable[[fx.Node], bool] = lambda node: True,
    size_hint: Callable[[object], int] = _default_hint,
) -> PeakEstimate:
    """Simulate forward then backward; see the module docstring for what is counted."""
    storages = _Storages()
    timeline: list[tuple[str, str, int]] = []
    fw_peak, fw_node = _run_graph(forward.graph, "forward", storages, {}, materialized, size_hint, True, timeline)
    fw_outputs = list(forward.graph.nodes)[-1].args[0]
    saved = list(fw_outputs[num_fwd_outputs:])
    real_outputs = list(fw_outputs[:num_fwd_outputs])
    # Saved values reach the backward in order, after any saved symints; the
    # backward's placeholders are [saved symints..., saved tensors..., tangents...]
    # as AOTAutograd lays them out; match by name, which the partition keeps.
    by_name = {n.name: storages.owner[n] for n in saved if isinstance(n, fx.Node) and n in storages.owner}
    # Between the passes only the outputs and saved tensors are alive.
    for n in saved:
        if isinstance(n, fx.Node) and n in storages.owner:
            storages.pinned.discard(storages.owner[n])
    pinned_outputs = {storages.owner[n] for n in real_outputs if isinstance(n, fx.Node) and n in storages.owner}
    storages.pinned = set(pinned_outputs)
    boundary = storages.live
    preexisting = {}
    for node in backward.graph.nodes:
        if node.op == "placeholder" and node.name in by_name:
            preexisting[node] = by_name[node.name]
    # Saved tensors stay alive until the backward's last read of them.
    for key in set(preexisting.values()):
        storages.readers[key] = 0
    bw_peak, bw_node = _run_graph(backward.graph, "backward", storages, preexisting, materialized, size_hint, True, timeline)
    for key in set(preexisting.values()):
        storages.release(key)
    if bw_peak >= fw_peak:
        peak, phase, where = bw_peak, "backward", bw_node
    else:
        peak, phase, where = fw_peak, "forward", fw_node
    return PeakEstimate(peak, phase, where, fw_peak, boundary, bw_peak, tuple(timeline))


def saved_names(forward: fx.GraphModule, num_fwd_outputs: int) -> list[str]:
    outputs = list(forward.graph.nodes)[-1].args[0]
    return [n.name for n in outputs[num_fwd_outputs:] if isinstance(n, fx.Node)]


__all__: Iterable[str] = ["PeakEstimate", "aliased_input", "simulate_step", "saved_names"]


def inductor_materialized(node: fx.Node) -> bool:
    """Whether Inductor gives ``node`` a buffer of its own (a fusion heuristic).

    Pointwise ops are inlined into their consumers unless a consumer cannot
    fuse them (a matmul, a convolution, any extern kernel) or the graph
    returns them; everything else (matmuls, reductions, extern ops) writes a
    buffer.
    """
    if node.op != "call_function":
        return True
    if not _is_pointwise(node):
        return True
    return any(u.op == "output" or not _is_fusible_consumer(u) for u in node.users)


def _is_pointwise(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    return torch.Tag.pointwise in getattr(node.target, "tags", ()) or getattr(node.target, "_overloadpacket", None) in _POINTWISE_EXTRA


def _is_fusible_consumer(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    if _is_pointwise(node) or aliased_input(node) is not None:
        return True
    return getattr(node.target, "_overloadpacket", None) in _FUSIBLE_REDUCTIONS


_aten = torch.ops.aten
_prims = torch.ops.prims
_POINTWISE_EXTRA = {_aten.where, _aten.clone, _aten._to_copy, _prims.convert_element_type, _aten.full, _aten.scalar_tensor, _prims.inductor_random, _prims.inductor_lookup_seed}
_FUSIBLE_REDUCTIONS = {_aten.sum, _aten.mean, _aten.amax, _aten.amin, _aten.var_mean, _aten.var, _prims.var, _prims.sum, _aten.max, _aten.min, _aten.argmax, _aten._softmax, _aten._log_softmax, _prims.prepare_softmax_online}
