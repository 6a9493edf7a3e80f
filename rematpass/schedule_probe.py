"""Inductor's schedule of a plan, read without compiling it: the budget's check at a tenth of a compile.

A budget's promise is kept on the peak of the kernels Inductor schedules (rematpass.verify), and
the planner's own peak model does not see Inductor's fusion. Reading that schedule used to cost a
whole compile per plan tried. Most of a compile is kernel codegen and the C++ (or Triton) build;
lowering and scheduling with fusion are about a tenth of it (4-layer GPT-2 on the CPU: 0.87 s
lowering and 1.32 s scheduling of 22.4 s). So ``probe_step_peak`` runs Inductor's own forward and
backward compile of a plan's two graphs up to the point where the scheduler has fused and ordered
the kernels, reads the buffer timeline there (``inductor_hooks.schedule_memory``) and stops before
codegen. What codegen would still change, buffers that live only inside a fused kernel and
outputs written in place over a dying input, is decided from the scheduler's own rules
(``inductor_hooks.predicted_codegen_effects``); on the suite the figure equals the one read after
codegen (tests/test_schedule_probe.py).

The partitioner probes the plans a budget's check would have compiled and hands Inductor only the
one it keeps: a budget costs one compile, and that compile can be cached like any other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx

from .scheduled_peak import GraphMemory, step_peak

log = logging.getLogger("rematpass")


@dataclass(frozen=True)
class Probe:
    """The step's peak as Inductor would schedule one plan, and what reading it cost."""

    scheduled_peak_bytes: int
    seconds: float


class _ScheduleRead(Exception):
    """Raised out of Inductor's compile once the schedule is read: nothing after it is needed.
    ``output_strides``: the strides Inductor gave the graph's outputs (None where symbolic)."""

    def __init__(self, memory: GraphMemory, output_strides: list):
        super().__init__("schedule read")
        self.memory = memory
        self.output_strides = output_strides


def probe_step_peak(forward: fx.GraphModule, backward: fx.GraphModule, num_fwd_outputs: int) -> Probe | None:
    """The step peak of Inductor's schedule of ``forward`` and ``backward`` (both consumed: Inductor's
    passes rewrite them), or None when it cannot be read (the reason is logged)."""
    from .inductor_hooks import backward_donations

    started = time.perf_counter()
    _detach_placeholder_meta(forward)
    _detach_placeholder_meta(backward)
    try:
        with backward_donations(forward, backward, num_fwd_outputs):  # read before the passes rewrite them
            backward_inputs = _placeholder_values(backward)
            forward_read = _schedule_read(forward, _placeholder_values(forward), backward=False)
            saved = _restrided_as_saved(backward_inputs, forward_read.output_strides[num_fwd_outputs:])
            backward_memory = _schedule_read(backward, saved, backward=True).memory
            forward_memory = forward_read.memory
    except Exception as exc:
        log.warning("could not probe Inductor's schedule: %s: %s", type(exc).__name__, exc)
        return None
    return Probe(step_peak(forward_memory, backward_memory), time.perf_counter() - started)


def _detach_placeholder_meta(module: fx.GraphModule) -> None:
    """Give ``module``'s placeholders their own ``meta``. The extraction shares it with the joint
    graph's nodes, as PyTorch's does, and Inductor's compile rewrites ``meta["val"]`` of the graph it
    lowers (its FakeTensorProp): a probe's backward, lowered with saved tensors restrided, would
    leave them restrided in the joint graph, and every later probe would lower its forward from
    channels-last weights and images (an MLP-Mixer's probes read 61 kB under its compile)."""
    for node in module.graph.find_nodes(op="placeholder"):
        node.meta = dict(node.meta)


def _placeholder_values(module: fx.GraphModule) -> list:
    return [node.meta["val"] for node in module.graph.find_nodes(op="placeholder")]


def _restrided_as_saved(backward_inputs: list, saved_strides: list) -> list:
    """The backward's example inputs with each saved tensor in the strides the forward's schedule
    gave it, as AOTAutograd restrides them before compiling the backward: Inductor's layout
    optimization may save a convolution's activations channels-last, and lowered with the traced
    strides the backward would convert them back (ResNet-50: 140 MB more than compiled)."""
    symints = sum(1 for value in backward_inputs if not isinstance(value, torch.Tensor))
    restrided = list(backward_inputs)
    for j, stride in enumerate(saved_strides):
        i = symints + j
        if stride is None or i >= len(restrided) or not isinstance(restrided[i], torch.Tensor):
            continue
        value = restrided[i]
        if all(isinstance(s, int) for s in value.stride()) and tuple(value.stride()) != tuple(stride):
            restrided[i] = value.as_strided(value.size(), stride)
    return restrided


def _schedule_read(module: fx.GraphModule, inputs: list, *, backward: bool) -> _ScheduleRead:
    from .inductor_hooks import lower_and_schedule

    with _stop_after_scheduling():
        try:
            lower_and_schedule(module, inputs, backward=backward)
        except _ScheduleRead as read:
            return read
        except Exception as exc:
            inner = _schedule_read_inside(exc)
            if inner is None:
                raise
            return inner
    raise RuntimeError("Inductor compiled the graph without scheduling it")


def _schedule_read_inside(exc: BaseException) -> _ScheduleRead | None:
    """Inductor wraps what its compile raises (``InductorError``): find ours inside."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _ScheduleRead):
            return exc
        seen.add(id(exc))
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _stop_after_scheduling() -> Iterator[None]:
    from .inductor_hooks import schedule_memory, scheduling_stopped_by

    def read_and_stop(graph):
        raise _ScheduleRead(schedule_memory(graph, predict_codegen=True), _output_strides(graph))

    with scheduling_stopped_by(read_and_stop):
        yield


def _output_strides(graph) -> list:
    """The strides of ``graph``'s outputs as lowered (None where not a static tensor layout)."""
    strides = []
    for out in graph.graph_outputs or ():
        try:
            stride = tuple(int(s) for s in out.get_layout().stride)
        except Exception:  # not a tensor, or a symbolic stride: AOTAutograd leaves those as traced
            stride = None
        strides.append(stride)
    return strides
