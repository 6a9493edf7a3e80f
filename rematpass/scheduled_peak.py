"""The peak memory of the kernels Inductor scheduled, and of the training step they make up.

The planner chooses a plan on its own model of the step (``passes.joint_liveness``). Inductor then
fuses, orders and writes kernels its own way, and the step's measured peak is set by what
Inductor's generated code allocates. This module reads that: per compiled graph, the buffer
timeline of Inductor's final schedule (``torch._inductor.memory``'s, taken by
``inductor_hooks.scheduled_memory``), corrected the two ways the generated code departs from it:

* a buffer Inductor removed during codegen (it lived only inside a fused kernel) allocates nothing;
* a kernel that writes its output into an input that dies there (Inductor's ``inplace_buffers``)
  allocates nothing for the output, and the input's memory lives on until the output dies.

``step_peak`` composes the forward's and the backward's figures into the step's peak above what
was allocated before it. How close it comes to the measured peak: benchmarks/RESULTS_bench.md
and docs/design.md, section 9.

    >>> buffers = [ScheduledBuffer("in", 4, 4, 0, 1, graph_input=True),
    ...            ScheduledBuffer("a", 8, 8, 0, 1), ScheduledBuffer("b", 8, 8, 1, -1)]
    >>> forward = graph_memory(buffers, steps=2, backward=False, reuses={"b": "a"})
    >>> forward.start_bytes, forward.peak_bytes, forward.end_bytes
    (4, 12, 8)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduledBuffer:
    """One buffer of Inductor's schedule: allocated before step ``start``, freed after step ``end``
    (-1: a graph output, never freed). A graph input that the graph frees at its last use is live
    from the start."""

    name: str
    alloc_bytes: int
    free_bytes: int
    start: int
    end: int
    graph_input: bool = False


@dataclass(frozen=True)
class GraphMemory:
    """Live bytes of one compiled graph: at its start (freeable inputs), at its peak, at its end."""

    backward: bool
    start_bytes: int
    peak_bytes: int
    end_bytes: int


def graph_memory(
    buffers: Sequence[ScheduledBuffer],
    steps: int,
    *,
    backward: bool,
    reuses: Mapping[str, str] | None = None,
    removed: frozenset[str] | set[str] = frozenset(),
) -> GraphMemory:
    """Replay the schedule's allocations and frees; ``reuses`` maps an in-place output to the
    input whose memory it took, ``removed`` names buffers that were never allocated."""
    reuses = dict(reuses or {})
    by_name = {b.name: b for b in buffers}

    def owner(name: str) -> str:
        seen = set()
        while name in reuses and name not in seen:
            seen.add(name)
            name = reuses[name]
        return name

    end = {b.name: b.end for b in buffers}
    for taker in reuses:
        root = owner(taker)
        if root not in end or taker not in end:
            continue
        if end[root] == -1 or end[taker] == -1:
            end[root] = -1
        else:
            end[root] = max(end[root], end[taker])

    delta = [0] * (steps + 2)
    live = 0
    for name, buf in by_name.items():
        if name in removed or name in reuses:
            continue
        if buf.graph_input:
            live += buf.alloc_bytes
        else:
            delta[buf.start] += buf.alloc_bytes
        if end[name] != -1:
            delta[end[name] + 1] -= buf.free_bytes
    start = peak = live
    for change in delta:
        live += change
        peak = max(peak, live)
    return GraphMemory(backward=backward, start_bytes=start, peak_bytes=peak, end_bytes=live)


def step_peak(forward: GraphMemory, backward: GraphMemory) -> int:
    """The step's peak above what was allocated before it: the forward's own peak, or what the
    forward left alive plus the backward's rise over its starting set. The rise, not the
    backward's absolute figure, because the backward counts an input once per name, and two
    saved tensors may be views of one forward buffer."""
    return max(forward.peak_bytes, forward.end_bytes + backward.peak_bytes - backward.start_bytes)
