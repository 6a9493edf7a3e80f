"""Where the graph passes touch private PyTorch APIs (with passes/torch_extract.py).

Every private import of ``passes/`` (``torch._functorch``, ``torch._inductor``'s prims,
``torch._guards``, ``torch._ops``, ``torch.utils._pytree``, ``torch.fx.experimental``) goes
through this file or passes/torch_extract.py (AOTAutograd's forward/backward module contract);
Inductor's and Dynamo's plumbing (config, pass slots, ``compile_fx``, caches, logging) goes through
rematpass/inductor_hooks.py. So a new torch release breaks those three files. The functions are
thin: they name what we use and pin the contract we rely on (tests/test_passes.py and
tests/test_extract.py check them against the installed torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_random and the max-pool offset prims)
import torch.fx as fx
from torch._functorch import config as functorch_config
from torch._functorch import partitioners as _p
from torch._functorch.compile_utils import get_aten_target
from torch._guards import detect_fake_mode
from torch._ops import OpOverload, OpOverloadPacket
from torch.fx.experimental.proxy_tensor import is_sym_node
from torch.utils._ordered_set import OrderedSet
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.checkpoint import CheckpointPolicy

__all__ = [
    "CheckpointPolicy",
    "NodeRoles",
    "OpOverload",
    "OpOverloadPacket",
    "classify_joint_graph",
    "default_partition",
    "detect_fake_mode",
    "hint_int",
    "is_sym_node",
    "op_types",
    "prepare_joint_graph",
    "sym_expr",
    "torch_min_cut_partition",
    "tree_leaves",
    "tree_map",
]


@dataclass
class NodeRoles:
    """Which nodes of a joint graph run where, as AOTAutograd's ``classify_nodes`` says."""

    inputs: list[fx.Node]  # primals, then forward RNG seeds
    required_fw: set[fx.Node]  # what the forward outputs need (inputs included)
    required_bw: set[fx.Node]  # tangents, what reads them, must-be-in-backward nodes, gradients
    tangents_closure: set[fx.Node]  # required_bw before the gradients were added
    static_inputs: OrderedSet[fx.Node]  # parameters and buffers: live for the whole step

    @classmethod
    def from_torch(cls, info: Any) -> NodeRoles:
        return cls(
            list(info.inputs),
            set(info.required_fw_nodes),
            set(info.required_bw_nodes),
            set(info.tangents_closure),
            info.static_lifetime_input_nodes,
        )


class NeedsTorchExtraction(Exception):
    """The graph needs a part of PyTorch's extraction that ours does not replicate."""


class ModuleNodes:
    """Which joint nodes a module with these inputs and outputs keeps, without building it.

    PyTorch's ``_extract_graph_with_inputs_outputs`` copies every node whose
    inputs are available (nodes that must run on the other side excluded),
    then eliminates dead code. The same rules, decided on the joint graph:
    ``kept`` is what that copy would hold besides the inputs, in joint order.
    """

    def __init__(self, graph: fx.Graph, inputs: Iterable[fx.Node], outputs: Iterable[object], side: str):
        self.inputs = dict.fromkeys(inputs)
        valid: set[fx.Node] = set(self.inputs)
        for node in graph.nodes:
            if node in valid or node.op not in ("call_function", "get_attr"):
                continue
            if side == "forward" and _p._must_be_in_backward(node):
                continue
            if side == "backward" and _p._must_be_in_forward(node):
                continue
            if all(arg in valid for arg in node.all_input_nodes):
                valid.add(node)
        impure_random = _dce_impure_random()
        live = {x for x in outputs if isinstance(x, fx.Node)}
        if not live <= valid:
            raise NeedsTorchExtraction(f"{side} output {sorted(n.name for n in live - valid)} cannot be computed there")
        order = [n for n in graph.nodes if n in valid and n not in self.inputs]
        for node in reversed(order):
            if node in live or node.is_impure(impure_random):
                live.add(node)
                live.update(node.all_input_nodes)
        self.kept = [n for n in order if n in live]
        self.live = live

    def reads(self, node: fx.Node) -> list[fx.Node]:
        """The kept nodes that read ``node``."""
        return [user for user in node.users if user in self.live and user not in self.inputs]


def _dce_impure_random() -> bool:
    """What ``Graph.eliminate_dead_code`` passes to ``Node.is_impure``."""
    if torch._guards.TracingContext.try_get():
        return torch._inductor.config.fallback_random
    return True


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
    """PyTorch's ``classify_nodes``, with the forward found by ``ModuleNodes`` instead of a graph copy."""
    graph = joint_module.graph
    if control_deps_nodes(graph):  # torch >= 2.14 classifies their getitems one by one
        return torch_classify_nodes(joint_module, static_lifetime_input_indices, num_fwd_outputs)
    required_bw: dict[fx.Node, None] = {}
    for node in graph.nodes:
        if node.op == "placeholder" and "tangents" in node.target or _p._must_be_in_backward(node):
            required_bw[node] = None
        if node in required_bw:
            required_bw.update(dict.fromkeys(node.users))
    placeholders = graph.find_nodes(op="placeholder")
    primals = [n for n in placeholders if _p._is_primal(n)]
    inputs = primals + [n for n in placeholders if _p._is_fwd_seed_offset(n)]
    fwd_outputs, bwd_outputs, _, _ = _p._extract_fwd_bwd_outputs(joint_module, num_fwd_outputs=num_fwd_outputs)
    tangents_closure = set(required_bw)
    required_bw.update((o, None) for o in bwd_outputs if o is not None and o.op != "output")
    try:
        forward = ModuleNodes(graph, inputs, fwd_outputs, "forward")
    except NeedsTorchExtraction:  # PyTorch substitutes such outputs; let it classify
        return torch_classify_nodes(joint_module, static_lifetime_input_indices, num_fwd_outputs)
    static = set(static_lifetime_input_indices)
    return NodeRoles(
        inputs,
        set(inputs) | set(forward.kept),
        set(required_bw),
        tangents_closure,
        OrderedSet(p for i, p in enumerate(primals) if i in static),
    )


def torch_classify_nodes(joint_module, static_lifetime_input_indices, num_fwd_outputs) -> NodeRoles:
    """PyTorch's own classification: the reference ``classify_joint_graph`` reproduces."""
    return NodeRoles.from_torch(_p.classify_nodes(joint_module, list(static_lifetime_input_indices), num_fwd_outputs))


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
    """Whether values of this type are opaque objects (``is_opaque_value`` asks this first).

    torch 2.14 renamed ``opaque_object.is_opaque_type`` to ``is_custom_class`` (the same body:
    a registered custom class or a subclass of one) and made the old name log a deprecation
    warning on every call, so the new name is used where it exists.
    """
    from torch._library import opaque_object

    registered = getattr(opaque_object, "is_custom_class", None) or opaque_object.is_opaque_type
    return bool(registered(cls))


def torch_release(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``version`` (the installed torch by default), parsed as a version:
    "2.15.0+cu132" is (2, 15) and a nightly "2.16.0.dev20260101" is (2, 16), where comparing
    strings would put "2.15" before "2.9" and that nightly before "2.16"."""
    from torch._vendor.packaging.version import Version

    major, minor, *_ = Version(version or torch.__version__).release + (0,)
    return major, minor


def control_deps_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The graph's ``control_deps`` higher-order ops (stream and event ordering), which the
    extraction of torch >= 2.14 splits between the forward and the backward in its own way."""
    try:
        from torch._inductor.fx_passes.control_dependencies import control_deps
    except ImportError:
        return []
    return list(graph.find_nodes(op="call_function", target=control_deps))


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
    """PyTorch's op categories (fusible, compute-intensive, random, view); passes.op_facts reads them."""
    return _p.get_default_op_list()


def op_schema(target: object) -> Any:
    """An op's ``torch.FunctionSchema`` (arguments, returns, alias and mutation facts); None for targets
    that are not ops (getitem, Python operators on sizes)."""
    return getattr(target, "_schema", None)


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


# Where ``torch.autograd.graph.region_activation_memory_budget`` (torch >= 2.13) leaves its budget.
_REGION_BUDGET_KEY = "_region_activation_memory_budget"


def region_memory_budget(node: fx.Node) -> float | None:
    """The ``region_activation_memory_budget`` a node was traced under, or None."""
    custom = node.meta.get("custom")
    if not isinstance(custom, dict):
        return None
    import torch.fx.traceback as fx_traceback

    budget = custom.get(getattr(fx_traceback, "MEMORY_BUDGET_ANNOTATION_KEY", _REGION_BUDGET_KEY))
    return float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) else None
