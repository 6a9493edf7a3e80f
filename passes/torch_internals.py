"""The one place that touches private PyTorch APIs.

Every import from ``torch._functorch``, ``torch._inductor`` or other private
modules goes through this file, so that a new torch release breaks one file.
The functions are thin: they name what we use and pin the contract we rely on
(tests/test_torch_internals.py checks each against the installed torch).
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any, Sequence

import sympy
import torch
import torch.fx as fx
from torch._functorch import config as functorch_config
from torch._functorch import partitioners as _p
from torch._functorch.compile_utils import fx_graph_cse, get_aten_target, raise_getitems
from torch.fx.experimental.proxy_tensor import is_sym_node, py_sym_types
from torch.utils.checkpoint import CheckpointPolicy

__all__ = [
    "CheckpointPolicy",
    "NodeRoles",
    "classify_joint_graph",
    "default_partition",
    "extract_forward_backward",
    "get_aten_target",
    "hint_int",
    "is_sym_node",
    "op_types",
    "prepare_joint_graph",
    "sym_expr",
    "torch_min_cut_partition",
]


class NodeRoles:
    """Which nodes of a joint graph run where, as AOTAutograd classifies them."""

    def __init__(self, info: Any):
        self._info = info
        self.inputs: list[fx.Node] = list(info.inputs)
        self.required_fw: set[fx.Node] = set(info.required_fw_nodes)
        self.required_bw: set[fx.Node] = set(info.required_bw_nodes)
        self.tangents_closure: set[fx.Node] = set(info.tangents_closure)
        self.static_inputs = info.static_lifetime_input_nodes


def prepare_joint_graph(joint_module: fx.GraphModule) -> fx.GraphModule:
    """Run the clean-ups PyTorch's partitioner runs before choosing a cut.

    Dead code elimination, CSE, checkpoint-tag clean-up, and the MUST_SAVE tags
    on collectives, effectful ops and sources of mutations done in the backward.
    """
    joint_module.graph.eliminate_dead_code()
    if functorch_config.cse:
        cse_in_place(joint_module.graph)
    joint_module.recompile()
    if _p.has_recomputable_ops(joint_module):
        joint_module = _p.cleanup_recompute_tags(joint_module, is_default_partition=False)
    if not functorch_config.unsafe_allow_optimization_of_collectives:
        _p.force_save_collectives(joint_module)
    _p.force_save_effectful_ops(joint_module)
    _p.force_save_bw_mutation_src(joint_module)
    return joint_module


def _cse_key(node: fx.Node):
    """What makes two nodes the same computation, as ``fx_graph_cse`` compares them:
    the target and the arguments, with each leaf's type (so 1 and 1.0 differ) and
    symbolic sizes by their SymNode. None when an argument is not hashable."""

    def freeze(a):
        if isinstance(a, (list, tuple)):
            return (type(a), tuple(freeze(x) for x in a))
        if isinstance(a, dict):
            return (type(a), tuple((k, freeze(v)) for k, v in a.items()))
        if isinstance(a, (torch.SymBool, torch.SymInt, torch.SymFloat)):
            a = a.node
        return (a, type(a))

    key = (node.target, freeze(node.args), freeze(node.kwargs))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def cse_in_place(graph: fx.Graph) -> int:
    """``fx_graph_cse`` without copying the graph: the same rules, duplicates erased in place.

    Copying every node of a 100k-node joint graph dominates PyTorch's pass; here
    only the duplicates are touched. Keeps the first of each group of equal
    nodes (and its name), as ``fx_graph_cse`` does. Returns how many it erased.
    """
    from torch._functorch.compile_utils import rand_ops
    from torch._inductor.pattern_matcher import compute_mutation_region_ids, same_mutation_regions
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    from torch.multiprocessing.reductions import StorageWeakRef

    compute_mutation_region_ids(graph)

    def storage(n: fx.Node):
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        try:
            return StorageWeakRef(val.untyped_storage())
        except NotImplementedError:
            return None

    output = graph.output_node()
    output_storages = {st for st in map(storage, output.all_input_nodes) if st is not None}
    never = set(rand_ops) | {torch.ops.aten.empty}
    first: dict = {}
    erased = 0
    for n in list(graph.nodes):
        if n.op in ("placeholder", "output", "get_attr") or get_aten_target(n) in never:
            continue
        if output_storages and storage(n) in output_storages:
            continue  # separate tensors the caller gets back: never merged
        val = n.meta.get("val")
        if isinstance(val, sympy.Symbol) and free_unbacked_symbols(val):
            continue
        key = _cse_key(n)
        if key is None:
            continue
        previous = first.get(key)
        if previous is not None and same_mutation_regions(n, previous):
            n.replace_all_uses_with(previous)
            graph.erase_node(n)
            erased += 1
        else:
            first[key] = n
    return erased


def classify_joint_graph(
    joint_module: fx.GraphModule, static_lifetime_input_indices: Sequence[int], num_fwd_outputs: int
) -> NodeRoles:
    return NodeRoles(
        _p.classify_nodes(joint_module, list(static_lifetime_input_indices), num_fwd_outputs)
    )


def is_primal_input(node: fx.Node) -> bool:
    return _p._is_primal(node)


def is_forward_seed_input(node: fx.Node) -> bool:
    return _p._is_fwd_seed_offset(node)


def must_be_in_forward(node: fx.Node) -> bool:
    return _p._must_be_in_forward(node)


def checkpoint_policy(node: fx.Node) -> CheckpointPolicy | None:
    """The policy ``torch.utils.checkpoint`` regions put on a node, if any."""
    return node.meta.get("recompute")


def is_opaque_value(node: fx.Node) -> bool:
    try:
        from torch._functorch._aot_autograd.graph_compile import is_opaque_node
    except ImportError:  # torch 2.11: the same test, written out
        return _is_opaque_node_211(node)
    return is_opaque_node(node)


def _is_opaque_node_211(node: fx.Node) -> bool:
    from torch._library.fake_class_registry import FakeScriptObject
    from torch._library.opaque_object import is_opaque_value as _is_opaque

    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val is not None and (_is_opaque(val) or isinstance(val, (torch.ScriptObject, FakeScriptObject)))


def is_opaque_type(cls: type) -> bool:
    """Whether values of this type are opaque objects (``is_opaque_value`` asks this first)."""
    from torch._library.opaque_object import is_opaque_type as _is_opaque_type

    return bool(_is_opaque_type(cls))


def is_backward_state_or_script_object(val: object) -> bool:
    from torch._library.fake_class_registry import FakeScriptObject
    from torch.fx.experimental._backward_state import BackwardState

    return isinstance(val, (BackwardState, FakeScriptObject))


def is_assert_only_symbool(node: fx.Node) -> bool:
    """A SymBool whose only users are ``_assert_scalar``: a runtime check, never saved for the backward.

    torch >= 2.13 names it ``partitioners._is_assert_only_symbool``; 2.11 and 2.12 define it
    only inside ``min_cut_rematerialization_partition``, so it is written out for them.
    """
    impl = getattr(_p, "_is_assert_only_symbool", None)
    if impl is not None:
        return impl(node)
    return (
        isinstance(node.meta.get("val"), torch.SymBool)
        and len(node.users) > 0
        and all(user.target is torch.ops.aten._assert_scalar.default for user in node.users)
    )


def op_types() -> Any:
    """PyTorch's op categories (fusible, compute-intensive, random, view)."""
    return _p.get_default_op_list()


def sym_expr(value: int | torch.SymInt) -> sympy.Expr:
    """A size as a sympy expression (an Integer when the size is static)."""
    if isinstance(value, torch.SymInt):
        return value.node.expr
    return sympy.Integer(int(value))


def hint_int(value: int | torch.SymInt, fallback: int = 4096) -> int:
    """A concrete value for a possibly symbolic size: the shape environment's hint."""
    try:
        from torch.fx.experimental.symbolic_shapes import optimization_hint
    except ImportError:  # torch 2.11
        from torch.fx.experimental.symbolic_shapes import size_hint as optimization_hint

    return int(optimization_hint(value, fallback=fallback))


def hint_expr(shape_env, expr: sympy.Expr, fallback: int = 4096) -> int:
    """A concrete value for a sympy size expression, from the shape environment's hints."""
    if hasattr(shape_env, "optimization_hint"):  # torch >= 2.13
        return int(shape_env.optimization_hint(expr, fallback=fallback))
    return int(shape_env.size_hint(expr))


def reorder_like_autograd_engine(gm: fx.GraphModule) -> fx.GraphModule:
    """``reordering_to_mimic_autograd_engine`` in place: the same node order, no graph copy.

    From the first node that reads a tangent on, each node is placed right
    after whatever it needs that is not placed yet (in graph order), so a
    recomputation lands just before its first use; ``copy_`` nodes before that
    point are placed first, and forward nodes nothing needs are dropped, as in
    PyTorch's pass. Moving nodes instead of copying them also keeps ``gm`` a
    lazy graph module when Inductor made it one, so no Python code is
    generated here.
    """
    graph = gm.graph
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    first_bwd = min(
        (user for node in nodes if _p._is_tangent(node) for user in node.users), key=order.__getitem__, default=None
    )
    if first_bwd is None:
        return gm
    placed = {node: None for node in graph.find_nodes(op="placeholder")}  # insertion-ordered set

    def place(node: fx.Node) -> None:
        pending, needed = [node], {}
        while pending:
            current = pending.pop()
            if current in needed or current in placed:
                continue
            needed[current] = None
            pending += current.all_input_nodes
        for current in sorted(needed, key=order.__getitem__):
            placed[current] = None

    start = order[first_bwd]
    for node in nodes[:start]:
        if node.op == "call_function" and node.target is torch.ops.aten.copy_.default:
            place(node)
    for node in nodes[start:]:
        place(node)
    for node in reversed(nodes):  # nothing placed reads these: users go first
        if node not in placed:
            graph.erase_node(node)
    cursor = None
    for node in placed:
        if cursor is None:
            head = next(iter(graph.nodes))
            if head is not node:
                head.prepend(node)
        elif cursor.next is not node:
            cursor.append(node)
        cursor = node
    gm.recompile()
    return gm


@functools.lru_cache(maxsize=1)
def _extract_takes_opaque_nodes() -> bool:
    """``_extract_fwd_bwd_modules`` takes ``saved_opaque_nodes`` from torch 2.12 on."""
    return "saved_opaque_nodes" in inspect.signature(_p._extract_fwd_bwd_modules).parameters


def extract_forward_backward(
    joint_module: fx.GraphModule,
    saved: Sequence[fx.Node],
    roles: NodeRoles,
    num_fwd_outputs: int,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut the joint graph into forward and backward modules that save ``saved``.

    Follows the tail of ``min_cut_rematerialization_partition``: AOTAutograd's
    contract (forward returns ``[outputs, saved tensors, saved symints]``),
    recomputation placed just before its first use in the backward, getitems raised.
    """
    saved_sym = [n for n in saved if is_sym_node(n) and not is_assert_only_symbool(n)]
    saved_opaque = [n for n in saved if is_opaque_value(n)]
    saved_tensors = [n for n in saved if not is_sym_node(n) and not is_opaque_value(n)]
    if _extract_takes_opaque_nodes():
        opaque = {"saved_opaque_nodes": saved_opaque}
    else:  # torch 2.11 separates opaque objects from the saved values itself
        saved_tensors, opaque = saved_tensors + saved_opaque, {}
    fw_module, bw_module = _p._extract_fwd_bwd_modules(
        joint_module,
        saved_tensors,
        saved_sym_nodes=saved_sym,
        **opaque,
        num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_nodes=roles.static_inputs,
    )
    if _p.has_recomputable_ops(joint_module) and _p.has_recomputable_rng_ops(joint_module):
        fw_module, bw_module = _p.functionalize_rng_ops(
            joint_module, fw_module, bw_module, len(saved_sym)
        )
    bw_module = reorder_like_autograd_engine(bw_module)
    fw_module = raise_getitems(fw_module)
    bw_module = raise_getitems(bw_module)
    fw_module = _p.thread_graphsafe_rng_from_hops(fw_module, is_backward=False)
    bw_module = _p.thread_graphsafe_rng_from_hops(bw_module, is_backward=True)
    return fw_module, bw_module


def default_partition(joint_module, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices):
    """PyTorch's no-recompute partition: for graphs with no backward to plan."""
    return _p.default_partition(
        joint_module,
        joint_inputs,
        num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_indices=static_lifetime_input_indices,
    )


def torch_min_cut_partition(joint_module, joint_inputs, **kwargs):
    """Inductor's default partitioner, our fallback and our baseline."""
    return _p.min_cut_rematerialization_partition(joint_module, joint_inputs, **kwargs)


def is_getitem(node: fx.Node) -> bool:
    return node.target is operator.getitem


def is_symbolic_value(val: object) -> bool:
    return isinstance(val, py_sym_types)
