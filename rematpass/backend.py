"""The ``remat`` torch.compile backend.

    >>> import torch
    >>> model = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memory_budget": 0.5})

It hands the graph to Inductor with ``RematPartitioner`` as
``custom_partitioner_fn``; Inductor runs its joint-graph passes, calls our
partitioner, and compiles the forward and backward it returns. The last
joint-graph pass is ``passes.gather_pool_grad``: a max-pool backward whose
windows do not overlap becomes a gather that fuses into its consumers,
instead of a scatter into a pool-input-sized zero tensor. After
Inductor's post-grad patterns, ``passes.hoist_matmul`` moves a matmul that
addmm fusion delayed back to where its operands would otherwise die (with
tied embeddings it would hold the logits gradient through the whole
backward); Inductor's buffer reuse is off unless the ``buffer_reuse`` knob
says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from . import config, report_cache
from .budget import Fastest, is_memory_budget, peak_cap_bytes
from .cost import CostModel
from .inductor_hooks import (
    CustomGraphPass,
    aot_autograd_cache_hits,
    backward_compiled_eagerly,
    carries_backward_hooks,
    compile_with_inductor,
    current_compile_id,
    get_hash_for_files,
    installed_pass,
    mode_options,
    raise_to_user,
    scheduled_memory,
)
from .inspect.dump import RematDumpWarning, watch_compile, write_scheduled
from .inspect.report import record
from .partitioner import RematPartitioner, source_hash
from .passes import gather_pool_grad, hoist_matmul, loss_head
from .passes.chunk_price import ChunkPricing
from .scheduled_peak import step_peak
from .user_warnings import RematBudgetWarning, warn_at_user_code
from .verify import CompileOutcome, compile_within, kept_index


class HoistLateMatmuls(CustomGraphPass):
    """``passes.hoist_matmul`` as an Inductor post-grad pass (cacheable: keyed on its source)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        hoist_matmul.hoist_late_matmuls(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((hoist_matmul.__file__,))


class GatherMaxPoolBackward(CustomGraphPass):
    """``passes.gather_pool_grad`` as an Inductor joint-graph pass, so the partitioner sees its result."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        gather_pool_grad.gather_max_pool_backward(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((gather_pool_grad.__file__,))


class _PassesInOrder(CustomGraphPass):
    """The user's passes, then ours, as one pass. Inductor accepts a list in a custom pass slot
    only since pytorch#184108 (May 2026); older releases call the slot's value, so it must be one
    callable. Cacheable when every pass is."""

    def __init__(self, passes: tuple):
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for graph_pass in self.passes:
            graph_pass(graph)

    def uuid(self) -> bytes | None:
        ids = [p.uuid() if isinstance(p, CustomGraphPass) else None for p in self.passes]
        if any(i is None for i in ids):
            return None  # Inductor then bypasses its cache, as it would for the user's pass alone
        return hashlib.sha256(repr(ids).encode()).digest()


def _after_user_passes(slot: str, ours: CustomGraphPass) -> CustomGraphPass:
    """What to put in Inductor's custom pass ``slot``: ours, after any the user installed there."""
    installed = installed_pass(slot)
    if installed is None:
        return ours
    if not isinstance(installed, (list, tuple)):
        installed = (installed,)
    return _PassesInOrder(tuple(installed) + (ours,))


def remat(
    gm: torch.fx.GraphModule, example_inputs, *, options: Mapping[str, Any] | None = None, mode: str | None = None
):
    """Compile ``gm`` with Inductor, partitioned by rematpass. Knobs come from ``options``.

    The backward is compiled with the forward, so that each plan's report carries the peak of
    the kernels Inductor scheduled for it. Under a ``memory_budget`` the partitioner checks its
    plans on that peak before Inductor compiles (a byte budget: smaller plans while over; a
    fraction below 1: shallower plans while they schedule a lower peak; rematpass.verify), probing
    Inductor's schedule without compiling (rematpass.schedule_probe), so a budget costs one
    compile, cached like any other. Where the schedule cannot be probed, plans are compiled
    and checked one by one instead.
    """
    try:
        knobs = config.resolve(options)
    except config.KnobError as error:
        raise_to_user(error)
    key = report_cache.graph_key(gm, example_inputs, knobs_repr=f"{knobs!r} {mode}", sources=source_hash().hex())
    heads = _chunk_loss_heads(gm, example_inputs, knobs)
    return loss_head.with_returned_logits(_compile_graph(gm, example_inputs, knobs, mode, key, heads), heads)


def _compile_graph(gm, example_inputs, knobs: config.Knobs, mode: str | None, key: str, heads: tuple):
    """What ``remat`` returns for ``gm`` once its loss heads are chunked: compiled once, or under
    a budget checked on probes of Inductor's schedule and, where they cannot be read, compiles."""
    budget = knobs.budget
    checked = knobs.verify_peak and is_memory_budget(budget)
    if not checked or not _needs_backward(gm, example_inputs):
        outcome = _compile_once(gm, example_inputs, knobs, mode, verifying=False, loss_heads=heads)
        _note_scheduled([outcome], outcome)
        _remember_report(key, outcome)
        return outcome.compiled
    cap = peak_cap_bytes(budget)
    probed = _compile_once(gm, example_inputs, knobs, mode, verifying=True, probe=True, loss_heads=heads)
    if _probed_plan_kept(probed, cap, key):
        _note_scheduled([probed], probed)
        return probed.compiled
    # The schedule could not be probed, or the compiled schedule broke what the probe promised:
    # check by compiling, as before the probe existed.
    attempts: list[CompileOutcome] = []
    compiled_already = [probed] if probed.report is not None and probed.scheduled_peak_bytes is not None else []
    compiles = 1

    def compile_once(aim: int | None):
        nonlocal compiles
        if aim is None and compiled_already:  # the knobs' plan, compiled above
            outcome = compiled_already.pop()
            _store_quietly(report_cache.store, report_cache.attempt_key(key, None), outcome.report)
        else:
            outcome = _compile_attempt(gm, example_inputs, knobs, mode, key, aim, heads)
            compiles += 1
        attempts.append(outcome)
        return outcome

    found, kept_aim = report_cache.load_kept_aim(key)
    final = compile_once(kept_aim) if found else None
    if final is None or not _remembered_plan_holds(final, cap):
        final = compile_within(cap, compile_once)
        _store_quietly(report_cache.store_kept_aim, key, final.aim)
    if final.report is not None:  # each attempt's report is stored already, under its own key
        final.report = dataclasses.replace(final.report, compiles=compiles)
        record(final.report)
    _note_scheduled(attempts, final)
    return final.compiled


def _needs_backward(gm: torch.fx.GraphModule, example_inputs) -> bool:
    """Whether AOTAutograd will trace a backward for this graph (and so call our partitioner): as
    it decides, grad mode on and an input (or a parameter the graph holds) that requires grad. A
    graph without one has no plan to check: under a budget it took three compiles, one with the
    caches off, on every run (wav2vec 2.0's feature-mask graphs: its warm first call at 1.68x
    torch.compile's)."""
    return torch.is_grad_enabled() and bool(_requiring_grad(gm, example_inputs))


def _requiring_grad(gm: torch.fx.GraphModule, example_inputs) -> list[torch.Tensor]:
    """The graph's inputs and own parameters that require grad (its parameters, as Dynamo lifts
    them into inputs, or holds them)."""
    inputs = [x for x in example_inputs if isinstance(x, torch.Tensor)] + list(gm.parameters())
    return [x for x in inputs if x.requires_grad]


def _probed_plan_kept(outcome: CompileOutcome, cap: int | None, key: str) -> bool:
    """Whether the one compile of a budget, checked on probes of Inductor's schedule inside the
    partitioner (rematpass.schedule_probe), keeps the budget's promise; its report is then recorded
    (and stored for the cache hits of later runs). A cache hit is trusted when the report stored
    with it says it was checked: the artifact it serves is the one checked."""
    report = outcome.report
    if report is None:
        stored = report_cache.load(key) if outcome.cache_hit else None
        if stored is None or not stored.verification:
            return False
        record(dataclasses.replace(stored, from_cache=True, compile_id=current_compile_id()))
        if cap is not None and stored.scheduled_peak_bytes is not None and stored.scheduled_peak_bytes > cap:
            warn_at_user_code(
                f"rematpass: memory_budget={cap:,} bytes cannot be met on this graph: the plan an earlier check "
                f"kept peaks at {stored.scheduled_peak_bytes:,} bytes in Inductor's schedule; keeping that one",
                RematBudgetWarning,
            )
        return True
    if not report.verification:  # the probe could not read the schedule
        return False
    probed_peak = report.verification[kept_index(report.verification, cap)].scheduled_peak_bytes
    compiled_peak = outcome.scheduled_peak_bytes
    if cap is not None and compiled_peak is not None and compiled_peak > cap >= probed_peak:
        return False  # the probe said the plan fits and the compiled schedule says it does not
    _remember_report(key, outcome)
    return True


def _store_quietly(store, *args) -> None:
    """Write to the report store; a store that cannot be written must never stop training."""
    try:
        store(*args)
    except Exception as exc:
        warnings.warn(f"rematpass could not use its report store: {exc}", RematDumpWarning, stacklevel=3)


def _chunk_loss_heads(gm: torch.fx.GraphModule, example_inputs, knobs: config.Knobs) -> tuple:
    """Chunk the graph's loss heads (passes.loss_head) as ``loss_chunks`` says. ``"auto"`` chunks
    them in every plan but the fastest (``time_tolerance=0``, no budget), which takes no step-time
    risk: on the CPU benchmark 4 chunks cost 0.99x of torch.compile's step time
    (benchmarks/loss_head.py), a figure not yet measured on a GPU. Logits a head also returns are
    formed as ``_returned_by_matmul`` prices them."""
    if knobs.loss_chunks == 0:
        return ()
    if knobs.loss_chunks == "auto" and isinstance(knobs.budget, Fastest):
        found = loss_head.chunk_loss_heads(gm, dry_run=True)
        why = "time_tolerance=0 asks for the fastest plan, which keeps the head whole; set loss_chunks to chunk it"
        return tuple(dataclasses.replace(h, chunked=False, reason=why) if h.chunked else h for h in found)
    forced = None if knobs.loss_chunks == "auto" else knobs.loss_chunks
    pricing = _chunk_pricing(example_inputs, knobs, _trainable_elements(gm, example_inputs))
    by_matmul = functools.partial(_returned_by_matmul, knobs.budget, pricing)
    return tuple(loss_head.chunk_loss_heads(gm, forced, returned_by_matmul=by_matmul, pricing=pricing))


def _chunk_pricing(example_inputs, knobs: config.Knobs, trainable: int) -> ChunkPricing:
    """What the plan lets a chunk count cost, at the cost model's rates for the graph's device: the
    default plan's and a fraction's ``time_tolerance`` of the step; anything under a byte cap."""
    device = next((x.device.type for x in example_inputs if isinstance(x, torch.Tensor)), "cpu")
    flops_per_second, bytes_per_second = CostModel(knobs.flops_per_second, knobs.bytes_per_second).rates_for(device)
    allowance = math.inf if peak_cap_bytes(knobs.budget) is not None else getattr(knobs.budget, "tolerance", 0.0)
    return ChunkPricing(flops_per_second, bytes_per_second, allowance, trainable)


def _returned_by_matmul(budget, pricing: ChunkPricing, head) -> bool:
    """Whether logits a chunked head also returns are formed after the chunks by one more head
    matmul (GPT-2 at 4 x 512 tokens: 478 MiB, 1.00x torch.compile's step) rather than written by the
    chunks into a buffer alive through them (566 MiB, 0.84x: no FLOPs added). A memory budget asks for
    the memory. The default plan buys it only if the matmul's time fits ``pricing``'s allowance,
    ``time_tolerance`` of the step (estimated as 6 x tokens x trainable elements FLOPs): the matmul
    is 2 x tokens x hidden x vocab, so it fits when vocab x hidden <= 3 x tolerance x trainable
    elements (never at the default 0.01: GPT-2's head is 31% of its parameters)."""
    if is_memory_budget(budget):
        return True
    return head.head_matmul_flops() / pricing.flops_per_second <= pricing.allowance_seconds(head.tokens)


def _trainable_elements(gm: torch.fx.GraphModule, example_inputs) -> int:
    """Elements of the graph's inputs and parameters that require grad (a symbolic size counts 0)."""
    sizes = (x.numel() for x in _requiring_grad(gm, example_inputs))
    return sum(int(n) for n in sizes if not isinstance(n, torch.SymInt))


def _remembered_plan_holds(outcome: CompileOutcome, cap: int | None) -> bool:
    """Whether the plan a previous run's check kept can be kept again without a new check: it
    came from Inductor's cache with the report it was checked with, or it was compiled and its
    schedule fits the cap (a fraction's kept plan is kept as it is)."""
    if outcome.report is None or outcome.scheduled_peak_bytes is None:
        return False
    if cap is None or outcome.scheduled_peak_bytes <= cap:
        return True
    if outcome.cache_hit:  # the check that kept it found nothing lower: say so again
        warn_at_user_code(
            f"rematpass: memory_budget={cap:,} bytes cannot be met on this graph: the plan an earlier check "
            f"kept peaks at {outcome.scheduled_peak_bytes:,} bytes in Inductor's schedule; keeping that one",
            RematBudgetWarning,
        )
        return True
    return False


def _compile_attempt(gm, example_inputs, knobs, mode, key: str, aim: int | None, heads: tuple) -> CompileOutcome:
    """One attempt of a budget's check, through Inductor's caches. A cache hit runs no
    partitioner and no codegen, so it is judged by the report stored when the attempt was first
    compiled; with none stored, the attempt is compiled again with the caches bypassed."""
    attempt = report_cache.attempt_key(key, aim)
    outcome = _compile_once(gm, example_inputs, knobs, mode, verifying=True, aim=aim, caches=True, loss_heads=heads)
    unreadable = outcome.report is not None and outcome.report.schedule_note  # backward hooks: never readable
    if outcome.scheduled_peak_bytes is None and not unreadable:
        stored = report_cache.load(attempt) if outcome.cache_hit and outcome.report is None else None
        if stored is not None and stored.scheduled_peak_bytes is not None:
            outcome.report = dataclasses.replace(stored, from_cache=True, compile_id=current_compile_id())
            outcome.scheduled_peak_bytes = stored.scheduled_peak_bytes
        else:  # a cache skipped the partitioner or the codegen the check reads: compile it fresh
            outcome = _compile_once(
                gm, example_inputs, knobs, mode, verifying=True, aim=aim, caches=False, loss_heads=heads
            )
    if outcome.report is not None and outcome.scheduled_peak_bytes is not None and not outcome.report.from_cache:
        completed = dataclasses.replace(outcome.report, scheduled_peak_bytes=outcome.scheduled_peak_bytes)
        _store_quietly(report_cache.store, attempt, completed)
    outcome.aim = aim
    return outcome


def _remember_report(key: str, outcome: CompileOutcome) -> None:
    """A compile without a budget's check: the graph's one report, recorded once and stored for
    the cache hits of later runs; on a cache hit, the report stored when the cached entry was
    made, so that ``recent_reports()`` answers for every compile."""
    if outcome.report is not None:
        record(outcome.report)
        _store_quietly(report_cache.store, key, outcome.report)
    elif outcome.cache_hit:
        stored = report_cache.load(key)  # never raises: an unreadable entry reads as none
        if stored is not None:
            record(dataclasses.replace(stored, from_cache=True, compile_id=current_compile_id()))


def _note_scheduled(attempts: list[CompileOutcome], kept: CompileOutcome) -> None:
    """Add each dumped plan's scheduled peak (and whether it was kept) to its dump folder."""
    for outcome in attempts:
        if outcome.dump_folder is None or outcome.report is None:
            continue
        report = kept.report if outcome is kept else outcome.report
        try:
            write_scheduled(outcome.dump_folder, report, kept=outcome is kept)
        except Exception as exc:  # a dump must never stop training
            warnings.warn(f"rematpass could not write scheduled.json: {exc}", RematDumpWarning, stacklevel=3)


def _compile_once(
    gm,
    example_inputs,
    knobs,
    mode,
    *,
    verifying: bool,
    aim: int | None = None,
    caches: bool = True,
    loss_heads=(),
    probe: bool = False,
) -> CompileOutcome:
    """One Inductor compile with our partitioner. ``verifying``: one attempt of rematpass.verify
    (the budget warning is left to the check); ``aim``: that attempt's predicted-peak aim in
    bytes (None: the plan the knobs ask for); ``caches=False`` bypasses Inductor's caches (a
    cached graph would skip the partitioner and the codegen the check reads); ``probe``: the
    partitioner checks a budget's plans on probes of Inductor's schedule and returns the one kept."""
    patches: dict[str, Any] = {}
    if mode is not None and mode != "default":
        patches.update(mode_options(mode))
    partitioner = RematPartitioner(
        knobs,
        verified_after=verifying,
        aim_peak_bytes=aim,
        records_reports=False,
        loss_heads=loss_heads,
        probe_schedule=probe,
    )
    patches["custom_partitioner_fn"] = partitioner
    patches["joint_custom_post_pass"] = _after_user_passes("joint_custom_post_pass", GatherMaxPoolBackward())
    patches["post_grad_custom_post_pass"] = _after_user_passes("post_grad_custom_post_pass", HoistLateMatmuls())
    patches["allow_buffer_reuse"] = knobs.buffer_reuse
    if not caches:
        patches["force_disable_caches"] = True
    graphs: list = []
    hits_before = aot_autograd_cache_hits()
    # Backward hooks registered in the forward travel in a BackwardState, and AOTAutograd cannot
    # lower such a backward together with the forward (it asserts in count_tangents): compile it
    # lazily, as Inductor does, and leave its schedule unread.
    hooks = carries_backward_hooks(example_inputs)
    backward_with_forward = contextlib.nullcontext() if hooks else backward_compiled_eagerly()
    with watch_compile(knobs.dump_dir), backward_with_forward, scheduled_memory(graphs) as read_schedules:
        partitioner.before_partition = read_schedules
        compiled = compile_with_inductor(gm, example_inputs, patches)
    outcome = CompileOutcome(compiled, cache_hit=aot_autograd_cache_hits() > hits_before)
    if not partitioner.reports:
        return outcome
    report = partitioner.reports[-1]
    outcome.dump_folder = partitioner.dump_folders[-1]
    forward = [g for g in graphs if g is not None and not g.backward]
    backward = [g for g in graphs if g is not None and g.backward]
    if hooks:
        report = dataclasses.replace(report, schedule_note=BACKWARD_HOOKS_NOTE)
    elif len(forward) == 1 and len(backward) == 1 and None not in graphs:
        outcome.scheduled_peak_bytes = step_peak(forward[0], backward[0])
        report = dataclasses.replace(report, scheduled_peak_bytes=outcome.scheduled_peak_bytes)
    outcome.report = report
    return outcome


BACKWARD_HOOKS_NOTE = (
    "schedule not read: the graph carries backward hooks registered in the forward (a BackwardState), "
    "so its backward is compiled at its first call, as Inductor does, not with the forward"
)
