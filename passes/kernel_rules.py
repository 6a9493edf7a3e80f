"""How Inductor turns a phase's graph into kernels, as rules on the peak model's arrays
(``joint_liveness.JointPeakModel``): which fused values its lowering stores anyway, which stored
values its scheduler fuses away again, where it writes an output over a dying input, which kernels
it fuses with an earlier sibling, and which matmul it runs later as an addmm. Each rule names the
Inductor code it follows; benchmarks/prediction.py and tests/test_peak_inductor_rules.py check the
predicted peak against Inductor's own schedule of the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.fx as fx

from .op_facts import is_pointwise

if TYPE_CHECKING:
    from .joint_liveness import JointPeakModel


@dataclass(frozen=True)
class StoreRules:
    """When Inductor's lowering stores a pointwise value in a buffer instead of computing it inside
    each reader's kernel (``GraphLowering.run_node``: ``mark_reuse``, ``has_exceeded_max_reads``),
    and which kernels its scheduler fuses with an earlier sibling (``siblings_fused``). Reads count
    the distinct buffers the value's fused expression loads; ops, the distinct ops in it. Defaults:
    Inductor's CPU settings (``realize_reads_threshold``, ``realize_cpu_acc_reads_threshold``,
    ``realize_cpu_opcount_threshold``, ``max_fusion_buffer_group_pairwise_attempts``)."""

    reads_when_reused: int = 4  # read by more than one op and loading more buffers than this: stored
    max_reads: int = 12  # loading more buffers than this: stored
    max_ops: int = 50  # more ops than this: stored
    heavy_when_reused: bool = True  # read by more than one op and holding an exp, log, sigmoid or tanh: stored
    sibling_window: int = 64  # kernels sharing a read are paired for fusion within this many of its readers
    fusion_distance: int = 64  # and only when at most this many scheduler nodes apart (``are_long_distant_nodes``)
    reorder_for_peak_memory: bool = True  # fused kernels then reordered for peak memory (``memory_reorder``)
    outer_loop_fusion: bool = True  # a pointwise kernel joins the row reduction it reads (the C++ backend only)
    # Ops Inductor runs as a library call whose tuple of outputs is one allocation, read through a
    # node per output (``FallbackKernel``, ``MultiOutput``): from the installed Inductor's fallbacks.
    multi_output_ops: frozenset = frozenset()
    # Ops whose layout constraint copies, for each call, an input whose value is not stored yet
    # (``sdpa_constraint`` on the CPU: ``ExternKernel.require_stride_order`` on a value still
    # computed inline makes a new buffer with ``copy_input``): from the installed Inductor.
    copy_each_input_ops: frozenset = frozenset()


def matmuls_added_later(nodes: Iterable[fx.Node], backward: Iterable[fx.Node]) -> list[tuple[fx.Node, fx.Node]]:
    """(mm, add) pairs of ``backward`` that Inductor's post-grad pattern ``addmm`` turns into one
    ``addmm(c, a, b)`` where ``add(mm(a, b), c)`` was: the matmul then runs at the add, and its
    inputs live until there. A tied embedding's weight gradient is the large case: the LM head's
    ``mm(dlogits^T, h)`` waits for the embedding's gradient at the end of the backward, so the
    ``[tokens, vocab]`` logits gradient lives through the whole backward (GPT-2: 2 MB of 9 at
    size 0.5). The pattern's checks: the matmul's only reader is the add, whose other operand is
    a tensor of the matmul's dtype that broadcasts to its shape; off on GPUs when every reader
    of the add is pointwise (``should_prefer_unfused_addmm``)."""
    mm, add = torch.ops.aten.mm.default, torch.ops.aten.add.Tensor
    backward = set(backward)
    pairs = []
    for node in nodes:
        if node.target is not mm or node not in backward or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.target is not add or user.kwargs or len(user.args) != 2 or user not in backward:
            continue
        other = user.args[1] if user.args[0] is node else user.args[0]
        out, val = node.meta.get("val"), other.meta.get("val") if isinstance(other, fx.Node) else None
        if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor) or other is node:
            continue
        mats = [a.meta.get("val") for a in node.args[:2] if isinstance(a, fx.Node)]
        if val.dtype != out.dtype or any(not isinstance(m, torch.Tensor) or m.dtype != val.dtype for m in mats):
            continue
        try:
            expandable = torch.broadcast_shapes(val.shape, out.shape) == out.shape
        except RuntimeError:
            expandable = False
        if not expandable:
            continue
        if val.device.type != "cpu" and all(is_pointwise(u) for u in user.users):
            continue
        pairs.append((node, user))
    return pairs


def stored_by_rules(
    model: JointPeakModel, body: np.ndarray, outputs: np.ndarray, own: np.ndarray, copying_calls: np.ndarray
) -> None:
    """Mark in ``own`` the fused pointwise values of ``body`` that Inductor's lowering stores
    (``StoreRules``), in graph order, so a stored value ends the reads of the values that read it.
    ``copying_calls`` counts, per value, the calls of ``copy_each_input_ops`` that read it (through
    views): a value read by two or more of them that loads more than one buffer is stored once for
    all (``StorageBox.realize_hint``); one that loads a single buffer is left to each call's copy
    (``JointPeakModel._input_copies``)."""
    rules = model.store_rules
    own |= body & model.always_stored
    readers = np.zeros(len(model.nodes), dtype=np.int64)
    np.add.at(readers, model.src[body[model.dst]], 1)
    readers += outputs
    reads: dict[int, frozenset] = {}  # a fused value's loads: the buffers its expression reads
    ops: dict[int, frozenset] = {}  # and the ops it holds
    heavy: dict[int, bool] = {}
    stored: list[int] = []  # stored by these rules (not read by a matmul or returned)

    def loads(i: int) -> tuple[frozenset, frozenset, bool]:
        while i not in reads and model.alias_of[i] >= 0:  # a view of a fused value is fused too
            i = int(model.alias_of[i])
        if i in reads:
            return reads[i], ops[i], heavy[i]
        return frozenset((i,)), frozenset(), False

    for i in np.flatnonzero(body & model.pointwise & ~own):
        i = int(i)
        parts = [loads(j) for j in model.inputs[i]]
        my_reads = frozenset().union(*(p[0] for p in parts))
        my_ops = frozenset((i,)).union(*(p[1] for p in parts))
        my_heavy = bool(model.heavy[i]) or any(p[2] for p in parts)
        reused = readers[i] > 1 and (len(my_reads) > rules.reads_when_reused or (rules.heavy_when_reused and my_heavy))
        hinted = copying_calls[i] > 1 and len(my_reads) > 1
        if reused or hinted or len(my_reads) > rules.max_reads or len(my_ops) > rules.max_ops:
            own[i] = True
            stored.append(i)
            continue
        reads[i], ops[i], heavy[i] = my_reads, my_ops, my_heavy
    for i in stored:
        if not outputs[i] and fused_into_readers(model, i, body, own):
            own[i] = False


def fused_into_readers(model: JointPeakModel, value: int, body: np.ndarray, own: np.ndarray) -> bool:
    """Whether every read of a stored ``value`` ends, through fused values, in pointwise kernels
    of its own size that need nothing computed from it by another kernel: the scheduler then
    fuses them with it and drops the buffer (a GELU's ``tanh``, stored for its two readers in
    the GELU's backward, is one kernel with them; a residual stream's gradient, read again after
    the matmuls it feeds, is not)."""
    path, sinks, pending = {value}, set(), [value]
    while pending:
        for reader in model.users[pending.pop()]:
            if not body[reader] or reader in path or reader in sinks:
                continue
            if not own[reader] and (model.pointwise[reader] or model.alias_of[reader] >= 0):
                path.add(reader)
                pending.append(reader)
            elif model.pointwise[reader] and model.numel[reader] == model.numel[value]:
                sinks.add(reader)
            else:
                return False
    # Values computed from ``value`` in other kernels before the last sink: none may feed a sink.
    last = max(sinks, default=value)
    later, pending = set(), [value]
    while pending:
        for reader in model.users[pending.pop()]:
            if body[reader] and reader <= last and reader not in later:
                later.add(reader)
                pending.append(reader)
    # What those kernels read: through fused values, down to stored ones.
    pending, seen = list((path | sinks) - {value}), path | sinks
    while pending:
        for j in model.inputs[pending.pop()]:
            if j in seen or j < value:
                continue
            seen.add(j)
            if own[j] and model.alias_of[j] < 0:
                if j in later:
                    return False
            else:
                pending.append(j)
    return True


def read_in_write_order(model: JointPeakModel, kernel: int, buffer: int, mat: np.ndarray) -> bool:
    """Whether ``kernel`` reads ``buffer`` at the positions it writes, through the fused values
    and views between them."""
    pending, seen = [kernel], {kernel}
    while pending:
        for j in model.in_order[pending.pop()]:
            if j == buffer:
                return True
            if j not in seen and (not mat[j] or model.alias_of[j] >= 0):
                seen.add(j)
                pending.append(j)
    return False


def scheduler_places(model: JointPeakModel, order: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Each node's place among the scheduler's nodes when ``order`` runs (every stored value but a
    view is one), as its fusion-distance rule counts them (``are_long_distant_nodes``)."""
    scheduled = np.zeros(len(model.nodes), dtype=np.int64)
    scheduled[order] = np.cumsum(mat[order] & (model.alias_of[order] < 0))
    return scheduled


def siblings_fused(
    model: JointPeakModel, order: np.ndarray, roots: np.ndarray, mat: np.ndarray
) -> tuple[np.ndarray, dict[int, int]]:
    """``order`` as Inductor's scheduler runs it once it has fused pointwise kernels of one size
    that read an operand of that size (siblings: sharing more than a weight or a statistic). The
    scheduler pairs the readers of each buffer within ``store_rules.sibling_window`` of each other
    and at most ``store_rules.fusion_distance`` scheduler nodes apart (``are_long_distant_nodes``),
    and fuses the pairs in the order of the bytes they share, the nearest first on a tie
    (``score_fusion``): a recomputed RMSNorm output shares more with its own norm's backward than
    with the next layer's norm output, and runs with the backward. A fused kernel runs at its
    earliest kernel's place, after whatever the later ones need that had not run yet (the
    scheduler's topological sort visits the fused kernel there and schedules its missing inputs
    first); not when a later one needs something computed from the earlier ones (the fusion would
    make a cycle), nor when it would pull more than ``MOST_PULLED_AHEAD`` nodes ahead. A SwiGLU's
    backward is one kernel with the SiLU-times-up recomputed for the down projection's weight
    gradient, so that gradient's matmul waits for it; a GELU's backward runs before its weight
    gradient's matmul. Returns the order and, for each kernel fused into an earlier one, that one."""
    rules = model.store_rules
    window = rules.sibling_window
    n, steps = len(model.nodes), len(order)
    run_at = np.full(n, -1.0)
    run_at[order] = np.arange(steps, dtype=np.float64)
    kernel = mat & model.pointwise & (model.alias_of < 0) & (model.getitem_of < 0)
    scheduled = scheduler_places(model, order, mat)
    kernels = order[kernel[order]].tolist()
    loads_of: dict[int, set[int]] = {}
    chain_of: dict[int, set[int]] = {}
    readers: dict[int, list[int]] = {}  # buffer: kernels that read it, in order
    pairs = []
    for k in kernels:
        loads, chain, pending = set(), set(), [k]
        while pending:
            for j in model.inputs[pending.pop()]:
                if not mat[j] and run_at[j] >= 0 and j not in chain:  # a fused value: computed here
                    chain.add(j)
                    pending.append(j)
                else:
                    loads.add(int(roots[j]))
        loads_of[k], chain_of[k] = loads, chain
        shared = [b for b in loads if model.numel[b] == model.numel[k]]  # an operand of their size, not a weight
        siblings = {
            g
            for b in shared
            for g in readers.get(b, ())[-window:]
            if model.numel[g] == model.numel[k] and scheduled[k] - scheduled[g] <= rules.fusion_distance
        }
        for g in siblings:
            common = sum(int(model.nbytes[b]) for b in loads & loads_of[g])
            pairs.append((-common, scheduled[k] - scheduled[g], run_at[g], g, k))
        for b in loads:
            readers.setdefault(b, []).append(k)
    members = {k: [k] for k in kernels}
    leader = {k: k for k in kernels}
    for *_, g, k in sorted(pairs):
        first, second = sorted((leader[g], leader[k]), key=lambda m: run_at[m])
        if first == second:
            continue
        joined = set(members[first]) | set(members[second])
        _fuse(
            model,
            first,
            second,
            run_at[first],
            joined,
            set(members[first]),
            loads_of,
            chain_of,
            run_at,
            leader,
            members,
        )
    if rules.outer_loop_fusion:
        _join_row_reductions(model, kernels, run_at, roots, mat, loads_of, chain_of, leader, members)
    fused_with = {k: g for k, g in leader.items() if g != k}
    if not fused_with:
        return order, fused_with
    return order[np.lexsort((np.arange(steps), run_at[order]))], fused_with


# How many nodes a fusion may pull ahead of its place (beyond that, the pair is left unfused).
MOST_PULLED_AHEAD = 16


def _fuse(model, first, second, place, joined, kernels, loads_of, chain_of, run_at, leader, members) -> None:
    """Run the group led by ``second`` in one kernel with the group led by ``first``, at ``place``:
    what it needs that runs later (and does not read ``kernels``) is pulled just ahead of it.
    Nothing moves when that would make a cycle or pull too much."""
    needed = set().union(*(loads_of[m] for m in members[second])) - joined
    missing = _missing_inputs(model, needed, run_at, place, kernels)
    if missing is None:  # needs something computed from the earlier kernels
        return
    for j in missing:
        run_at[j] = place - 0.5
    for m in members[second]:
        for j in [*chain_of.get(m, ()), m]:
            if run_at[j] > place:
                run_at[j] = place + 0.25
        leader[m] = first
    members[first] += members.pop(second)


def _join_row_reductions(model, kernels, run_at, roots, mat, loads_of, chain_of, leader, members) -> None:
    """Fuse each pointwise kernel into the row reduction whose result it reads, when it runs over
    the same rows: Inductor's C++ backend puts both loop nests under one loop over the rows
    (``OuterLoopFusedSchedulerNode``). Its scheduler tries these pairs last (``get_fusion_pair_priority``
    1), so they join after the siblings. A forward that computes a LayerNorm's centred value only
    for the backward computes it in the statistics' kernel, not at the forward's end where its
    input would live until then. Only reduction-then-pointwise pairs: a reduction fused with a
    later reduction over the same rows depends on fusion candidates elsewhere in the graph
    (docs/design.md, section 5)."""
    outputs_of: dict[int, list[int]] = {}
    pairs = []
    for k in kernels:
        for b in loads_of[k]:
            r = int(model.getitem_of[b]) if model.getitem_of[b] >= 0 else b
            rows = int(model.rows[r])
            if not rows or not mat[r] or not 0 <= run_at[r] < run_at[k] or not _over_rows(model.nodes[k], rows):
                continue
            if r not in outputs_of:
                outputs_of[r] = [u for u in model.users[r] if model.getitem_of[u] == r and run_at[u] >= 0] or [r]
                loads_of.setdefault(r, {int(roots[j]) for j in model.inputs[r]})
            common = sum(int(model.nbytes[j]) for j in loads_of[k] & (loads_of[r] | set(outputs_of[r])))
            pairs.append((-common, run_at[k] - run_at[r], r, k))
    for *_, r, k in sorted(set(pairs)):
        first, second = leader.setdefault(r, r), leader[k]
        members.setdefault(r, [r])
        if first == second or run_at[second] < run_at[first]:
            continue
        own = {o for m in members[first] for o in outputs_of.get(m, ())}
        place = max(run_at[first], *(run_at[o] for o in own))
        joined = set(members[first]) | set(members[second]) | own
        _fuse(model, first, second, place, joined, joined, loads_of, chain_of, run_at, leader, members)


def _over_rows(node: fx.Node, rows: int) -> bool:
    """Whether ``node``'s value iterates ``rows`` rows in its leading dimensions, with more after them."""
    shape = getattr(node.meta.get("val"), "shape", ())
    prefix = 1
    for size in shape[:-1]:  # the last dimension stays after the rows
        prefix *= size
        if prefix == rows:
            return True
    return False


def _missing_inputs(
    model: JointPeakModel, loads: set[int], run_at: np.ndarray, place: float, kernels: set[int]
) -> list[int] | None:
    """The nodes ``loads`` need that run after ``place`` (themselves included), or None when one of
    them reads one of ``kernels`` (the fused kernel at ``place``) or there are too many."""
    missing, pending = set(), [b for b in loads if run_at[b] > place]
    missing.update(pending)
    while pending:
        for j in model.inputs[pending.pop()]:
            if j in kernels:
                return None
            if run_at[j] > place and j not in missing:
                missing.add(j)
                pending.append(j)
                if len(missing) > MOST_PULLED_AHEAD:
                    return None
    return sorted(missing)
