"""Where rematpass touches Inductor, Dynamo and torch's logging (graph-level private APIs live in
``passes/torch_internals.py`` and ``passes/torch_extract.py``).

Every private import of the package outside those two files goes through here (Inductor's
scheduler internals that ``predicted_codegen_effects`` reads included), so that a torch
release that moves one breaks this file and the tests that pin it (tests/test_backend.py,
tests/test_dump.py), not the backend, the dumps and the benchmark one by one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

# Imported with the backend, as torch.compile imports Inductor when it looks the "inductor" backend
# up: lazily, the import (about 1.3 s) would land in the user's first call.
import torch._inductor.compile_fx as _inductor_compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass, CustomPartitionerFn, get_hash_for_files

__all__ = [
    "CustomGraphPass",
    "CustomPartitionerFn",
    "activation_memory_budget",
    "backward_donations",
    "aot_autograd_cache_hits",
    "backward_compiled_eagerly",
    "carries_backward_hooks",
    "compile_with_inductor",
    "current_compile_id",
    "get_hash_for_files",
    "inductor_cache_dir",
    "inductor_caches_disabled",
    "installed_pass",
    "lower_and_schedule",
    "mode_options",
    "raise_to_user",
    "register_torch_log",
    "reset_dynamo",
    "schedule_memory",
    "scheduled_memory",
    "scheduling_stopped_by",
    "trace_artifact",
    "wrapped_partition_fn",
]


def compile_with_inductor(gm: torch.fx.GraphModule, example_inputs, config_patches: dict[str, Any]):
    """``compile_fx`` with Inductor config patches that stay active through the lazy backward compile."""
    return _inductor_compile_fx.compile_fx(gm, example_inputs, config_patches=config_patches)


@functools.cache
def _through_dynamo(error_type: type[Exception]) -> type[Exception]:
    """A subclass of ``error_type`` that Dynamo re-raises as it is. Dynamo wraps what a backend
    raises in ``BackendCompilerFailed``, except its own ``ShortenTraceback`` errors (the wrapper's
    base), which reach the user unchanged; with no frame to cut to, with the full traceback."""
    from torch._dynamo.exc import ShortenTraceback

    def __init__(self, *args):
        ShortenTraceback.__init__(self, *args, first_useful_frame=None)

    namespace = {"__init__": __init__, "__module__": error_type.__module__, "__qualname__": error_type.__qualname__}
    return type(error_type.__name__, (error_type, ShortenTraceback), namespace)


def raise_to_user(error: Exception) -> None:
    """Raise ``error`` out of a backend so that the user catches it by its own type (``except
    rematpass.KnobError``), not as Dynamo's ``BackendCompilerFailed``."""
    raise _through_dynamo(type(error))(*error.args) from None


def inductor_cache_dir() -> str:
    """The folder of Inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def installed_pass(slot: str) -> Any:
    """What the user put in Inductor's custom pass ``slot`` (``joint_custom_post_pass``, ...)."""
    return getattr(torch._inductor.config, slot)


def mode_options(mode: str) -> dict[str, Any]:
    """Inductor's config patches for a ``torch.compile`` mode ("max-autotune", ...)."""
    return dict(torch._inductor.list_mode_options(mode))


def current_compile_id() -> str | None:
    """Dynamo's id of the compile in progress ("0/0", "1/2", "!0/0/0"), or None outside one."""
    try:
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
    except Exception:
        return None
    return None if compile_id is None else str(compile_id)


def aot_autograd_cache_hits() -> int:
    """How many times AOTAutograd's cache has served a compiled graph in this process."""
    from torch._dynamo.utils import counters

    return int(counters["aot_autograd"]["autograd_cache_hit"])


def trace_artifact(name: str, payload: Callable[[], str]) -> None:
    """A JSON artifact in ``TORCH_TRACE`` (tlparse shows it); free when tracing is off."""
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": name, "encoding": "json"},
        payload_fn=payload,
    )


def register_torch_log(name: str) -> None:
    """Let ``TORCH_LOGS="+name"`` and ``torch._logging.set_logs(name=...)`` control logger ``name``."""
    try:
        from torch._logging._internal import register_log

        register_log(name, name)
    except Exception:  # an older or newer torch without the hook: plain logging still works
        logging.getLogger(name).debug("could not register the %s log with torch._logging", name)


def reset_dynamo() -> None:
    """Forget every compiled graph, so the next call compiles (and partitions) again."""
    torch._dynamo.reset()


def activation_memory_budget(budget: float):
    """A context in which PyTorch's own partitioner uses ``activation_memory_budget=budget``."""
    return torch._functorch.config.patch(activation_memory_budget=budget)


def inductor_caches_disabled() -> None:
    """Turn off the FX graph and AOTAutograd caches for this process: a hit skips the partitioner."""
    torch._inductor.config.force_disable_caches = True


@contextlib.contextmanager
def wrapped_partition_fn(wrap: Callable[[Callable], Callable]) -> Iterator[bool]:
    """Route every partitioner call Inductor makes through ``wrap(partitioner)``.

    Yields False (and wraps nothing) when this torch has no ``compile_fx.partition_fn``.
    """
    import torch._inductor.compile_fx as compile_fx

    original = getattr(compile_fx, "partition_fn", None)
    if original is None:
        yield False
        return

    def partitioner_now():
        from torch._functorch.partitioners import min_cut_rematerialization_partition

        custom = torch._inductor.config.custom_partitioner_fn
        return functools.partial(custom or min_cut_rematerialization_partition, compiler="inductor")

    def partition_fn(gm, joint_inputs, *, partitioner_fn_override=None, **kwargs):
        inner = partitioner_fn_override or partitioner_now()
        return original(gm, joint_inputs, partitioner_fn_override=wrap(inner), **kwargs)

    compile_fx.partition_fn = partition_fn
    try:
        yield True
    finally:
        compile_fx.partition_fn = original


def carries_backward_hooks(example_inputs) -> bool:
    """Whether Dynamo handed the graph a ``BackwardState`` (tensor hooks registered in the forward,
    run by compiled autograd): AOTAutograd then cannot compile the backward with the forward."""
    from torch.fx.experimental._backward_state import BackwardState

    return any(isinstance(value, BackwardState) for value in example_inputs)


def backward_compiled_eagerly():
    """A context in which AOTAutograd compiles the backward with the forward, not at its first call."""
    return torch._functorch.config.patch(force_non_lazy_backward_lowering=True)


def layout_optimized(joint: torch.fx.GraphModule) -> bool:
    """Whether Inductor will give this graph's convolutions channels-last layouts (its own decision,
    made per graph: always on the CPU with mkldnn, by a FLOP heuristic on the GPU)."""
    from torch._inductor.graph import GraphLowering

    try:
        return bool(GraphLowering.decide_layout_opt(joint, is_inference=False))
    except Exception:  # a private function: without it, model no copies
        return False


def store_rules(joint: torch.fx.GraphModule):
    """When Inductor's lowering stores a fused pointwise value, from its config, for the device the
    graph runs on (``passes.kernel_rules.StoreRules``). A setting this torch does not have keeps
    the rule's default (Inductor 2.13's CPU value)."""
    from torch._inductor import config, lowering

    from .passes.kernel_rules import StoreRules

    values = [node.meta.get("val") for node in joint.graph.find_nodes(op="placeholder")]
    cpu = all(v.device.type == "cpu" for v in values if isinstance(v, torch.Tensor))
    defaults = StoreRules()

    def setting(names: tuple[str, ...], default: int) -> int:
        for name in names:  # the first one set wins: a user's override, then the device's value
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return default

    device = "realize_cpu_{}_threshold" if cpu else "_realize_{}_threshold_default"
    fallbacks = getattr(lowering, "fallbacks", ())  # the ops lowered as a call into aten
    calls = {node.target for node in joint.graph.nodes if node.op == "call_function"}
    constraint_of = getattr(lowering, "maybe_layout_constraints", lambda op: None)
    copying = getattr(lowering, "sdpa_constraint", None)  # copies an unstored input on the CPU only
    copies_each_input = cpu and copying is not None and not getattr(config, "cache_sdpa_constraint", False)
    return StoreRules(
        reads_when_reused=setting(("realize_reads_threshold",), defaults.reads_when_reused),
        max_reads=setting(("realize_acc_reads_threshold", device.format("acc_reads")), defaults.max_reads),
        max_ops=setting(("realize_opcount_threshold", device.format("opcount")), defaults.max_ops),
        heavy_when_reused=cpu,
        sibling_window=setting(("max_fusion_buffer_group_pairwise_attempts",), defaults.sibling_window),
        reorder_for_peak_memory=bool(getattr(config, "reorder_for_peak_memory", False)),
        outer_loop_fusion=cpu,
        multi_output_ops=frozenset(op for op in calls if op in fallbacks),
        copy_each_input_ops=frozenset(op for op in calls if copies_each_input and constraint_of(op) is copying),
    )


def lower_and_schedule(module: torch.fx.GraphModule, example_inputs, *, backward: bool) -> None:
    """Run Inductor's compile of one AOTAutograd graph (post-grad passes, lowering, scheduling,
    and on to codegen unless a ``scheduling_stopped_by`` hook stops it), with its FX graph cache
    bypassed: a cache hit would skip the schedule that is to be read. (Not ``force_disable_caches``:
    that compiles in a fresh cache folder, which Inductor keeps, with a warning, when the compile
    is stopped.)"""
    from torch._inductor.compile_fx import compile_fx_inner

    bypassed = {"force_disable_caches": False, "fx_graph_cache": False, "fx_graph_remote_cache": False}
    with torch._inductor.config.patch(bypassed):
        compile_fx_inner(module, example_inputs, is_backward=backward)


@contextlib.contextmanager
def backward_donations(forward: torch.fx.GraphModule, backward: torch.fx.GraphModule, num_fwd_outputs: int):
    """While inside, Inductor lowers ``backward`` knowing which of its saved tensors AOTAutograd
    will donate to it (Inductor may then write gradients over them in place). AOTAutograd works
    that out only after the partitioner returns (inside it, the tracing context has no metadata
    to ask), so it is computed here, as AOTAutograd's ``collect_bw_donated_buffer_idxs`` does,
    from the two modules, and handed to the lowering in its place."""
    import torch._inductor.graph as lowering

    if not torch._functorch.config.donated_buffer or not hasattr(lowering, "get_donated_idxs"):
        yield
        return
    from torch._functorch._aot_autograd.graph_compile import collect_fw_donated_buffer_idxs

    def values(nodes):
        return [n.meta.get("val") if isinstance(n, torch.fx.Node) else None for n in nodes]

    forward_outputs = values(next(reversed(forward.graph.find_nodes(op="output"))).args[0])
    saved = forward_outputs[num_fwd_outputs:]
    symints = sum(1 for v in saved if isinstance(v, torch.SymInt | int))
    donated = collect_fw_donated_buffer_idxs(
        values(forward.graph.find_nodes(op="placeholder")),
        forward_outputs[:num_fwd_outputs],
        values(next(reversed(backward.graph.find_nodes(op="output"))).args[0]),
        saved[: len(saved) - symints],
    )
    original = lowering.get_donated_idxs
    lowering.get_donated_idxs = lambda: [symints + i for i in donated]  # what GraphLowering asks
    try:
        yield
    finally:
        lowering.get_donated_idxs = original


@contextlib.contextmanager
def scheduling_stopped_by(stop: Callable[[Any], None]) -> Iterator[None]:
    """Inside, each graph Inductor would generate code for is scheduled (fused and ordered) and
    handed to ``stop(graph)`` instead; ``stop`` is expected to raise, and codegen never runs."""
    from torch._inductor.graph import GraphLowering

    originals = (GraphLowering.codegen, GraphLowering.codegen_with_cpp_wrapper)

    def scheduled_then_stopped(graph, *args, **kwargs):
        graph.init_wrapper_code()
        graph._update_scheduler()
        stop(graph)
        raise RuntimeError("scheduling_stopped_by: the hook returned instead of raising")

    GraphLowering.codegen = scheduled_then_stopped
    GraphLowering.codegen_with_cpp_wrapper = scheduled_then_stopped
    try:
        yield
    finally:
        GraphLowering.codegen, GraphLowering.codegen_with_cpp_wrapper = originals


@contextlib.contextmanager
def scheduled_memory(sink: list) -> Iterator[Callable[[], None]]:
    """Yields ``arm``: once armed, each graph Inductor generates code for inside appends its memory
    figures (``scheduled_peak.GraphMemory``) to ``sink``, read off the final schedule after codegen.
    Armed by the partitioner, so a compile served from Inductor's caches (no partition, no
    codegen) never imports Inductor's lowering (about 2 s of a warm first call).

    Reading never breaks a compile: on any error it appends None and logs why.
    """
    originals: list = []

    def arm() -> None:
        if originals:
            return
        from torch._inductor.graph import GraphLowering

        original = GraphLowering.codegen
        originals.append(original)

        def codegen(graph, *args, **kwargs):
            result = original(graph, *args, **kwargs)
            try:
                sink.append(schedule_memory(graph))
            except Exception as exc:
                logging.getLogger("rematpass").warning("could not read Inductor's schedule: %s", exc, exc_info=True)
                sink.append(None)
            return result

        GraphLowering.codegen = codegen

    try:
        yield arm
    finally:
        if originals:
            from torch._inductor.graph import GraphLowering

            GraphLowering.codegen = originals[0]


def schedule_memory(graph, *, predict_codegen: bool = False):
    """The memory figures (``scheduled_peak.GraphMemory``) of ``graph``'s final schedule. After
    codegen, the buffers it removed and the in-place writes it made are read off the graph; with
    ``predict_codegen``, before codegen, they are predicted by ``predicted_codegen_effects``."""
    from torch._inductor import memory
    from torch.utils._ordered_set import OrderedSet

    from .scheduled_peak import ScheduledBuffer, graph_memory

    scheduler = graph.scheduler
    nodes = scheduler.nodes
    inputs = OrderedSet(graph.graph_inputs.keys())
    outputs = OrderedSet(graph.get_output_names())
    _, freeable = memory.prepare_planning_info(
        nodes, scheduler.name_to_buf, scheduler.name_to_fused_node, inputs, outputs
    )
    timeline, _, _ = memory.compute_memory_timeline(nodes, freeable, outputs)
    buffers = []
    for info in timeline:
        name = info.buffer.get_name() if hasattr(info.buffer, "get_name") else info.buffer.name
        graph_input = isinstance(info.buffer, memory.FreeableInputBuffer)
        alloc, free = int(info.size_alloc), int(info.size_free)
        if graph_input:  # the input's own bytes, not those of the widest read of it
            alloc = free = _input_bytes(graph, name, alloc)
        buffers.append(ScheduledBuffer(name, alloc, free, info.start_step, info.end_step, graph_input))
    buffers += _kernel_workspace(nodes)
    if predict_codegen:
        removed, reuses = predicted_codegen_effects(graph)
    else:
        removed, reuses = set(graph.removed_buffers), dict(graph.wrapper_code.reuses)
    return graph_memory(buffers, len(nodes), backward=bool(graph.is_backward), reuses=reuses, removed=removed)


def _input_bytes(graph, name: str, read_bytes: int) -> int:
    """The bytes of graph input ``name``. Inductor's memory planning sizes an input by what a kernel
    reads of it (``get_dep_size_hint``), which is larger when the read broadcasts: a Llama's
    grouped-query keys are read through the expand to every query head, four times their size,
    and the step's rise above the backward's inputs read 50 MB low on a full-size Llama."""
    from torch._inductor.utils import get_dtype_size

    buffer = graph.graph_inputs.get(name)
    try:
        numel = graph.sizevars.optimization_hint(buffer.get_numel(), fallback=0)
        return int(numel) * get_dtype_size(buffer.get_dtype()) or read_bytes
    except Exception:  # an input this torch sizes otherwise: keep Inductor's figure
        return read_bytes


def predicted_codegen_effects(graph) -> tuple[set[str], dict[str, str]]:
    """What Inductor's codegen would do to the buffers of ``graph``'s schedule, decided by the
    rules codegen applies, before it runs: the buffers that live only inside one fused kernel
    (``Kernel.remove_kernel_local_buffers``) and the outputs written in place over an input
    that dies at that kernel (``SchedulerNode.decide_inplace_update``). Returns (removed, reuses:
    output name -> the input whose memory it takes)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.scheduler import NopKernelSchedulerNode

    scheduler = graph.scheduler
    outputs = set(graph.get_output_names())
    position = {snode.get_name(): i for i, fused in enumerate(scheduler.nodes) for snode in fused.get_nodes()}
    removed: set[str] = set()
    for fused in scheduler.nodes:
        if fused.is_extern() or fused.is_template() or isinstance(fused, NopKernelSchedulerNode):
            continue
        names = fused.get_operation_names()
        # The CPU backend's outer-loop fusion keeps a reduction's result that a later loop nest
        # of the kernel reads (seen on LayerNorm's statistics; codegen writes it, or writes
        # over it in place).
        outer_loops = type(fused).__name__ == "OuterLoopFusedSchedulerNode"
        for snode in fused.get_nodes():
            if outer_loops and snode.is_reduction():
                continue
            for buf in snode.get_outputs():
                name = buf.get_name()
                if name not in outputs and scheduler.can_buffer_be_removed_through_fusion(name, names):
                    removed.add(name)
    reuses: dict[str, str] = {}
    if inductor_config.inplace_buffers:
        taken: set[str] = set()
        for index, fused in enumerate(scheduler.nodes):
            for snode in fused.get_nodes():
                for buf in _inplace_candidates(snode, removed):
                    source = _dying_input_to_take(graph, snode, buf, index, position, removed | taken)
                    if source is not None:
                        reuses[buf.get_name()] = source
                        taken.add(source)
    return removed, reuses


def _inplace_candidates(snode, removed: set[str]) -> list:
    from torch._inductor.scheduler import SchedulerNode

    if not isinstance(snode, SchedulerNode):  # extern kernels and no-ops write nothing in place
        return []
    return [
        buf
        for buf in snode.get_outputs()
        if buf.node.should_allocate()
        and not buf.node.get_inputs_that_alias_output()
        and not buf.node.get_mutation_names()
        and buf.get_name() not in removed
    ]


def _dying_input_to_take(graph, snode, buf, index: int, position: dict, unavailable: set[str]) -> str | None:
    """The input of ``snode`` whose memory Inductor's codegen would give to output ``buf``: one
    it reads for the last time, of the same size, dtype and device, not a graph input unless
    donated (a backward's saved tensors are: the backward may write over them)."""
    from torch._inductor import ir
    from torch._inductor.codegen.wrapper import can_match_buffer_size
    from torch._inductor.scheduler import NopKernelSchedulerNode

    scheduler = graph.scheduler
    donated = getattr(scheduler, "name_to_donated_buffer", {})  # a backward's saved tensors
    inputs_original = getattr(graph, "graph_inputs_original", {})
    for read in snode.read_writes.reads:
        name = read.name
        source = donated[name] if name in donated else scheduler.name_to_buf.get(name)
        if (
            source is None
            or source.node is None
            or name in unavailable
            or (name in graph.graph_inputs and not isinstance(inputs_original.get(name), ir.DonatedBuffer))
            or name in graph.constants
            or name in graph.never_reuse_buffers
            or isinstance(source.defining_op, NopKernelSchedulerNode)
            or isinstance(source.node.get_output_spec(), (ir.NoneLayout, ir.MultiOutputLayout))
        ):
            continue
        if isinstance(getattr(source.defining_op, "node", None), (ir.FallbackKernel, ir.MultiOutput)) and (
            source.node.get_inputs_that_alias_output()
        ):
            continue
        remaining = [
            use
            for use in source.users
            if not use.is_weak
            and use.get_name() not in snode.ancestors
            and position.get(use.get_name(), len(position)) >= index
        ]
        if len(remaining) != 1 or not remaining[0].can_inplace or remaining[0].node is not snode:
            continue
        if can_match_buffer_size(source.node, buf.node):
            return name
    return None


# Measured, not documented: on the CPU, oneDNN's convolution backward holds two weight-sized
# temporaries (the measured peak of conv nets sits exactly that far above the schedule's, at every
# plan tried).
CONV_BACKWARD_WORKSPACE_WEIGHTS = 2


def workspace_bytes(node: torch.fx.Node) -> int:
    """Bytes ``node``'s kernel holds only while it runs (``_kernel_workspace``'s rule, read off a
    graph node for the planner's peak model)."""
    if node.target is not torch.ops.aten.convolution_backward.default:
        return 0
    from .passes.liveness import hinted_size, tensor_bytes

    weight = node.args[2].meta.get("val") if isinstance(node.args[2], torch.fx.Node) else None
    if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
        return 0
    return CONV_BACKWARD_WORKSPACE_WEIGHTS * tensor_bytes(weight, hinted_size)


def _kernel_workspace(nodes) -> list:
    """Transient buffers that library kernels allocate inside one call, where no schedule shows
    them (``CONV_BACKWARD_WORKSPACE_WEIGHTS``)."""
    from torch._inductor.utils import get_dtype_size
    from torch._inductor.virtualized import V

    from .scheduled_peak import ScheduledBuffer

    extra = []
    for step, node in enumerate(nodes):
        kernel = getattr(node, "node", None)
        if "convolution_backward" not in str(getattr(kernel, "python_kernel_name", "")):
            continue
        weight = kernel.inputs[2]
        device = weight.get_device()
        if device is None or device.type != "cpu":
            continue
        size = V.graph.sizevars.optimization_hint(weight.get_numel(), fallback=0) * get_dtype_size(weight.get_dtype())
        size *= CONV_BACKWARD_WORKSPACE_WEIGHTS
        extra.append(ScheduledBuffer(f"workspace:{node.get_name()}", size, size, step, step))
    return extra
