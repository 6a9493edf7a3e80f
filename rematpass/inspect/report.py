"""What a partition decided, for people and tests: per node, a decision and a reason.

``build_report`` turns a solved plan into a ``PartitionReport``; ``record``
keeps the most recent ones in memory (``recent_reports()``), so a user can
ask, right after a compile, what was saved and why.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch.fx as fx

from ..budget import DefaultPlan, Fastest, Fraction, budget_from_json, is_memory_budget
from ..config import Knobs
from ..cost import CostTable
from ..inductor_hooks import register_torch_log
from ..passes.analysis import BACKWARD_ONLY, FORWARD, INPUT, GraphSummary, ReasonKind
from ..passes.chunk_price import TENSORS_ALIVE
from ..passes.liveness import PeakEstimate
from ..passes.op_facts import is_random, op_name, replays_a_saved_seed
from ..passes.peak import ScoredPlan
from ..passes.plan import HullPoint, Plan

if TYPE_CHECKING:
    from ..planner import PlanResult

SAVED = "saved"
RECOMPUTED = "recomputed"
BACKWARD = "computed in backward"
NOT_NEEDED = "not needed by backward"
INPUT_DECISION = "input"

# Why, as a short key (the ``reason`` text says it for people).
MUST_SAVE = "must_save"  # a rule forbids recomputing it (random, mutation, effectful, ...)
USER_POLICY = "user_policy"  # never_recompute / always_recompute knobs
CHECKPOINT_POLICY = "checkpoint_policy"  # a torch.utils.checkpoint region asks to recompute
CHEAPER_TO_SAVE = "cheaper_to_save"
CHEAPER_TO_RECOMPUTE = "cheaper_to_recompute"
REGION_BUDGET = "region_budget"  # inside a region_activation_memory_budget region below 1
REPLAYED = "replayed_random"  # a random op recomputed from its saved seed: the same numbers again
FORCED_BY_BUDGET = "forced_by_budget"  # the default plan saves it; the memory budget does not allow it
FOR_LOWER_PEAK = "for_lower_peak"  # the fastest plan saves it; recomputing it lowers the peak within time_tolerance
CANNOT_SAVE = "cannot_save"  # views, tuples, symbolic floats
BACKWARD_ONLY_KIND = "backward_only"
NOT_NEEDED_KIND = "not_needed"
INPUT_KIND = "input"

LOG_NAME = "rematpass"


register_torch_log(LOG_NAME)  # TORCH_LOGS="+rematpass" and torch._logging.set_logs(rematpass=...)


@dataclass(frozen=True)
class NodeDecision:
    name: str
    op: str
    shape: tuple
    dtype: str
    bytes: int
    flops: int
    recompute_seconds: float
    decision: str
    reason: str
    reason_kind: str = ""
    time_seconds: float = 0.0  # standalone roofline time of the op
    module_path: str = ""  # e.g. "blocks.0.1" (nn_module_stack's innermost entry); "" at top level
    module_type: str = ""  # e.g. "Linear"
    source: str = ""  # "file.py:17" of the user's code that produced it (innermost frame)
    source_code: str = ""  # that line of code, stripped


@dataclass(frozen=True)
class PartitionReport:
    knobs: Knobs
    num_joint_candidates: int
    saved_bytes: int
    recompute_flops: int
    recompute_seconds: float
    lam: float
    lam_default: float
    target_bytes: float | None
    budget_met: bool
    num_solves: int
    solve_seconds: float
    total_seconds: float
    nodes: tuple[NodeDecision, ...] = field(repr=False)
    compile_id: str | None = None
    device: str = ""
    flops_per_second: float = 0.0
    bytes_per_second: float = 0.0
    default_saved_bytes: float | None = None  # the default plan's, when a budget moved away from it
    hull: tuple[HullPoint, ...] = field(default=(), repr=False)
    solver: str = "mincut"  # which solver chose the plan
    # Peak memory the step allocates, as passes.joint_liveness predicts it for this plan.
    predicted_peak_bytes: int | None = None
    predicted_peak_at: str = ""  # "forward:<node>" or "backward:<node>"
    target_peak_bytes: float | None = None  # an absolute memory_budget caps the predicted peak
    # The hull plans scored for peak (plan.json's ``peak_plans``)
    peak_plans: tuple[ScoredPlan, ...] = field(default=(), repr=False)
    # The step's peak in the kernels Inductor scheduled for this plan (rematpass.scheduled_peak);
    # None until the backend has read both compiled graphs, or when it could not.
    scheduled_peak_bytes: int | None = None
    schedule_note: str = ""  # why the schedule was not read, when the backend knows
    # Inductor compiles this graph took under a budget's check (cache hits included); 1 otherwise.
    compiles: int = 1
    # Under a memory budget: every plan checked for this graph, in order (rematpass.verify).
    verification: tuple = ()
    # How many of those plans' schedules were probed without compiling (rematpass.schedule_probe),
    # and the seconds the probes took.
    schedule_probes: int = 0
    schedule_probe_seconds: float = 0.0
    # Set on a plan rematpass.verify recompiled: the predicted peak it was aimed at, in bytes
    # (``knobs`` still hold the user's memory_budget).
    aim_peak_bytes: int | None = None
    # What torch.compile's default partitioner saves on the same joint graph (same counting as
    # ``saved_bytes``); computed when the dump_dir knob is set (it costs one more partition).
    inductor_saved_bytes: int | None = None
    # One per torch.autograd.graph.region_activation_memory_budget value in the graph (passes.regions).
    region_budgets: tuple = ()
    # What happened to each cross-entropy over an LM head: chunked, or why not (passes.loss_head).
    loss_heads: tuple = ()
    # Recorded on an AOTAutograd cache hit: the report stored when the cached entry was made
    # (rematpass.report_cache); the partitioner did not run for this compile.
    from_cache: bool = False

    def saved_nodes(self) -> list[NodeDecision]:
        return [n for n in self.nodes if n.decision == SAVED]

    def recomputed_nodes(self) -> list[NodeDecision]:
        return [n for n in self.nodes if n.decision == RECOMPUTED]

    def one_line(self) -> str:
        return (
            f"rematpass: saved {len(self.saved_nodes())} tensors, {self.saved_bytes / 2**20:.2f} MiB; "
            f"recomputed {len(self.recomputed_nodes())} ops, {self.recompute_flops / 1e6:.2f} MFLOP; "
            f"{self.num_solves} max-flow solves in {self.solve_seconds * 1e3:.1f} ms"
            + (f" (graph {self.compile_id})" if self.compile_id else "")
            + (" (from the cache: the plan made when the cached entry was stored)" if self.from_cache else "")
        )


def _reason(
    i: int,
    summary: GraphSummary,
    plan: Plan,
    costs: CostTable,
    default_saved: np.ndarray | None,
    budgeted: bool = True,
) -> tuple[str, str, str]:
    """(decision, reason_kind, reason) of candidate i. ``default_saved`` is the fastest plan's saved
    set when the plan moved away from it: for a budget (``budgeted``) or, with no budget, for a
    lower peak within ``time_tolerance``."""
    no_recompute = summary.no_recompute_reason[i]
    no_save = summary.no_save_reason[i]
    if plan.saved[i]:
        if summary.kind[i] == INPUT:
            text = "forward input, kept for the backward" + (" (parameter: free)" if summary.is_static[i] else "")
            return INPUT_DECISION, INPUT_KIND, text
        region = summary.region_budget[i] if summary.region_budget is not None else np.nan
        if no_recompute is None and not np.isnan(region):
            return SAVED, REGION_BUDGET, f"saved by its region_activation_memory_budget({region:g})"
        if no_recompute is not None:
            if no_recompute.kind is ReasonKind.USER_POLICY:
                return SAVED, USER_POLICY, no_recompute.text
            return SAVED, MUST_SAVE, f"must save: {no_recompute.text}"
        if summary.kind[i] == BACKWARD_ONLY:
            return (
                SAVED,
                CHEAPER_TO_SAVE,
                (
                    "only the backward uses it, but computing it in the forward and saving it (one more "
                    "write there) is cheaper than keeping what it is computed from"
                ),
            )
        if default_saved is not None and not default_saved[i] and not budgeted:
            return SAVED, CHEAPER_TO_SAVE, "saved in the plan chosen for its peak (the fastest plan recomputes it)"
        if default_saved is not None and not default_saved[i]:
            return (
                SAVED,
                CHEAPER_TO_SAVE,
                (
                    "saved at this budget (the default plan recomputes it): cheaper than recomputing "
                    "what the budget forces out"
                ),
            )
        return SAVED, CHEAPER_TO_SAVE, "cheaper to save than to recompute" + (" at this budget" if budgeted else "")
    if summary.kind[i] == BACKWARD_ONLY:
        # Whichever side of the cut it lands on, the backward computes it from what was saved.
        return BACKWARD, BACKWARD_ONLY_KIND, "only the backward uses it: computed there, never saved"
    if plan.cut.in_backward[i]:
        if replays_a_saved_seed(summary.nodes[i]):  # whatever moved it to the backward, this is what it does
            return (
                RECOMPUTED,
                REPLAYED,
                "replayed from the saved seed: the backward draws the same random numbers again, never new ones",
            )
        if summary.must_recompute[i] and is_random(summary.nodes[i]):
            return (
                RECOMPUTED,
                REPLAYED,
                "replayed: a checkpoint region recomputes it with the RNG state the forward saved (the same numbers)",
            )
        region = summary.region_budget[i] if summary.region_budget is not None else np.nan
        if not np.isnan(region) and not summary.must_recompute[i]:
            return RECOMPUTED, REGION_BUDGET, f"recomputed by its region_activation_memory_budget({region:g})"
        if summary.must_recompute[i]:
            return RECOMPUTED, CHECKPOINT_POLICY, "checkpoint policy asks to recompute"
        if no_save is not None:
            if no_save.kind is ReasonKind.USER_POLICY:
                return RECOMPUTED, USER_POLICY, no_save.text
            return RECOMPUTED, CANNOT_SAVE, f"cannot save: {no_save.text}"
        if default_saved is not None and default_saved[i] and not budgeted:
            return (
                RECOMPUTED,
                FOR_LOWER_PEAK,
                ("recomputed for a lower peak within time_tolerance (the fastest plan saves it)"),
            )
        if default_saved is not None and default_saved[i]:
            return RECOMPUTED, FORCED_BY_BUDGET, "forced by the budget (the default plan saves it)"
        if costs.costs[i].fused:
            return RECOMPUTED, CHEAPER_TO_RECOMPUTE, "cheaper to recompute: fuses into a backward kernel"
        return RECOMPUTED, CHEAPER_TO_RECOMPUTE, "cheaper to recompute than to keep"
    if summary.kind[i] == INPUT:
        return INPUT_DECISION, INPUT_KIND, "forward input, not needed by the backward"
    return NOT_NEEDED, NOT_NEEDED_KIND, "the backward does not read it"


_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')
_MODULE_PREFIX_RE = re.compile(r"^L\[['\"]self['\"]\]\.?")
_MODULES_ITEM_RE = re.compile(r"\._modules\[['\"]([^'\"]+)['\"]\]")


def module_of(node: fx.Node) -> tuple[str, str]:
    """(path, class name) of the innermost nn.Module that produced ``node``: ("blocks.0.1", "Linear").

    Backward nodes carry the forward module they differentiate as ``fwd_nn_module_stack``.
    """
    stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    path = _MODULES_ITEM_RE.sub(lambda m: "." + m.group(1), str(path))
    path = _MODULE_PREFIX_RE.sub("", path).lstrip(".")
    name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return path, name


def source_of(node: fx.Node) -> tuple[str, str]:
    """("file.py:17", "x = x + block(x)"): the innermost frame of ``node.meta['stack_trace']``."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.splitlines()
    last = None
    for k, line in enumerate(lines):
        match = _FRAME_RE.search(line)
        if match:
            last = (k, match)
    if last is None:
        return "", ""
    k, match = last
    code = lines[k + 1].strip() if k + 1 < len(lines) else ""
    return f"{match.group(1)}:{match.group(2)}", code


def build_report(
    knobs: Knobs,
    summary: GraphSummary,
    costs: CostTable,
    chosen: PlanResult,
    estimate: PeakEstimate,
    *,
    solve_seconds: float,
    total_seconds: float,
    compile_id: str | None = None,
    aim_peak_bytes: int | None = None,
    inductor_saved_bytes: int | None = None,
    loss_heads: tuple = (),
) -> PartitionReport:
    """The partition's report, whole: decisions and reasons for every candidate, the plan's
    totals, its predicted peak (``estimate``), every plan scored. The fastest plan's saved set
    (``Plan.default_saved``) lets a budgeted plan say what the budget forced."""
    plan = chosen.plan
    default_saved = plan.default_saved
    budgeted = is_memory_budget(knobs.budget)
    nodes = []
    for i, node in enumerate(summary.nodes):
        val = node.meta.get("val")
        decision, kind, reason = _reason(i, summary, plan, costs, default_saved, budgeted)
        cost = costs.costs[i]
        module_path, module_type = module_of(node)
        source, source_code = source_of(node)
        nodes.append(
            NodeDecision(
                name=node.name,
                op=op_name(node),
                shape=tuple(str(s) for s in getattr(val, "shape", ())),
                dtype=str(getattr(val, "dtype", type(val).__name__)).replace("torch.", ""),
                bytes=cost.bytes,
                flops=cost.flops,
                recompute_seconds=cost.recompute_time if summary.kind[i] == FORWARD else 0.0,
                decision=decision,
                reason=reason,
                reason_kind=kind,
                time_seconds=cost.time,
                module_path=module_path,
                module_type=module_type,
                source=source,
                source_code=source_code,
            )
        )
    recompute_flops = sum(c.flops for c, r in zip(costs.costs, plan.recomputed) if r)
    return PartitionReport(
        knobs=knobs,
        num_joint_candidates=summary.num_nodes,
        saved_bytes=int(plan.cut.saved_bytes),
        recompute_flops=int(recompute_flops),
        recompute_seconds=plan.cut.time_cost,
        lam=plan.cut.lam,
        lam_default=plan.lam_default,
        target_bytes=plan.target_bytes,
        budget_met=plan.budget_met,
        num_solves=plan.num_solves,
        solve_seconds=solve_seconds,
        total_seconds=total_seconds,
        nodes=tuple(nodes),
        compile_id=compile_id,
        device=costs.device,
        flops_per_second=costs.flops_per_second,
        bytes_per_second=costs.bytes_per_second,
        default_saved_bytes=(
            float(np.sum(costs.save_bytes(summary)[default_saved & ~summary.is_static]))
            if default_saved is not None
            else None
        ),
        hull=tuple(plan.hull),
        solver=str(getattr(plan, "solver", "mincut")),
        predicted_peak_bytes=estimate.peak_bytes,
        predicted_peak_at=f"{estimate.peak_phase}:{estimate.peak_node}",
        target_peak_bytes=chosen.target_peak,
        peak_plans=chosen.scored,
        aim_peak_bytes=aim_peak_bytes,
        inductor_saved_bytes=inductor_saved_bytes,
        region_budgets=chosen.regions,
        loss_heads=loss_heads,
    )


def budget_text(plan: dict, scheduled: dict | None = None) -> str:
    """What the user's memory_budget asked for (``plan.json``'s ``budget``, rematpass.budget), and
    whether this plan meets it: a peak cap on Inductor's scheduled peak when ``scheduled.json``
    gives it, else on the predicted peak."""
    t, budget = plan["totals"], budget_from_json(plan.get("budget"))
    aim = t.get("aim_peak_bytes")
    aimed = f"; this attempt aimed the predicted peak at {fmt_bytes(aim)}" if aim is not None else ""
    if budget is None:
        return "memory_budget: not recorded in this dump"
    if isinstance(budget, Fastest):
        return "memory_budget None, time_tolerance 0: the fastest plan"
    if isinstance(budget, DefaultPlan):
        return f"memory_budget None: default plan (time_tolerance {budget.tolerance:g})"
    if isinstance(budget, Fraction):
        return (
            f"memory_budget {budget.value:g}: least predicted peak within the recompute that saving "
            f"{fmt_bytes(t.get('target_bytes'))} costs{aimed}"
        )
    scheduled_peak = (scheduled or {}).get("scheduled_peak_bytes")
    if scheduled_peak is not None:
        verdict = "met" if scheduled_peak <= budget.bytes else "NOT met"
        met = f"{verdict} by Inductor's scheduled peak {fmt_bytes(scheduled_peak)}"
    else:
        met = "met by the predicted peak" if t.get("budget_met") else "NOT met (least-memory plan)"
    return f"memory_budget {fmt_bytes(budget.bytes)} (peak cap): {met}{aimed}"


def loss_head_line(head: dict) -> str:
    """One line per cross-entropy: chunked (into how many chunks, what no longer lives whole), or why not."""
    if not head.get("chunked"):
        return f"loss head: left whole ({head.get('reason')})"
    return f"loss head: chunked, {chunking(head)}; {chunked_head_summary(head)}"


def chunked_head_summary(head: dict) -> str:
    """What a chunked head no longer forms whole, and what it costs."""
    whole = f"no [tokens, vocab] tensor ({whole_logits(head)})"
    if not head.get("returned"):
        return f"{whole} is alive whole; same FLOPs, none recomputed{chunk_price(head)}"
    flops = 2 * head["tokens"] * head["vocab"] * head["hidden"]
    returned = head["returned"]
    if isinstance(returned, dict) and not returned.get("by_matmul", True):
        formed = "written chunk by chunk into the output (no FLOPs added; the output is alive through the chunks)"
    else:
        formed = f"formed whole for the user by one more head matmul ({fmt_count(flops)}FLOP)"
    return (
        f"{whole} is kept for the backward or formed in it; the logits it returns are {formed}, "
        f"without gradients unless the loss reads them{chunk_price(head)}"
    )


def chunk_price(head: dict) -> str:
    """What the chunk count holds and costs (passes.chunk_price), or "" when it was not priced:
    "; a chunk holds 2 fp32 [512, 50257] tensors at once, 196.3 MiB where the whole head holds
    785.3 MiB: at most 588.9 MiB off the peak; its matmuls move the weight and its gradient 1.7 GiB
    more (estimated 0 s more)". At most: where the step peaks elsewhere, less comes off it."""
    price = head.get("price")
    if not price:
        return ""
    held, whole = price["held_bytes"], price["whole_held_bytes"]
    return (
        f"; a chunk holds {TENSORS_ALIVE} fp32 [{price['chunk_tokens']}, {head['vocab']}] tensors at once, "
        f"{fmt_bytes(held)} where the whole head holds {fmt_bytes(whole)}: at most {fmt_bytes(whole - held)} off "
        f"the peak; its matmuls move the weight and its gradient {fmt_bytes(price['extra_bytes'])} more "
        f"(estimated {price['extra_seconds']:.3g} s more)"
    )


def chunking(head: dict) -> str:
    """ "4 chunks of 512 tokens", or for a dynamic token count "4 chunks (of 512 tokens at 2048)"."""
    if head.get("dynamic_tokens"):
        return f"{head['chunks']} chunks of a dynamic token count ({head['chunk_tokens']} tokens at {head['tokens']})"
    return f"{head['chunks']} chunks of {head['chunk_tokens']} tokens"


def whole_logits(head: dict) -> str:
    """The whole logits a chunked head no longer forms: "2048 x 50257, 392.6 MiB in fp32"."""
    size = f"{head['tokens']} x {head['vocab']}, {fmt_bytes(head['tokens'] * head['vocab'] * 4)} in fp32"
    return size + (" at the captured token count" if head.get("dynamic_tokens") else "")


def fmt_measured_peak(totals: dict) -> str:
    """ "measured 9.6 MiB for the step (predicted / measured 0.950)", or "" before one is recorded."""
    measured, predicted = totals.get("measured_peak_bytes"), totals.get("predicted_peak_bytes")
    if measured is None:
        return ""
    text = f"measured {fmt_bytes(measured)} for the step"
    return text + (f" (predicted / measured {predicted / measured:.3f})" if predicted and measured else "")


def fmt_bytes(n: float | None) -> str:
    """1536 -> "1.5 KiB"."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_count(n: float | None, unit: str = "") -> str:
    """2_500_000 -> "2.50 M"."""
    if n is None:
        return "-"
    n = float(n)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def fmt_seconds(s: float | None) -> str:
    """3.2e-6 -> "3.2 µs"."""
    if s is None:
        return "-"
    s = float(s)
    if s == 0:
        return "0 s"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


_RECENT: collections.deque[PartitionReport] = collections.deque(maxlen=64)


def record(report: PartitionReport) -> None:
    _RECENT.append(report)


def recent_reports() -> list[PartitionReport]:
    """Reports of the most recent partitions in this process, oldest first."""
    return list(_RECENT)


def clear_reports() -> None:
    _RECENT.clear()
