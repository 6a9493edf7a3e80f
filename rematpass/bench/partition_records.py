"""How ``python -m rematpass.bench`` reads what a partitioner did, and the figures it adds to ``rematpass.measure``.

- ``PartitionRecorder`` wraps Inductor's ``partition_fn``, the one
  function through which Inductor asks for every partition, whichever partitioner
  is configured (Inductor's min-cut, PyTorch's memory-budget path, or rematpass's
  ``custom_partitioner_fn``). It times the partitioner call alone (Inductor's
  joint-graph passes excluded), measures its peak host memory (``HostPeak``) and
  reads the forward and backward graphs it returns.
- ``HostPeak``: the partitioner's own peak host memory. ``rss`` (the default)
  resets Linux's resident-set high-water mark before the call and reads it after:
  every allocation (Python, numpy, C++) at no cost to the timing, but memory the
  process had freed and reuses does not show, so it is a lower bound, and on small
  graphs a loose one (on the small suite's gpt2, the second remat partition in a
  process read 0 to 0.6 MiB where tracemalloc reads 2.3 MiB every time).
  ``tracemalloc`` is exact for Python objects and numpy arrays (not for C++
  allocations) and repeatable, but slows the call about fourfold (the same gpt2,
  both partitioners), which the partition and compile times then include.
- ``duplicated_work``: forward and backward are cut from the same joint graph and
  keep its node names, so a backward node with the name of a forward op is a copy
  of it, that is, recomputation. Its FLOPs are ``torch.utils.flop_counter``'s
  (matmul, convolution, attention, ...; pointwise ops count 0, as in
  FlopCounterMode); ops and output elements count the copied non-view ops.
- ``saved_bytes_with_held``: ``saved_activation_bytes`` for checkpointed models,
  whose checkpoint hooks hide what they keep: the block inputs a checkpoint holds
  for its recomputation are added, deduplicated by storage.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from ..inductor_hooks import current_compile_id, wrapped_partition_fn
from ..measure import _storage_key
from ..passes.op_facts import flop_formula, is_compute_bound, is_view_by_schema
from ..passes.torch_internals import tree_leaves, tree_map
from ..verify import budget_cap, kept_index


def _val(a):
    return a.meta.get("val") if isinstance(a, fx.Node) else a


def flop_counter_flops(node: fx.Node) -> int:
    """FLOPs of one node by torch.utils.flop_counter's registry (0 for ops it does not price)."""
    if not is_compute_bound(node):
        return 0
    args, kwargs = tree_map(_val, (node.args, node.kwargs))
    try:
        return int(flop_formula(node)(*args, **kwargs, out_val=node.meta.get("val")))
    except Exception:  # a symbolic size without a hint, say: leave it out rather than guess
        return 0


def duplicated_work(fw: fx.GraphModule, bw: fx.GraphModule) -> dict[str, int]:
    """FLOPs, ops and output elements of the backward's copies of forward ops."""
    fw_ops = {n.name for n in fw.graph.nodes if n.op == "call_function"}
    flops = ops = elements = 0
    for node in bw.graph.nodes:
        if node.op != "call_function" or node.name not in fw_ops or is_view_by_schema(node):
            continue
        ops += 1
        flops += flop_counter_flops(node)
        for value in tree_leaves(node.meta.get("val")):
            if isinstance(value, torch.Tensor):
                with contextlib.suppress(Exception):
                    elements += int(value.numel())
    return {"recompute_flops": flops, "recompute_ops": ops, "recompute_elements": elements}


HOST_MEMORY_METHODS = ("rss", "tracemalloc", "off")
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


class HostPeak:
    """Peak host memory of the code inside ``with``, above what was in use on entry; ``bytes`` is None
    when the method is "off" or the machine cannot measure it (``rss`` needs Linux's clear_refs)."""

    def __init__(self, method: str = "rss"):
        if method not in HOST_MEMORY_METHODS:
            raise ValueError(f"host memory method {method!r}: one of {', '.join(HOST_MEMORY_METHODS)}")
        self.method = method
        self.bytes: int | None = None
        self._before = 0
        self._started_tracing = False

    @staticmethod
    def rss_available() -> bool:
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
            _status_bytes("VmHWM")
        except OSError:
            return False
        return True

    def __enter__(self):
        self.bytes = None
        if self.method == "rss":
            try:
                with open(_CLEAR_REFS, "w") as f:
                    f.write("5")  # "5" resets the high-water mark to the current RSS (Linux >= 4.0)
                self._before = _status_bytes("VmRSS")
            except OSError:
                self._before = -1
        elif self.method == "tracemalloc":
            # Someone else's tracing (a developer's, say) is left running; only its peak is reset.
            self._started_tracing = not tracemalloc.is_tracing()
            if self._started_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._before = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        if self.method == "rss" and self._before >= 0:
            with contextlib.suppress(OSError):
                self.bytes = max(0, _status_bytes("VmHWM") - self._before)
        elif self.method == "tracemalloc":
            try:
                self.bytes = max(0, tracemalloc.get_traced_memory()[1] - self._before)
            finally:
                if self._started_tracing:
                    tracemalloc.stop()  # so nothing after the call (the timed steps) pays for tracing
        return False


def kept_partitions(records: list[dict[str, Any]], reports: list) -> list[dict[str, Any]]:
    """The partition each graph runs with. The scheduled-peak check (rematpass.verify) partitions a
    graph once per plan it compiles and keeps one (``verify.kept_index``); the kept plan's report
    (``reports``, by compile id) lists those attempts in order.
    A graph partitioned once, or without such a report, counts its last call."""
    by_graph: dict[object, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        by_graph.setdefault(record.get("compile_id") or i, []).append(record)
    attempts_of = {r.compile_id: r for r in reports if getattr(r, "compile_id", None)}
    kept = []
    for graph, calls in by_graph.items():
        report = attempts_of.get(graph)
        history = getattr(report, "verification", ()) or ()
        if len(history) == len(calls) > 1:
            kept.append(calls[kept_index(history, budget_cap(report))])
        else:
            kept.append(calls[-1])
    return kept


class PartitionRecorder:
    """Wraps Inductor's ``partition_fn`` to time each partitioner call, measure its peak host memory
    (``HostPeak(host_memory)``) and read what it returned."""

    def __init__(self, host_memory: str = "rss"):
        self.records: list[dict[str, Any]] = []
        self.host_memory = host_memory
        HostPeak(host_memory)  # reject an unknown method before anything compiles
        self._context = None

    def __enter__(self):
        records, method = self.records, self.host_memory

        def wrap(inner):
            def timed(*args, **kw):
                with HostPeak(method) as host:
                    started = time.perf_counter()
                    fw, bw = inner(*args, **kw)
                    seconds = time.perf_counter() - started
                records.append(
                    {
                        "seconds": seconds,
                        "host_peak_bytes": host.bytes,
                        "compile_id": current_compile_id(),
                        **duplicated_work(fw, bw),
                    }
                )
                return fw, bw

            return timed

        if method == "rss" and not HostPeak.rss_available():
            warnings.warn(
                f"{_CLEAR_REFS} is not writable here: no partition host memory (try --partition-memory tracemalloc)",
                stacklevel=2,
            )
        self._context = wrapped_partition_fn(wrap)
        if not self._context.__enter__():
            warnings.warn(
                "Inductor's compile_fx.partition_fn not found: no recompute or partition figures", stacklevel=2
            )
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


# ------------------------------------------------------------------ measuring one variant


def saved_bytes_with_held(step: Callable[[], object], model: torch.nn.Module, held: list) -> int:
    """``saved_activation_bytes`` plus the block inputs a checkpoint holds, deduplicated by storage."""
    static = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    seen: dict = {}

    def note(tensor):
        if isinstance(tensor, torch.Tensor) and not tensor.is_meta and tensor.layout == torch.strided:
            key = _storage_key(tensor)
            if key not in static:
                seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    held.clear()
    with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
        step()
    for args in held:
        for value in tree_leaves(args):
            note(value)
    held.clear()
    return sum(seen.values())


def grad_error(grads: dict, reference: dict) -> float:
    if grads.keys() != reference.keys():
        return float("inf")
    worst = 0.0
    for name, ref in reference.items():
        scale = ref.abs().max().item()
        diff = (grads[name].float() - ref.float()).abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
