"""Cut a joint graph into AOTAutograd's forward and backward modules, in one pass.

PyTorch's ``_extract_fwd_bwd_modules`` copies the whole joint graph three
times (a trial backward to find which saved values it reads, then the
forward, then the backward), each copy followed by dead-code elimination and
a lint. On a 96-layer model that is most of a partition's time. Here the
same two modules are built by first deciding, on the joint graph itself,
which nodes each module keeps (the same validity and dead-code rules), then
copying only those, once. The result is the same graph, node for node and
name for name, as PyTorch's (tests/test_extract.py compares them on every
test model); where a graph uses a feature this path does not replicate
(opaque objects, backward state, activation quantisation, ``control_deps``
ordering, forward outputs PyTorch would have to substitute), and on releases
it was not checked against (``ONE_PASS_RELEASES``), it calls PyTorch's
function instead.

With passes/torch_internals.py, this is the only file that touches private
PyTorch APIs: the forward/backward contract is AOTAutograd's.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Sequence

import torch
import torch.fx as fx
from torch._functorch import partitioners as _p
from torch._functorch.compile_utils import raise_getitems
from torch._inductor import config as inductor_config
from torch.fx.experimental.proxy_tensor import is_sym_node
from torch.fx.experimental.symbolic_shapes import find_symbol_binding_fx_nodes, free_symbols, is_symbol_binding_fx_node

from .torch_internals import (
    ModuleNodes,
    NeedsTorchExtraction,
    NodeRoles,
    control_deps_nodes,
    is_assert_only_symbool,
    is_opaque_value,
    torch_release,
)

__all__ = ["ONE_PASS_RELEASES", "extract_forward_backward", "one_pass_supported_here", "reorder_like_autograd_engine"]

# The releases whose ``_extract_fwd_bwd_modules`` tests/test_extract.py found the one-pass
# path equal to, node for node. What changed between them, and is replicated below:
# 2.14 binds the unreplaced symbols of the backward's inputs too (``_free_symbols_without_replacements``)
# and splits ``control_deps`` nodes (left to PyTorch); 2.15 stamps ``meta["is_static_input"]`` on the
# primals and also drops a saved collective whose only readers are dead ``wait_tensors``.
ONE_PASS_RELEASES = ((2, 13), (2, 14), (2, 15))


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
    try:
        fw_module, bw_module = one_pass_modules(
            joint_module, saved_tensors, saved_sym, saved_opaque, num_fwd_outputs, roles.static_inputs
        )
    except NeedsTorchExtraction:
        fw_module, bw_module = torch_modules(
            joint_module, saved_tensors, saved_sym, saved_opaque, roles, num_fwd_outputs
        )
    if _p.has_recomputable_ops(joint_module) and _p.has_recomputable_rng_ops(joint_module):
        fw_module, bw_module = _p.functionalize_rng_ops(joint_module, fw_module, bw_module, len(saved_sym))
    bw_module = reorder_like_autograd_engine(bw_module)
    fw_module = raise_getitems(fw_module)
    bw_module = raise_getitems(bw_module)
    fw_module = _p.thread_graphsafe_rng_from_hops(fw_module, is_backward=False)
    bw_module = _p.thread_graphsafe_rng_from_hops(bw_module, is_backward=True)
    return fw_module, bw_module


@functools.lru_cache(maxsize=1)
def _extract_takes_opaque_nodes() -> bool:
    """``_extract_fwd_bwd_modules`` takes ``saved_opaque_nodes`` from torch 2.12 on."""
    return "saved_opaque_nodes" in inspect.signature(_p._extract_fwd_bwd_modules).parameters


def torch_modules(joint_module, saved_tensors, saved_sym, saved_opaque, roles: NodeRoles, num_fwd_outputs: int):
    """PyTorch's own ``_extract_fwd_bwd_modules``: the reference the one-pass path reproduces."""
    if _extract_takes_opaque_nodes():
        opaque = {"saved_opaque_nodes": list(saved_opaque)}
    else:  # torch 2.11 separates opaque objects from the saved values itself
        saved_tensors, opaque = list(saved_tensors) + list(saved_opaque), {}
    return _p._extract_fwd_bwd_modules(
        joint_module,
        list(saved_tensors),
        saved_sym_nodes=list(saved_sym),
        **opaque,
        num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_nodes=roles.static_inputs,
    )


def one_pass_supported_here() -> bool:
    """The one-pass path replicates the extraction of the releases it was checked against
    (``ONE_PASS_RELEASES``); others use PyTorch's own, which is slower only."""
    return torch_release() in ONE_PASS_RELEASES and _extract_takes_opaque_nodes()


def _stamps_static_inputs() -> bool:
    """torch 2.15's extraction marks each primal ``meta["is_static_input"]``; its ``compile_fx``
    reads the mark on the backward's placeholders to choose the static inputs (cudagraphs, alignment)."""
    return torch_release() >= (2, 15)


def _wait_ops() -> tuple[object, ...]:
    """The waits after which a saved collective counts as dead: ``wait_tensor``, and from 2.15 on ``wait_tensors``."""
    functional = torch.ops._c10d_functional
    names = ("wait_tensor", "wait_tensors") if torch_release() >= (2, 15) else ("wait_tensor",)
    return tuple(getattr(functional, name).default for name in names if hasattr(functional, name))


def _drop_unused_saved(joint: fx.Graph, candidates: list[fx.Node], tangents, bwd_seeds, bwd_outputs) -> set[fx.Node]:
    """Saved values the backward does not read (PyTorch's trial backward extraction)."""
    backward = ModuleNodes(joint, [*candidates, *tangents, *bwd_seeds], bwd_outputs, "backward")
    waits = _wait_ops() if torch.distributed.is_available() else ()
    dropped = set()
    for node in candidates:
        users = backward.reads(node)
        if not users:
            dropped.add(node)
        elif waits and all(
            u.target in waits and not backward.reads(u) for u in users
        ):  # a collective's result only waited on: dead too
            dropped.add(node)
    return dropped


def _copy_module(joint: fx.GraphModule, inputs: list[fx.Node], outputs: list[object], descs: list[object], side: str):
    """A graph of the nodes ``side`` keeps, copied in joint order, placeholders for ``inputs``."""
    subgraph = ModuleNodes(joint.graph, inputs, outputs, side)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        placeholder = graph.placeholder(node.name)
        placeholder.meta = node.meta  # as PyTorch's extraction: a saved call becomes an input
        env[node] = placeholder
    for node in subgraph.kept:
        env[node] = graph.node_copy(node, env.__getitem__)
    values = [env[x] if isinstance(x, fx.Node) else x for x in outputs]
    out = graph.output(tuple(values))
    out.meta["desc"] = descs
    out.meta["output_stack_traces"] = [v.meta.get("stack_trace") if isinstance(v, fx.Node) else None for v in values]
    if side == "backward":
        for node in graph.nodes:
            if node.op in ("call_function", "get_attr"):
                node.meta["autograd_backward"] = True
    return fx._lazy_graph_module._make_graph_module(joint, graph)


def one_pass_modules(
    joint_module: fx.GraphModule,
    saved_values,
    saved_sym_nodes,
    saved_opaque_nodes,
    num_fwd_outputs: int,
    static_lifetime_input_nodes=None,
):
    """The modules ``_extract_fwd_bwd_modules`` returns (AOTAutograd path), each node copied once."""
    if not one_pass_supported_here():
        raise NeedsTorchExtraction(f"torch {torch.__version__} is not among the releases checked {ONE_PASS_RELEASES}")
    if saved_opaque_nodes:
        raise NeedsTorchExtraction("opaque values are saved")
    if inductor_config.post_grad_fusion_options.get("activation_quantization_aten_pass") is not None:
        raise NeedsTorchExtraction("activation quantisation rewrites the modules")
    graph = joint_module.graph
    fwd_outputs, bwd_outputs, fwd_descs, bwd_descs = _p._extract_fwd_bwd_outputs(
        joint_module, num_fwd_outputs=num_fwd_outputs
    )
    placeholders = graph.find_nodes(op="placeholder")
    if any(_p._is_backward_state(n) for n in placeholders):
        raise NeedsTorchExtraction("backward state is passed to the backward directly")
    if control_deps_nodes(graph):
        raise NeedsTorchExtraction("control_deps nodes are rebuilt per module")
    primals = [n for n in placeholders if _p._is_primal(n)]
    if static_lifetime_input_nodes is not None and _stamps_static_inputs():
        for node in primals:  # the placeholders of both modules share this meta, as in PyTorch's
            node.meta["is_static_input"] = node in static_lifetime_input_nodes
    tangents = [n for n in placeholders if _p._is_tangent(n)]
    fwd_seeds = [n for n in placeholders if _p._is_fwd_seed_offset(n)]
    bwd_seeds = [n for n in placeholders if _p._is_bwd_seed_offset(n)]
    if any(isinstance(n.meta.get("val"), _p.FakeScriptObject) for n in saved_values):
        raise NeedsTorchExtraction("opaque objects among the saved values")

    dropped = _drop_unused_saved(graph, [*saved_sym_nodes, *saved_values], tangents, bwd_seeds, bwd_outputs)
    saved_values = [n for n in saved_values if n not in dropped]
    saved_sym_nodes = [n for n in saved_sym_nodes if n not in dropped]
    saved_sym_nodes = _with_symbol_bindings(graph, saved_sym_nodes, saved_values, tangents)
    # Tensors stashed without a version-counter check go last (Note [Activations with no version counter checks in eager]).
    checked = [n for n in saved_values if not n.meta.get("saved_tensor_with_no_vc_check", False)]
    unchecked = [n for n in saved_values if n.meta.get("saved_tensor_with_no_vc_check", False)]
    saved_values = checked + unchecked
    saved_descs = [
        _p.SavedForBackwardsNoVcCheckAOTOutput(i)
        if len(checked) <= i < len(saved_values)
        else _p.SavedForBackwardsAOTOutput(i)
        for i in range(len(saved_values) + len(saved_sym_nodes))
    ]
    forward = _copy_module(
        joint_module,
        [*primals, *fwd_seeds],
        [*fwd_outputs, *saved_values, *saved_sym_nodes],
        [*fwd_descs, *saved_descs],
        "forward",
    )
    backward = _copy_module(
        joint_module,
        [*saved_sym_nodes, *saved_values, *tangents, *bwd_seeds],
        list(bwd_outputs),
        list(bwd_descs),
        "backward",
    )
    return forward, backward


def _with_symbol_bindings(graph: fx.Graph, saved_sym_nodes, saved_values, tangents) -> list[fx.Node]:
    """Saved symints plus a binding for every symbol the backward's inputs mention, bindings first."""
    saved_symbols = set()
    binding, derived = [], []
    for node in saved_sym_nodes:
        symbol = is_symbol_binding_fx_node(node)
        if symbol:
            saved_symbols.add(symbol)
            binding.append(node)
        else:
            derived.append(node)
    symbol_bindings = None
    for node in itertools.chain(derived, saved_values, tangents):
        if "val" not in node.meta:
            continue
        new_symbols = _symbols_to_bind(node.meta["val"]) - saved_symbols
        if not new_symbols:
            continue
        if symbol_bindings is None:
            symbol_bindings = find_symbol_binding_fx_nodes(graph)
        for symbol in sorted(new_symbols, key=lambda s: s.name):
            if symbol in symbol_bindings:
                binding.append(symbol_bindings[symbol])
        saved_symbols |= new_symbols
    return binding + derived


def _symbols_to_bind(val) -> set:
    """The symbols a backward input mentions: with torch >= 2.14 also those its sizes had before
    the shape environment's replacements (runtime assertions read those)."""
    unreplaced = getattr(_p, "_free_symbols_without_replacements", None)
    symbols = set(free_symbols(val))
    if unreplaced is not None:
        symbols |= set(unreplaced(val))
    return symbols


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
