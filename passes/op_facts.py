"""What an op is (pointwise, fusible, a view or alias, random, mutating), answered in one place.

Every answer depends on the node's op (its target), sometimes on its arguments,
never on the rest of the graph. Private PyTorch API is reached through
passes/torch_internals.py.

Some questions have two answers on purpose, because the two models that ask
them were fitted separately and plans depend on both (the functions below say
which model uses which):

- Does it fuse? The peak model (passes.liveness, passes.joint_liveness) asks
  whether a pointwise value gets a buffer: ``is_pointwise`` for the producer,
  ``is_fusible_consumer`` for its readers (pointwise ops, aliases, a fixed list
  of reductions). The cost model (rematpass.cost) asks whether recomputing an
  op costs only its arithmetic: ``is_fusible_recompute`` (PyTorch's
  partitioner's fusible list, views, getitem, any op tagged pointwise). They
  differ: ``aten.index``, ``aten.gather``, ``aten.arange`` or
  ``aten.native_dropout`` are fusible recomputations but neither pointwise nor
  fusible consumers for the peak model, and ``aten._softmax``, ``aten.amin``,
  ``aten.copy_`` or ``aten.transpose`` are fusible consumers but not fusible
  recomputations.
- Is it a view? ``aliased_input`` reads the schema (views and in-place
  results: what shares a storage, for the peak model); ``is_view`` is
  PyTorch's partitioner's view list (what the summary refuses to save and the
  cost model prices at 0; it lacks ``aten.transpose``, which the schema and
  the other two call a view); ``is_movable_view`` is the overloads
  passes.hoist_matmul may move next to their base (in-place ops cannot move);
  ``is_view_by_schema`` is what the benchmark leaves out when it counts
  recomputed ops.
- Is it random? ``is_random`` is the planner's answer: the op draws new numbers
  each run (tagged ``nondeterministic_seeded``; attention only with a nonzero
  ``dropout_p``), so it is never recomputed. ``replays_a_saved_seed`` names the
  ops that draw from a seed they are given (``inductor_random``): recomputing
  them replays the same numbers. Two clean-ups mirror PyTorch's own rules so
  that their result equals PyTorch's node for node (tests/test_flow_speed_helpers.py):
  ``torch_internals.cse_in_place`` never merges PyTorch's ``rand_ops`` (as
  ``fx_graph_cse``), and the module extraction keeps what ``Node.is_impure``
  keeps under ``fallback_random`` (as ``eliminate_dead_code``).
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import torch
import torch.fx as fx
from torch.utils.flop_counter import flop_registry

from . import torch_internals as ti  # also registers Inductor's prims, which the op sets below name

_aten = torch.ops.aten
_prims = torch.ops.prims


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


def is_getitem(node: fx.Node) -> bool:
    """An item of a multi-output op's result."""
    return node.target is operator.getitem


def _packet(node: fx.Node):
    return getattr(node.target, "overloadpacket", None)


# ---------------------------------------------------------------------------- randomness, mutation, side effects


def is_random(node: fx.Node) -> bool:
    """Whether running the node again draws different numbers (tagged ``nondeterministic_seeded``).

    Attention ops carry the tag for their dropout; with ``dropout_p == 0`` they draw nothing.
    """
    if torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
        return False
    schema = ti.op_schema(node.target)
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


def replays_a_saved_seed(node: fx.Node) -> bool:
    """Whether the node draws random numbers from a seed it is given (Inductor's
    ``inductor_random``, and the seed lookup feeding it): run again from the same saved seed, it
    draws the same numbers, so recomputing it replays the mask rather than redrawing it."""
    return _packet(node) in (_prims.inductor_random, _prims.inductor_lookup_seed)


def _has_dropout_argument(node: fx.Node) -> bool:
    schema = ti.op_schema(node.target)
    return schema is not None and any(argument.name == "dropout_p" for argument in schema.arguments)


def is_mutating(node: fx.Node) -> bool:
    """Whether the op writes to one of its inputs (its schema is mutable)."""
    schema = ti.op_schema(node.target) if isinstance(node.target, ti.OpOverload) else None
    return schema is not None and schema.is_mutable


def is_builtin_op(node: fx.Node) -> bool:
    """An aten or prims op, getitem, or a Python operator on sizes: known to have no side effects."""
    target = node.target
    if target is operator.getitem:
        return True
    if isinstance(target, ti.OpOverload):
        return target.namespace in ("aten", "prims")
    # Python operators on SymInts (operator.mul, sym_size...) are pure.
    return getattr(target, "__module__", None) in ("_operator", "operator", "math", "torch") or ti.is_sym_node(node)


class OpKind(NamedTuple):
    random: bool
    mutating: bool
    name: str


class OpFacts:
    """``is_random``, ``is_mutating`` and ``op_name`` per op, and opaque-ness per value type, computed once:
    a joint graph repeats a few dozen ops over thousands of nodes.

    Whether an attention op draws random numbers depends on the node's ``dropout_p``, so for
    ops with that argument ``random`` is read per node: one attention without dropout must not
    make another, with dropout, recomputable (it would redraw its mask).
    """

    def __init__(self):
        self._ops: dict[object, tuple[OpKind, bool]] = {}
        self._opaque_types: dict[type, bool] = {}

    def op(self, node: fx.Node) -> OpKind:
        """What a call_function node's op is."""
        found = self._ops.get(node.target)
        if found is None:
            kind = OpKind(is_random(node), is_mutating(node), op_name(node))
            found = self._ops[node.target] = (kind, _has_dropout_argument(node))
        kind, per_node = found
        return kind._replace(random=is_random(node)) if per_node else kind

    def tensor_is_opaque(self, val: torch.Tensor) -> bool:
        """``torch_internals.is_opaque_value`` for a tensor value: a question about its type."""
        found = self._opaque_types.get(type(val))
        if found is None:
            found = self._opaque_types[type(val)] = ti.is_opaque_type(type(val))
        return found


# ---------------------------------------------------------------------------- aliasing


def aliased_input(node: fx.Node) -> fx.Node | None:
    """The input whose storage ``node``'s output shares (views, in-place results), if any: the schema's answer."""
    if node.op != "call_function" or node.target is operator.getitem:
        return None
    positions = _aliased_argument_positions(node.target)
    if positions is None:
        return None
    for i in positions:
        if i < len(node.args) and isinstance(node.args[i], fx.Node):
            return node.args[i]
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


@functools.cache
def _aliased_argument_positions(target) -> tuple[int, ...] | None:
    """Positions of the arguments an op's first output aliases; None if it aliases none."""
    schema = ti.op_schema(target)
    if schema is None or not schema.returns or schema.returns[0].alias_info is None:
        return None
    alias_set = schema.returns[0].alias_info.before_set
    return tuple(
        i
        for i, argument in enumerate(schema.arguments)
        if argument.alias_info is not None and argument.alias_info.before_set & alias_set
    )


@functools.lru_cache(maxsize=1)
def _torch_op_types():
    return ti.op_types()


def is_view(node: fx.Node) -> bool:
    """A view by PyTorch's partitioner's op list (summary: cannot be saved; cost model: free)."""
    return node.op == "call_function" and _torch_op_types().is_view(node)


# Views that may run anywhere after their base (hoist_matmul moves them); no in-place ops.
_MOVABLE_VIEWS = {
    _aten.t.default,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
    _aten.expand.default,
    _aten.alias.default,
    _aten.squeeze.dim,
    _aten.unsqueeze.default,
}


def is_movable_view(node: fx.Node) -> bool:
    """A view of its first argument that can run anywhere after it (passes.hoist_matmul)."""
    return node.op == "call_function" and node.target in _MOVABLE_VIEWS


# Views that keep a contiguous input's element order: a kernel reading through them reads each
# element at the index it writes (Inductor's in-place rule compares the two indices).
_ORDER_KEEPING_VIEWS = {
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
    _aten.alias.default,
    _aten.squeeze.dim,
    _aten.squeeze.default,
    _aten.unsqueeze.default,
}


def reads_in_write_order(node: fx.Node, arg: fx.Node) -> bool:
    """Whether ``node`` reads ``arg``'s elements at the positions it writes its own: an elementwise
    op on an operand of its own shape, or a view that keeps a contiguous input's order. Inductor
    writes a kernel's output over a dying input only then (``SchedulerNode.can_inplace``): not
    through a slice, a transpose or a broadcast."""
    out, val = node.meta.get("val"), arg.meta.get("val")
    if not isinstance(out, torch.Tensor) or not isinstance(val, torch.Tensor):
        return False
    if node.target in _ORDER_KEEPING_VIEWS:
        return val.is_contiguous() and out.numel() == val.numel()
    return is_pointwise(node) and tuple(out.shape) == tuple(val.shape) and val.is_contiguous()


def is_view_by_schema(node: fx.Node) -> bool:
    """getitem, or an op whose schema says an output aliases an input it does not write (the benchmark's count)."""
    if node.target is operator.getitem:
        return True
    schema = ti.op_schema(node.target)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


# ---------------------------------------------------------------------------- fusion: the peak model


# Not tagged pointwise, but Inductor lowers them as pointwise kernels.
_POINTWISE_EXTRA = {
    _aten.where,
    _aten.clone,
    _aten._to_copy,
    _prims.convert_element_type,
    _aten.full,
    _aten.scalar_tensor,
    _aten.slice_scatter,  # each output element is self's or src's
    _aten.select_scatter,
    _prims.inductor_random,
    _prims.inductor_lookup_seed,
}
# A max-pool's saved offsets turned back into indices (Inductor's own prim, where this torch has it).
if hasattr(_prims, "_low_memory_max_pool_offsets_to_indices"):
    _POINTWISE_EXTRA.add(_prims._low_memory_max_pool_offsets_to_indices)
# Reductions whose rows Inductor's CPU backend can share with a later loop nest (outer-loop fusion).
_ROW_REDUCTIONS = {
    _aten.sum,
    _aten.mean,
    _aten.amax,
    _aten.amin,
    _aten.var_mean,
    _aten.var,
    _prims.var,
    _prims.sum,
    _aten.max,
    _aten.min,
    _prims.prepare_softmax_online,
}
# Reductions Inductor fuses a pointwise producer into, and scatters: Inductor writes a scatter's
# output by computing its ``self`` into a fresh buffer (a zero fill: no buffer of its own) and
# scattering a pointwise ``src`` into it (a max-pool's or an embedding's gradient).
_FUSIBLE_REDUCTIONS = {
    _aten.scatter_add,
    _aten.scatter,
    _aten.index_put,
    _aten._unsafe_index_put,
    _aten._unsafe_masked_index_put_accumulate,  # an embedding's gradient: ``where(mask, values, 0)`` scattered
    *_ROW_REDUCTIONS,
    _aten.argmax,
    _aten._softmax,
    _aten._log_softmax,
}


def reduced_rows(node: fx.Node) -> int:
    """How many rows a reduction over its input's trailing dimensions leaves (a LayerNorm's
    ``var_mean`` over ``[16, 65, 128]``'s last: 1040), or 0 for any other node: a full reduction,
    one over other dimensions (a BatchNorm's), or no reduction. Inductor's C++ backend runs such a
    reduction and a later loop nest over the same rows in one outer loop
    (``can_fuse_vertical_outer_loop``)."""
    if node.op != "call_function" or _packet(node) not in _ROW_REDUCTIONS or len(node.args) < 2:
        return 0
    source, dims = node.args[0], node.args[1]
    shape = getattr(source.meta.get("val"), "shape", None) if isinstance(source, fx.Node) else None
    if shape is None or any(not isinstance(s, int) for s in shape):
        return 0
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not dims or any(not isinstance(d, int) for d in dims):
        return 0
    kept = len(shape) - len(dims)
    if kept < 1 or sorted(d % len(shape) for d in dims) != list(range(kept, len(shape))):
        return 0
    rows = 1
    for size in shape[:kept]:
        rows *= size
    return rows


def is_pointwise(node: fx.Node) -> bool:
    """A pointwise op, as the peak model counts them: its value needs no buffer when every reader fuses it."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    return torch.Tag.pointwise in getattr(node.target, "tags", ()) or _packet(node) in _POINTWISE_EXTRA


# Ops whose reuse Inductor realizes on the CPU (``StorageBox.should_realize_on_reuse``'s heavy ops).
_HEAVY_POINTWISE = {_aten.exp, _aten.log, _aten.log10, _aten.log1p, _aten.log2, _aten.sigmoid, _aten.tanh}


def is_heavy_pointwise(node: fx.Node) -> bool:
    """A pointwise op that Inductor computes once rather than in each reader on the CPU, where it
    has more than one reader (exp, log, sigmoid, tanh)."""
    return _packet(node) in _HEAVY_POINTWISE


# Ops Inductor lowers as a fill and then a scatter into the filled buffer (a mutation).
_SCATTERS = {
    _aten.scatter_add,
    _aten.scatter,
    _aten.scatter_reduce,
    _aten.index_put,
    _aten._unsafe_index_put,
    _aten._unsafe_masked_index_put_accumulate,
    _aten.embedding_dense_backward,
}


def is_scatter(node: fx.Node) -> bool:
    """An op whose buffer Inductor fills and then scatters into: a later kernel never writes its own
    output over that buffer (the scheduler does not reuse a mutated buffer in place)."""
    return _packet(node) in _SCATTERS


def scattered_into(node: fx.Node) -> fx.Node | None:
    """The input a scatter copies into its own buffer before scattering into it, if any: Inductor
    lowers ``index_put(x, ...)`` and ``scatter*(x, ...)`` as ``clone(x)`` and an in-place scatter,
    so a pointwise ``x`` (an embedding gradient's zeros) is computed in that copy and needs no
    buffer of its own."""
    if _packet(node) in _SCATTERS and _packet(node) is not _aten.embedding_dense_backward:
        destination = node.args[0] if node.args else None
        return destination if isinstance(destination, fx.Node) else None
    return None


def is_stored_by_lowering(node: fx.Node) -> bool:
    """A pointwise op whose value Inductor always stores (its lowering realizes random numbers, so
    each reader sees the same draw)."""
    return _packet(node) in (_prims.inductor_random, getattr(_prims, "inductor_randint", None))


def is_fusible_consumer(node: fx.Node) -> bool:
    """Whether Inductor fuses a pointwise producer into this reader's kernel (the peak model):
    pointwise ops, getitem, aliases and the reductions above; not matmuls, convolutions or extern kernels."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    if is_pointwise(node) or aliased_input(node) is not None:
        return True
    return _packet(node) in _FUSIBLE_REDUCTIONS


# ---------------------------------------------------------------------------- fusion and FLOPs: the cost model


_FUSIBLE_RECOMPUTE: dict[object, bool] = {}  # a property of the op alone: cached per target


def is_fusible_recompute(node: fx.Node) -> bool:
    """Whether recomputing the node can run inside a backward kernel that reads its inputs anyway,
    costing only its arithmetic (the cost model): PyTorch's partitioner's fusible ops, its views,
    getitem, and any op tagged pointwise."""
    if node.op != "call_function":
        return False
    found = _FUSIBLE_RECOMPUTE.get(node.target)
    if found is None:
        types = _torch_op_types()
        found = _FUSIBLE_RECOMPUTE[node.target] = bool(
            node.target is operator.getitem
            or types.is_fusible(node)
            or types.is_view(node)
            or torch.Tag.pointwise in getattr(node.target, "tags", ())
        )
    return found


def _with_cpu_attention(registry: dict) -> dict:
    """torch's flop counter has no formula for the CPU backend's flash attention, so attention
    recomputed on the CPU looked memory-bound and nearly free. Its forward takes (query, key,
    value, ...) and its backward (grad_out, query, key, value, ...) like the CUDA flash kernels,
    whose formulas read only those, so they apply as they are."""
    formulas = dict(registry)
    for cpu_name, cuda_name in (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward"),
    ):
        cpu, cuda = getattr(_aten, cpu_name, None), getattr(_aten, cuda_name, None)
        if cpu is not None and cuda in registry and cpu not in registry:
            formulas[cpu] = registry[cuda]
    return formulas


_FLOP_FORMULAS = _with_cpu_attention(flop_registry)


def is_compute_bound(node: fx.Node) -> bool:
    """An op with a FLOP formula (``torch.utils.flop_counter``'s, plus the CPU flash attention):
    matmul, convolution, attention. Fractional budgets are spent in these FLOPs."""
    return _packet(node) in _FLOP_FORMULAS


def flop_formula(node: fx.Node):
    """The FLOP formula of a compute-bound node (``is_compute_bound``)."""
    return _FLOP_FORMULAS[_packet(node)]
