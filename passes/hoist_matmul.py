"""Run a matmul where its operands are ready, not where Inductor's addmm fusion put it.

Inductor's post-grad patterns turn ``add(mm(a, b), c)`` into ``addmm(c, a, b)``
at the add. When ``c`` comes much later than ``a`` and ``b``, the matmul
moves with it, and ``a`` and ``b`` stay alive until then. The case that
matters is a tied embedding: the output projection's weight gradient
(``mm(grad_logits.t(), hidden)``) is added to the embedding's gradient, which
the backward computes last, so the logits gradient, the largest tensor of a
language model, is held through the whole backward.

``hoist_late_matmuls`` splits such an ``addmm`` back into an ``mm``, placed
where the operand storages it frees would otherwise die, and an ``add``
where the addmm was, when those storages outweigh the matmul's output held
until the add. Run it after Inductor's pattern passes (its post-grad custom
post pass), so the pair is not fused again.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .liveness import hinted_size, tensor_bytes
from .op_facts import is_movable_view

aten = torch.ops.aten


def _view_chain(node: fx.Node) -> tuple[list[fx.Node], fx.Node]:
    """The views from ``node`` down to its storage base (``node`` first), and the base."""
    chain = []
    while is_movable_view(node) and isinstance(node.args[0], fx.Node):
        chain.append(node)
        node = node.args[0]
    return chain, node


def _storage_base(node: fx.Node) -> fx.Node:
    return _view_chain(node)[1]


def _readers(base: fx.Node) -> list[fx.Node]:
    """Every node that reads ``base``'s storage, through views."""
    found, pending = [], list(base.users)
    while pending:
        user = pending.pop()
        if is_movable_view(user):
            pending.extend(user.users)
        found.append(user)
    return found


def _nbytes(node: fx.Node) -> int:
    return tensor_bytes(node.meta.get("val"), hinted_size)  # symbolic sizes at their hints


def _last_other_reader(operand: fx.Node, addmm: fx.Node, position: dict[fx.Node, int]) -> fx.Node | None:
    """The last node before ``addmm`` that reads ``operand``'s storage, if the storage would die there.

    None when nothing would be freed early: a graph input (parameters outlive
    the graph), a graph output, or a storage read again at or after ``addmm``.
    """
    base = _storage_base(operand)
    if base.op != "call_function":
        return None
    readers = _readers(base)
    if any(u.op == "output" for u in readers):
        return None
    others = [u for u in readers if u is not addmm and not (is_movable_view(u) and addmm in _readers(u))]
    last = max(others, key=position.__getitem__, default=base)
    return last if position[last] < position[addmm] else None


def _movable_views(operand: fx.Node, addmm: fx.Node, position: dict[fx.Node, int]) -> list[fx.Node]:
    """The view nodes between ``operand``'s storage base and ``addmm`` if they can move to the base.

    Inductor's pattern leaves the transposes of a fused matmul where the add
    was; they can run right after the base when nothing else reads them and
    their other inputs (symbolic sizes, say) are ready by then.
    """
    chain, base = _view_chain(operand)
    for view, reader in zip(chain, [addmm] + chain[:-1]):
        if set(view.users) != {reader}:
            return []
    if any(position[arg] > position[base] for view in chain for arg in view.all_input_nodes[1:]):
        return []
    return chain[::-1]


def hoist_late_matmuls(graph: fx.Graph) -> int:
    """Split late ``addmm(c, a, b)`` into ``mm(a, b)`` where ``a`` or ``b`` would die and ``add(c, mm)``.

    The matmul goes right after the last other reader of the operand storages
    it frees, so its output replaces them: live bytes never rise anywhere, and
    fall by their size less the output's between there and the add. Returns
    how many were split.
    """
    position = {node: i for i, node in enumerate(graph.nodes)}
    hoisted = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.addmm.default or node.kwargs:
            continue
        bias, a, b = node.args[:3]
        if not all(isinstance(x, fx.Node) for x in (bias, a, b)):
            continue
        operands = {_storage_base(a): a, _storage_base(b): b}
        dying = {base: _last_other_reader(x, node, position) for base, x in operands.items()}
        freed = sum(_nbytes(base) for base, last in dying.items() if last is not None)
        if freed <= _nbytes(node):
            continue
        chains = [_movable_views(x, node, position) for x in (a, b)]
        ready = max(position[chain[0].args[0]] if chain else position[x] for x, chain in zip((a, b), chains))
        anchor = max([last for last in dying.values() if last is not None], key=position.__getitem__)
        start = max(ready, position[anchor])
        if position[bias] <= start or position[node] - start <= 1:
            continue  # the addmm could not run any earlier where it would help
        for chain in chains:
            for view in chain:
                view.args[0].append(view)  # move each view right after what it views
        position = {n: i for i, n in enumerate(graph.nodes)}
        after = max([a, b, anchor], key=position.__getitem__)
        with graph.inserting_after(after):
            product = graph.call_function(aten.mm.default, (a, b))
        val = node.meta["val"]
        product.meta = {k: v for k, v in node.meta.items() if k != "val"}
        product.meta["val"] = val.new_empty(val.shape)
        with graph.inserting_before(node):
            total = graph.call_function(aten.add.Tensor, (bias, product))
        total.meta = dict(node.meta)
        node.replace_all_uses_with(total)
        graph.erase_node(node)
        hoisted += 1
        position = {n: i for i, n in enumerate(graph.nodes)}
    return hoisted


__all__ = ["hoist_late_matmuls"]
