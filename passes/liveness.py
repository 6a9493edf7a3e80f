"""What a step's peak is made of: the estimate's type, tensor sizes, and which values get a buffer.

The peak of a training step is what it allocates on top of what existed before it: parameters,
buffers and the batch are not counted; saved tensors, transients and the gradients the backward
returns are. ``passes.joint_liveness`` predicts it for many plans on the joint graph;
``rematpass.scheduled_peak`` reads it off what Inductor scheduled.

``inductor_materialized(node)`` is the one rule for whether a value gets a buffer of its own under
Inductor: a pointwise op fused into its consumers never allocates
(``JointPeakModel._materialized`` applies the same rule to a whole phase at once, as arrays; the
tests check that both agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx

from .op_facts import aliased_input, is_fusible_consumer, is_pointwise


@dataclass(frozen=True)
class PeakEstimate:
    peak_bytes: int
    peak_phase: str  # "forward" or "backward"
    peak_node: str  # the node running when the peak was reached
    forward_peak: int
    boundary_bytes: int  # live between the forward and the backward: outputs and saved tensors
    backward_peak: int
    timeline: tuple[tuple[str, str, int], ...]  # (phase, node, live bytes after it ran)


def tensor_bytes(val: object, size_hint: Callable[[object], int]) -> int:
    """Bytes of a tensor value with each size made concrete by ``size_hint``; 0 for anything else."""
    if isinstance(val, torch.Tensor):
        numel = 1
        for s in val.shape:
            numel *= size_hint(s)
        return numel * val.dtype.itemsize
    return 0


def hinted_size(value: object) -> int:
    """A size as an int: a symbolic one at its shape environment's hint."""
    if isinstance(value, torch.SymInt):
        from .torch_internals import hint_int

        return hint_int(value, fallback=4096)
    return int(value)


def inductor_materialized(node: fx.Node, users: Iterable[fx.Node] | None = None, is_output: bool = False) -> bool:
    """Whether Inductor gives ``node`` a buffer of its own (a fusion heuristic).

    Pointwise ops are inlined into their consumers unless a consumer cannot
    fuse them (a matmul, a convolution, any extern kernel) or the graph
    returns them; everything else (matmuls, reductions, extern ops) writes a
    buffer. Which ops are which: passes.op_facts.
    """
    if node.op != "call_function":
        return True
    if not is_pointwise(node):
        return True
    if users is None:
        users = node.users
    return is_output or any(_reads_into_buffer(u, node) for u in users)


def _reads_into_buffer(user: fx.Node, value: fx.Node) -> bool:
    """Whether ``user`` needs ``value`` in a buffer: it is the output, cannot fuse it, or is a view
    of it that such a reader reads (a view of an unrealized pointwise value is realized with it)."""
    if user.op == "output" or not is_fusible_consumer(user):
        return True
    if aliased_input(user) is value:
        return any(_reads_into_buffer(u, user) for u in user.users)
    return False
