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

import torch.fx as fx

from .scheduled_peak import GraphMemory, step_peak

log = logging.getLogger("rematpass")


@dataclass(frozen=True)
class Probe:
    """The step's peak as Inductor would schedule one plan, and what reading it cost."""

    scheduled_peak_bytes: int
    seconds: float


class _ScheduleRead(Exception):
    """Raised out of Inductor's compile once the schedule is read: nothing after it is needed."""

    def __init__(self, memory: GraphMemory):
        super().__init__("schedule read")
        self.memory = memory


def probe_step_peak(forward: fx.GraphModule, backward: fx.GraphModule, num_fwd_outputs: int) -> Probe | None:
    """The step peak of Inductor's schedule of ``forward`` and ``backward`` (both consumed: Inductor's
    passes rewrite them), or None when it cannot be read (the reason is logged)."""
    from .inductor_hooks import backward_donations

    started = time.perf_counter()
    try:
        with backward_donations(forward, backward, num_fwd_outputs):  # read before the passes rewrite them
            forward_memory = _scheduled_memory(forward, backward=False)
            backward_memory = _scheduled_memory(backward, backward=True)
    except Exception as exc:
        log.warning("could not probe Inductor's schedule: %s: %s", type(exc).__name__, exc)
        return None
    return Probe(step_peak(forward_memory, backward_memory), time.perf_counter() - started)


def _scheduled_memory(module: fx.GraphModule, *, backward: bool) -> GraphMemory:
    from .inductor_hooks import lower_and_schedule

    inputs = [node.meta["val"] for node in module.graph.find_nodes(op="placeholder")]
    with _stop_after_scheduling():
        try:
            lower_and_schedule(module, inputs, backward=backward)
        except _ScheduleRead as read:
            return read.memory
        except Exception as exc:
            inner = _schedule_read_inside(exc)
            if inner is None:
                raise
            return inner.memory
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
        raise _ScheduleRead(schedule_memory(graph, predict_codegen=True))

    with scheduling_stopped_by(read_and_stop):
        yield
