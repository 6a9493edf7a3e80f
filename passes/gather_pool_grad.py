"""Max-pool backward as a gather that fuses, not a scatter into a fresh buffer.

PyTorch's decomposition of ``max_pool2d_with_indices_backward`` (the one
Inductor uses) allocates a zero tensor the size of the pool's input,
scatter-adds the output gradient into it, and reshapes the result:

    zeros = full([B*C, H*W], 0)
    idx   = _low_memory_max_pool_offsets_to_indices(offsets, kernel, [H, W], stride, padding, dilation)
    grad  = view(scatter_add(zeros, 1, view(idx, [B*C, Ho*Wo]), view(grad_out, [B*C, Ho*Wo])), [B, C, H, W])

A scatter cannot fuse into the kernel that reads its result, so the zero
tensor and the int64 indices are real buffers, alive next to the saved
activations in the middle of the backward. When the windows do not overlap
(kernel == stride, no padding, no dilation, the input a whole number of
windows: ``nn.MaxPool2d(2)``) every input position has exactly one window and
its gradient is a pointwise function of that window's gradient and offset:

    grad[b, c, ho*kh + i, wo*kw + j] = grad_out[b, c, ho, wo] if offsets[b, c, ho, wo] == i*kw + j else 0

``gather_max_pool_backward`` rewrites the pattern into that expression
(unsqueeze, compare with an iota, where, view), which Inductor fuses into the
gradient's consumers. The values are identical: with one window per position
the scatter adds a single gradient to zero. Overlapping windows (the
scatter really sums), reduced-precision accumulation (the decomposition
casts around the scatter) and symbolic spatial sizes are left alone.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .torch_internals import detect_fake_mode  # also registers Inductor's prims (the max-pool offsets)

aten = torch.ops.aten
prims = torch.ops.prims


def _is(node: object, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target == target


def _offsets_to_indices_target():
    packet = getattr(prims, "_low_memory_max_pool_offsets_to_indices", None)
    return None if packet is None else packet.default


def _flattened(view: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """What ``view`` flattens, and the nodes between: the decomposition's ``reshape`` is a
    view, or a contiguous clone and a view when the tensor is not contiguous (channels-last)."""
    source, between = view.args[0], [view]
    if _is(source, aten.clone.default) and len(source.users) == 1:
        between.append(source)
        source = source.args[0]
    return source, between


class _Match:
    """A scatter-add max-pool backward: the nodes of the pattern and what the gather reads."""

    def __init__(self, result: fx.Node, scatter: fx.Node, zeros: fx.Node, index_view: fx.Node, grad_view: fx.Node):
        self.result, self.scatter, self.zeros = result, scatter, zeros
        self.indices, index_between = _flattened(index_view)
        self.grad_out, grad_between = _flattened(grad_view)
        self._between = index_between + [self.indices] + grad_between
        self.fake_mode = None  # the joint graph's FakeTensorMode, set once the match holds

    def dead_nodes(self) -> list[fx.Node]:
        """The pattern's nodes, users first, once the result is replaced."""
        return [self.result, self.scatter, self.zeros] + self._between


def _concrete(values) -> bool:
    return all(isinstance(v, int) for v in values)


def _match(result: fx.Node, offsets_to_indices) -> _Match | None:
    """The pattern ending at ``result`` if its windows do not overlap, else None."""
    if not (_is(result, aten.view.default) and _is(result.args[0], aten.scatter_add.default)):
        return None
    scatter = result.args[0]
    zeros, dim, index_view, grad_view = scatter.args
    if dim != 1 or len(scatter.users) != 1:
        return None
    if not (_is(zeros, aten.full.default) and zeros.args[1] == 0 and len(zeros.users) == 1):
        return None
    if not (_is(index_view, aten.view.default) and _is(grad_view, aten.view.default)):
        return None
    m = _Match(result, scatter, zeros, index_view, grad_view)
    if not _is(m.indices, offsets_to_indices):
        return None
    _, kernel, input_size, stride, padding, dilation = m.indices.args
    grad_val, result_val = m.grad_out.meta.get("val"), result.meta.get("val")
    if not (isinstance(grad_val, torch.Tensor) and isinstance(result_val, torch.Tensor)):
        return None
    if grad_val.dtype != result_val.dtype or grad_val.dim() != 4 or result_val.dim() != 4:
        return None  # casts around the scatter (fp16/bf16), or an unbatched pool
    if not (_concrete(kernel) and _concrete(input_size) and _concrete(stride) and _concrete(padding)):
        return None
    if list(kernel) != list(stride) or any(padding) or any(d != 1 for d in dilation):
        return None  # overlapping or padded windows: the scatter really adds
    pooled = list(grad_val.shape[-2:])
    if not _concrete(pooled) or [p * k for p, k in zip(pooled, kernel)] != list(input_size):
        return None  # a partial window at the edge (or symbolic sizes)
    m.fake_mode = detect_fake_mode([grad_val])
    if list(result_val.shape[-2:]) != list(input_size) or m.fake_mode is None:
        return None
    return m


def _add(graph: fx.Graph, fake_mode, target, args: tuple, kwargs: dict | None = None) -> fx.Node:
    """A call node with its FakeTensor ``val``, as every node of the joint graph has."""
    kwargs = kwargs or {}
    node = graph.call_function(target, args, kwargs)

    fake_args, fake_kwargs = fx.node.map_arg((args, kwargs), lambda a: a.meta["val"])  # SymInts in shape lists too
    with fake_mode:
        node.meta["val"] = target(*fake_args, **fake_kwargs)
    return node


def _rewrite(graph: fx.Graph, m: _Match) -> None:
    grad_val, fake_mode = m.grad_out.meta["val"], m.fake_mode
    offsets, kernel = m.indices.args[:2]
    kh, kw = kernel
    with graph.inserting_before(m.result):
        # [B, C, Ho, Wo] -> [B, C, Ho, 1, Wo, 1]: each window's row and column get their own dim.
        grad6 = _add(
            graph,
            fake_mode,
            aten.unsqueeze.default,
            (_add(graph, fake_mode, aten.unsqueeze.default, (m.grad_out, 3)), 5),
        )
        offsets6 = _add(
            graph, fake_mode, aten.unsqueeze.default, (_add(graph, fake_mode, aten.unsqueeze.default, (offsets, 3)), 5)
        )
        # position[i, j] = i*kw + j, the offset max-pool stores for window row i, column j
        iota = _add(
            graph,
            fake_mode,
            prims.iota.default,
            (kh * kw,),
            dict(start=0, step=1, dtype=torch.int64, device=grad_val.device, requires_grad=False),
        )
        position = _add(graph, fake_mode, aten.view.default, (iota, [1, 1, 1, kh, 1, kw]))
        is_max = _add(graph, fake_mode, aten.eq.Tensor, (offsets6, position))
        zero = _add(
            graph,
            fake_mode,
            aten.full.default,
            ([], 0.0),
            dict(dtype=grad_val.dtype, layout=torch.strided, device=grad_val.device, pin_memory=False),
        )
        spread = _add(graph, fake_mode, aten.where.self, (is_max, grad6, zero))
        if not spread.meta["val"].is_contiguous():  # strides follow a channels-last grad_out
            spread = _add(graph, fake_mode, aten.clone.default, (spread,), dict(memory_format=torch.contiguous_format))
        grad_in = _add(graph, fake_mode, aten.view.default, (spread, m.result.args[1]))
    grad_in.meta.update({k: v for k, v in m.result.meta.items() if k != "val"})
    m.result.replace_all_uses_with(grad_in)
    for node in m.dead_nodes():
        if not node.users:
            graph.erase_node(node)


def gather_max_pool_backward(graph: fx.Graph) -> int:
    """Rewrite every non-overlapping scatter-add max-pool backward in ``graph``; returns how many."""
    offsets_to_indices = _offsets_to_indices_target()
    if offsets_to_indices is None:
        return 0
    matches = [m for node in list(graph.nodes) if (m := _match(node, offsets_to_indices)) is not None]
    for m in matches:
        _rewrite(graph, m)
    return len(matches)
