"""What the partitioner may do with each node of a joint graph.

``summarize_joint_graph`` turns an AOTAutograd joint graph into a
``GraphSummary``: the candidate nodes (everything that can be computed from
the forward inputs alone), the data edges between them, which ones the
backward needs, and the hard rules: nodes that must not be recomputed (and
why), nodes that cannot be saved (and why), nodes a checkpoint region says to
recompute. Each why is a ``Reason``: a ``ReasonKind`` for code, a sentence for
people. What each op is comes from passes.op_facts. Costs are not decided here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from . import torch_internals as ti
from .op_facts import OpFacts, is_builtin_op, is_view, op_name

# Node kinds: where a candidate comes from.
INPUT = 0  # a placeholder: primal or forward RNG seed
FORWARD = 1  # the forward needs it; computing it in the backward is a recomputation
BACKWARD_ONLY = 2  # only the backward needs it; computing it there costs nothing extra


class ReasonKind(enum.Enum):
    """Why a node may not be recomputed or may not be saved."""

    # may not be recomputed
    INPUT = "input"
    NOT_AN_OP = "not_an_op"
    TAGGED_MUST_SAVE = "tagged_must_save"
    RANDOM = "random"
    MUTATES_INPUT = "mutates_input"
    MUST_BE_IN_FORWARD = "must_be_in_forward"
    OPAQUE_OP = "opaque_op"
    # may not be saved
    VIEW = "view"
    SYMBOLIC_FLOAT = "symbolic_float"
    NOT_A_TENSOR = "not_a_tensor"
    # either: the never_recompute / always_recompute knobs
    USER_POLICY = "user_policy"
    # either: a region_activation_memory_budget region's own plan (passes.regions)
    REGION_BUDGET = "region_budget"


@dataclass(frozen=True)
class Reason:
    """A hard rule on one node: what kind of rule, and the sentence that explains it to people."""

    kind: ReasonKind
    text: str

    def __str__(self) -> str:
        return self.text


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
    no_recompute_reason: tuple[Reason | None, ...]  # None: may be recomputed
    no_save_reason: tuple[Reason | None, ...]  # None: may be saved
    # float: the torch.autograd.graph.region_activation_memory_budget a forward node was traced
    # under, NaN outside every region; None when the graph has no region (passes.regions).
    region_budget: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)


_VIEW = Reason(ReasonKind.VIEW, "view: saving it keeps its base alive, so the base is priced instead")
_SYMBOLIC_FLOAT = Reason(ReasonKind.SYMBOLIC_FLOAT, "symbolic float")
_NOT_A_TENSOR = Reason(ReasonKind.NOT_A_TENSOR, "not a tensor (a tuple of outputs: its items are saved instead)")


def checkpointed_for_recompute(node: fx.Node) -> bool:
    """Inside a ``torch.utils.checkpoint`` region that asks to recompute. A random op there (a
    dropout under ``fallback_random``, where Inductor keeps aten's random ops) is recomputed with
    the RNG state the forward saved and the backward restores (PyTorch's ``functionalize_rng_ops``,
    run by passes.torch_extract), so it draws the same numbers again."""
    return ti.checkpoint_policy(node) in (ti.CheckpointPolicy.MUST_RECOMPUTE, ti.CheckpointPolicy.PREFER_RECOMPUTE)


def _no_recompute_reason(node: fx.Node, never_recompute: frozenset[str], facts: OpFacts | None = None) -> Reason | None:
    if node.op == "placeholder":
        return Reason(ReasonKind.INPUT, "input")
    if node.op != "call_function":
        return Reason(ReasonKind.NOT_AN_OP, f"not an op ({node.op})")
    policy = ti.checkpoint_policy(node)
    if policy == ti.CheckpointPolicy.MUST_SAVE:
        return Reason(
            ReasonKind.TAGGED_MUST_SAVE,
            "tagged MUST_SAVE (a collective, an effectful op, the source of a backward mutation, or a checkpoint policy)",
        )
    random, mutating, name = (facts or OpFacts()).op(node)
    if random and not checkpointed_for_recompute(node):
        return Reason(ReasonKind.RANDOM, "random: recomputing would draw a new mask")
    if mutating:
        return Reason(ReasonKind.MUTATES_INPUT, "mutates its input")
    if ti.must_be_in_forward(node):
        return Reason(ReasonKind.MUST_BE_IN_FORWARD, "tagged must_be_in_forward")
    if not is_builtin_op(node):
        return Reason(ReasonKind.OPAQUE_OP, f"opaque op {name}: may have side effects")
    if name in never_recompute:
        return Reason(ReasonKind.USER_POLICY, f"user policy: never_recompute {name}")
    return None


def _no_save_reason(node: fx.Node, view: bool, facts: OpFacts | None = None) -> Reason | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and not (facts or OpFacts()).tensor_is_opaque(val):
        # The common case, answered without the symbolic and opaque-object checks below.
        return _VIEW if view else None
    if isinstance(val, torch.SymFloat):
        return _SYMBOLIC_FLOAT
    if ti.is_sym_node(node):
        return None
    if ti.is_backward_state_or_script_object(val) or ti.is_opaque_value(node):
        return None
    if not isinstance(val, torch.Tensor):
        return _NOT_A_TENSOR
    if view:
        return _VIEW
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
    closure = roles.tangents_closure
    nodes = [n for n in joint_module.graph.nodes if n.op != "output" and n not in closure]
    index = {n: i for i, n in enumerate(nodes)}

    kind = np.empty(len(nodes), dtype=np.int8)
    needed = np.zeros(len(nodes), dtype=bool)
    must_recompute = np.zeros(len(nodes), dtype=bool)
    is_static = np.zeros(len(nodes), dtype=bool)
    views = np.zeros(len(nodes), dtype=bool)
    no_recompute: list[Reason | None] = []
    no_save: list[Reason | None] = []
    src: list[int] = []
    dst: list[int] = []
    static_inputs = set(roles.static_inputs)
    facts = OpFacts()
    region_budget = np.full(len(nodes), np.nan)

    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            kind[i] = INPUT
        elif node in roles.required_fw:
            kind[i] = FORWARD
        else:
            kind[i] = BACKWARD_ONLY
        is_static[i] = node in static_inputs
        views[i] = is_view(node)
        if kind[i] == FORWARD:
            budget = ti.region_memory_budget(node)
            region_budget[i] = np.nan if budget is None else budget
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
        if checkpointed_for_recompute(node):
            must_recompute[i] = reason is None
        save_reason = _no_save_reason(node, bool(views[i]), facts)
        if reason is not None and save_reason is not None and views[i]:
            save_reason = None  # a view we may not recompute is saved like any tensor
        if reason is None and save_reason is None and kind[i] == FORWARD and always and op_name(node) in always:
            save_reason = Reason(ReasonKind.USER_POLICY, f"user policy: always_recompute {op_name(node)}")
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
        is_view=views,
        no_recompute_reason=tuple(no_recompute),
        no_save_reason=tuple(no_save),
        region_budget=None if np.isnan(region_budget).all() else region_budget,
    )
