"""What the partitioner may do with each node of a joint graph.

``summarize_joint_graph`` turns an AOTAutograd joint graph into a
``GraphSummary``: the candidate nodes (everything that can be computed from
the forward inputs alone), the data edges between them, which ones the
backward needs, and the hard rules: nodes that must not be recomputed (and
why), nodes that cannot be saved (and why), nodes a checkpoint region says to
recompute. Costs are not decided here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.fx as fx

from . import torch_internals as ti

# Node kinds: where a candidate comes from.
INPUT = 0  # a placeholder: primal or forward RNG seed
FORWARD = 1  # the forward needs it; computing it in the backward is a recomputation
BACKWARD_ONLY = 2  # only the backward needs it; computing it there costs nothing extra


@dataclass(frozen=True)
class GraphSummary:
    """The joint graph as the solver sees it. Arrays are indexed like ``nodes``."""

    nodes: tuple[fx.Node, ...]
    kind: np.ndarray  # int8, INPUT / FORWARD / BACKWARD_ONLY
    edge_src: np.ndarray  # int32 data edges between candidates
    edge_dst: np.ndarray
    needed_by_backward: np.ndarray  # bool: a backward node reads it
    must_recompute: np.ndarray  # bool: a checkpoint region asks for recomputation
    is_static: np.ndarray  # bool: parameter or buffer (static lifetime)
    is_view: np.ndarray  # bool
    no_recompute_reason: tuple[str | None, ...]
    no_save_reason: tuple[str | None, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def index(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}


def op_name(node: fx.Node) -> str:
    """A stable printable name for a node's op: ``aten.mm``, ``prims.inductor_seeds``."""
    if node.op != "call_function":
        return node.op
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        namespace = getattr(target, "namespace", "aten")
        return f"{namespace}.{packet.__name__}"
    return getattr(target, "__name__", str(target))


def _is_random(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    if torch.Tag.nondeterministic_seeded not in tags:
        return False
    # Attention ops carry the tag for their dropout; with dropout_p == 0 they draw nothing.
    schema = getattr(node.target, "_schema", None)
    for position, argument in enumerate(schema.arguments if schema is not None else ()):
        if argument.name == "dropout_p":
            if "dropout_p" in node.kwargs:
                value = node.kwargs["dropout_p"]
            elif position < len(node.args):
                value = node.args[position]
            else:
                value = argument.default_value
            return value != 0
    return True


def _is_builtin_op(node: fx.Node) -> bool:
    target = node.target
    if target is operator.getitem:
        return True
    if isinstance(target, ti.OpOverload):
        return target.namespace in ("aten", "prims")
    # Python operators on SymInts (operator.mul, sym_size...) are pure.
    return getattr(target, "__module__", None) in ("_operator", "operator", "math", "torch") or ti.is_sym_node(node)


class _OpFacts:
    """What depends on a node's op or value type alone, computed once per op or type:
    a joint graph repeats a few dozen ops over thousands of nodes."""

    def __init__(self):
        self._ops: dict[object, tuple[bool, bool, str]] = {}
        self._opaque_types: dict[type, bool] = {}

    def op(self, node: fx.Node) -> tuple[bool, bool, str]:
        """(random, mutates its input, op name) of a call_function node."""
        found = self._ops.get(node.target)
        if found is None:
            target = node.target
            mutable = isinstance(target, ti.OpOverload) and target._schema.is_mutable
            found = self._ops[target] = (_is_random(node), mutable, op_name(node))
        return found

    def tensor_is_opaque(self, val: torch.Tensor) -> bool:
        """``ti.is_opaque_value`` for a tensor value: a question about its type."""
        found = self._opaque_types.get(type(val))
        if found is None:
            found = self._opaque_types[type(val)] = ti.is_opaque_type(type(val))
        return found


def _no_recompute_reason(node: fx.Node, never_recompute: frozenset[str], facts: _OpFacts | None = None) -> str | None:
    if node.op == "placeholder":
        return "input"
    if node.op != "call_function":
        return f"not an op ({node.op})"
    policy = ti.checkpoint_policy(node)
    if policy == ti.CheckpointPolicy.MUST_SAVE:
        return "tagged MUST_SAVE (a collective, an effectful op, the source of a backward mutation, or a checkpoint policy)"
    random, mutable, name = (facts or _OpFacts()).op(node)
    if random:
        return "random: recomputing would draw a new mask"
    if mutable:
        return "mutates its input"
    if ti.must_be_in_forward(node):
        return "tagged must_be_in_forward"
    if not _is_builtin_op(node):
        return f"opaque op {name}: may have side effects"
    if name in never_recompute:
        return f"user policy: never_recompute {name}"
    return None


def _no_save_reason(node: fx.Node, is_view: bool, facts: _OpFacts | None = None) -> str | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and not (facts or _OpFacts()).tensor_is_opaque(val):
        # The common case, answered without the symbolic and opaque-object checks below.
        return "view: saving it keeps its base alive, so the base is priced instead" if is_view else None
    if isinstance(val, torch.SymFloat):
        return "symbolic float"
    if ti.is_sym_node(node):
        return None
    if ti.is_backward_state_or_script_object(val) or ti.is_opaque_value(node):
        return None
    if not isinstance(val, torch.Tensor):
        return "not a tensor (a tuple of outputs: its items are saved instead)"
    if is_view:
        return "view: saving it keeps its base alive, so the base is priced instead"
    return None


def summarize_joint_graph(
    joint_module: fx.GraphModule,
    roles: ti.NodeRoles,
    *,
    never_recompute: Iterable[str] = (),
    always_recompute: Iterable[str] = (),
) -> GraphSummary:
    """Summarise a prepared joint graph (see ``torch_internals.prepare_joint_graph``).

    ``never_recompute`` and ``always_recompute`` are op names as ``op_name`` prints them.
    """
    never = frozenset(never_recompute)
    always = frozenset(always_recompute)
    types = ti.op_types()
    closure = roles.tangents_closure
    nodes = [n for n in joint_module.graph.nodes if n.op != "output" and n not in closure]
    index = {n: i for i, n in enumerate(nodes)}

    kind = np.empty(len(nodes), dtype=np.int8)
    needed = np.zeros(len(nodes), dtype=bool)
    must_recompute = np.zeros(len(nodes), dtype=bool)
    is_static = np.zeros(len(nodes), dtype=bool)
    is_view = np.zeros(len(nodes), dtype=bool)
    no_recompute: list[str | None] = []
    no_save: list[str | None] = []
    src: list[int] = []
    dst: list[int] = []
    static_inputs = set(roles.static_inputs)
    facts = _OpFacts()

    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            kind[i] = INPUT
        elif node in roles.required_fw:
            kind[i] = FORWARD
        else:
            kind[i] = BACKWARD_ONLY
        is_static[i] = node in static_inputs
        is_view[i] = node.op == "call_function" and types.is_view(node)
        if node in roles.required_bw:  # a backward output that does not depend on tangents
            needed[i] = True
        for user in node.users:
            j = index.get(user)
            if j is not None:
                src.append(i)
                dst.append(j)
            elif user.op != "output":
                needed[i] = True

        reason = _no_recompute_reason(node, never, facts)
        policy = ti.checkpoint_policy(node)
        if policy in (ti.CheckpointPolicy.MUST_RECOMPUTE, ti.CheckpointPolicy.PREFER_RECOMPUTE):
            must_recompute[i] = reason is None
        save_reason = _no_save_reason(node, bool(is_view[i]), facts)
        if reason is not None and save_reason is not None and is_view[i]:
            save_reason = None  # a view we may not recompute is saved like any tensor
        if reason is None and save_reason is None and kind[i] == FORWARD and always and op_name(node) in always:
            save_reason = f"user policy: always_recompute {op_name(node)}"
        no_recompute.append(reason)
        no_save.append(save_reason)

    return GraphSummary(
        nodes=tuple(nodes),
        kind=kind,
        edge_src=np.asarray(src, dtype=np.int32),
        edge_dst=np.asarray(dst, dtype=np.int32),
        needed_by_backward=needed,
        must_recompute=must_recompute,
        is_static=is_static,
        is_view=is_view,
        no_recompute_reason=tuple(no_recompute),
        no_save_reason=tuple(no_save),
    )
