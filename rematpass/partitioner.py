"""``RematPartitioner``: the custom partitioner Inductor calls on each joint graph.

The pipeline, one stage a module: prepare and classify (passes.torch_internals), summarise
(passes.analysis) and price (rematpass.cost), the four of them run by rematpass.priced_graph; solve
(rematpass.planner, for the budget rematpass.budget parsed); rewrite
(passes.torch_extract.extract_forward_backward); report (rematpass.inspect.report, and the dump
folder through rematpass.inspect.dump). Any failure while planning falls back to PyTorch's own
partitioner with one warning, so training goes on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import logging
import pathlib
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from .budget import is_memory_budget, peak_cap_bytes
from .calibrate import rates_file_key
from .config import Knobs
from .inductor_hooks import (
    CustomPartitionerFn,
    current_compile_id,
    get_hash_for_files,
    layout_optimized,
    store_rules,
    workspace_bytes,
)
from .inspect.report import build_report, record
from .passes import torch_extract
from .passes import torch_internals as ti
from .planner import PeakPredictor, plan
from .priced_graph import price_joint_graph
from .schedule_probe import probe_step_peak
from .user_warnings import RematBudgetWarning, RematFallbackWarning, warn_at_user_code
from .verify import CompileOutcome, compile_within

log = logging.getLogger("rematpass")


@functools.lru_cache(maxsize=1)
def source_hash() -> bytes:
    """Hash of our own sources: a new rematpass version never reuses a cached plan."""
    from . import passes

    package_dirs = (pathlib.Path(__file__).resolve().parent, pathlib.Path(passes.__file__).resolve().parent)
    files = sorted({str(p) for d in package_dirs for p in d.rglob("*.py")})
    return get_hash_for_files(tuple(files))


@contextlib.contextmanager
def cyclic_gc_paused():
    """Partitioning allocates tens of thousands of FX nodes; the cyclic collector
    would walk them all several times (up to 1 s of a 2 s partition at 96 layers)
    for no garbage. Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def inductor_saved_bytes(joint: fx.GraphModule, joint_inputs, num_fwd_outputs: int, static: list[int]) -> int | None:
    """Bytes of the tensors torch.compile's default partitioner saves for the backward of ``joint``
    (parameters and other static-lifetime inputs not counted, as in our ``saved_bytes``); None if
    it fails on this graph."""
    try:
        forward, _ = ti.torch_min_cut_partition(
            joint,
            joint_inputs,
            compiler="inductor",
            num_fwd_outputs=num_fwd_outputs,
            static_lifetime_input_indices=static,
        )
    except Exception as exc:
        log.debug("torch.compile's partitioner failed on the comparison copy: %s", exc)
        return None
    placeholders = [n.name for n in joint.graph.find_nodes(op="placeholder")]
    static_names = {placeholders[i] for i in static if i < len(placeholders)}
    saved = forward.graph.find_nodes(op="output")[0].args[0][num_fwd_outputs:]
    total = 0
    for node in {n for n in saved if isinstance(n, fx.Node)}:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and node.name not in static_names:
            total += ti.hint_int(val.numel()) * val.element_size()
    return total


def peak_predictor(gm: fx.GraphModule, summary, roles, num_fwd_outputs: int, peak_model: str) -> PeakPredictor:
    """The planner's peak model for ``peak_model``: under ``"fused"`` (Inductor) with what Inductor's
    kernels add (kernel reads, channels-last copies, convolution scratch)."""
    inductor = peak_model == "fused"
    return PeakPredictor(
        gm,
        summary,
        roles,
        num_fwd_outputs,
        peak_model,
        kernel_reads=inductor,
        layout_copies=inductor and layout_optimized(gm),
        workspace_of=workspace_bytes if inductor else None,
        matmul_adds=inductor,
        store_rules=store_rules(gm) if inductor else None,
    )


class RematPartitioner(CustomPartitionerFn):
    """Partition a joint graph by a cost-priced min-cut. Picklable; ``uuid`` covers knobs and sources."""

    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        verified_after: bool = False,
        aim_peak_bytes: int | None = None,
        records_reports: bool = True,
        loss_heads: tuple = (),
        probe_schedule: bool = False,
    ):
        self.knobs = knobs or Knobs()
        # What the backend did to the graph's loss heads before tracing (passes.loss_head), for the report.
        self.loss_heads = tuple(loss_heads)
        # Used alone (a backend of the user's, the tests), each partition's report goes straight
        # to recent_reports(); the remat backend completes it first (scheduled peak, attempts)
        # and records the one it keeps itself.
        self.records_reports = records_reports
        # The backend checks the compiled plan against a byte budget (rematpass.verify) and warns
        # itself, with Inductor's figures, when no plan meets it.
        self.verified_after = verified_after
        # Set by that check when it recompiles: plan for this predicted peak instead of the knob's
        # budget (the knobs, and so the report, keep what the user asked for).
        self.aim_peak_bytes = aim_peak_bytes
        # Under a memory budget, check the plans against Inductor's schedule, probed without
        # compiling (rematpass.schedule_probe), and return the one the check keeps.
        self.probes_schedule = probe_schedule and is_memory_budget(self.knobs.budget)
        # Called as a partition starts (the backend arms its reading of the schedules there:
        # a compile served from the cache partitions nothing and generates no code).
        self.before_partition = None
        self.reports: list = []  # this instance's partitions, for the backend to complete
        self.dump_folders: list = []  # and the dump folder of each (None: no dump)

    def __getstate__(self):
        return {
            "knobs": self.knobs,
            "verified_after": self.verified_after,
            "aim_peak_bytes": self.aim_peak_bytes,
            "records_reports": self.records_reports,
            "loss_heads": self.loss_heads,
            "probes_schedule": self.probes_schedule,
            "reports": [],
            "dump_folders": [],
            "before_partition": None,
        }

    def uuid(self) -> Any:
        # The calibrated rates file prices every plan whose rates are not set by knobs.
        return (repr(self.knobs), self.aim_peak_bytes, self.probes_schedule, source_hash().hex(), rates_file_key())

    def __call__(self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
        if self.before_partition is not None:
            self.before_partition()
        num_fwd_outputs = kwargs["num_fwd_outputs"]
        static = list(kwargs.get("static_lifetime_input_indices") or [])
        try:
            with cyclic_gc_paused():
                return self.partition(
                    gm, joint_inputs, num_fwd_outputs=num_fwd_outputs, static_lifetime_input_indices=static
                )
        except Exception as exc:
            if self.knobs.strict:
                raise
            warn_at_user_code(
                f"rematpass could not plan this graph ({type(exc).__name__}: {exc}); "
                "using PyTorch's default partitioner for it instead",
                RematFallbackWarning,
            )
            log.warning("fallback to PyTorch's partitioner: %s", exc, exc_info=True)
            return ti.torch_min_cut_partition(
                gm,
                joint_inputs,
                compiler=kwargs.get("compiler", "inductor"),
                num_fwd_outputs=num_fwd_outputs,
                static_lifetime_input_indices=static,
            )

    def partition(self, gm, joint_inputs, *, num_fwd_outputs: int, static_lifetime_input_indices: list[int]):
        started = time.perf_counter()
        # A dump compares with what torch.compile's own partitioner would save (on a copy: our
        # analysis changes the graph in place). Costs one more partition, so only when dumping.
        untouched = fx.GraphModule(gm, copy.deepcopy(gm.graph)) if self.knobs.dump_dir else None
        analysis = price_joint_graph(
            gm,
            num_fwd_outputs=num_fwd_outputs,
            static_lifetime_input_indices=static_lifetime_input_indices,
            knobs=self.knobs,
        )
        gm, roles, summary, costs = analysis.gm, analysis.roles, analysis.summary, analysis.costs
        if summary is None:  # the backward reads nothing of the forward: nothing to choose
            return ti.default_partition(
                gm,
                joint_inputs,
                num_fwd_outputs=num_fwd_outputs,
                static_lifetime_input_indices=static_lifetime_input_indices,
            )
        solve_started = time.perf_counter()
        problem = costs.problem(summary)
        predictor = peak_predictor(gm, summary, roles, num_fwd_outputs, self.knobs.peak_model)

        def planned(aim: int | None):
            chosen = plan(
                problem,
                costs.default_lambda,
                self.knobs.budget,
                predictor,
                step_seconds=costs.step_seconds(summary),
                aim=aim,
                solver=self.knobs.solver,
                ilp_time_limit=self.knobs.ilp_time_limit,
            )
            saved = [node for node, keep in zip(summary.nodes, chosen.plan.saved) if keep]
            report = build_report(
                self.knobs,
                summary,
                costs,
                chosen,
                predictor.joint_estimate(chosen.plan.cut),
                solve_seconds=time.perf_counter() - solve_started,
                total_seconds=time.perf_counter() - started,
                compile_id=current_compile_id(),
                aim_peak_bytes=aim,
                loss_heads=self.loss_heads,
            )
            return chosen, saved, report

        if self.probes_schedule:
            chosen, saved, report = self._probed_plan(gm, roles, num_fwd_outputs, planned)
        else:
            chosen, saved, report = planned(self.aim_peak_bytes)
        fw_module, bw_module = torch_extract.extract_forward_backward(gm, saved, roles, num_fwd_outputs)
        if untouched is not None:
            report = dataclasses.replace(
                report,
                inductor_saved_bytes=inductor_saved_bytes(
                    untouched, joint_inputs, num_fwd_outputs, static_lifetime_input_indices
                ),
            )
        report = dataclasses.replace(report, total_seconds=time.perf_counter() - started)
        if self.records_reports:
            record(report)
        self.reports.append(report)
        self.dump_folders.append(self._publish(report, gm, fw_module, bw_module, problem, chosen.plan, costs))
        if not chosen.plan.budget_met and not (self.verified_after or report.verification):
            warn_at_user_code(
                f"rematpass: memory_budget={self.knobs.memory_budget!r} cannot be met on this graph; "
                f"the least-memory plan saves {report.saved_bytes:,} bytes "
                f"and is predicted to peak at {report.predicted_peak_bytes:,} bytes",
                RematBudgetWarning,
            )
        log.info("%s", report.one_line())
        return fw_module, bw_module

    def _probed_plan(self, gm, roles, num_fwd_outputs: int, planned):
        """The budget's check (rematpass.verify) run on probes of Inductor's schedule
        (rematpass.schedule_probe) instead of compiles: the plans it tries are lowered and scheduled,
        never compiled, and the one it keeps is returned as (chosen, saved, report). When the
        schedule cannot be probed, the knobs' plan, unchecked (the backend then checks it by
        compiling)."""
        cap = peak_cap_bytes(self.knobs.budget)
        by_aim: dict = {}  # the check asks for the knobs' plan twice
        by_plan: dict = {}  # and an aim can pick a plan already probed
        seconds = []

        def probe_once(aim: int | None) -> CompileOutcome:
            if aim not in by_aim:
                chosen, saved, report = planned(aim)
                if (plan_key := chosen.plan.saved.tobytes()) not in by_plan:
                    modules = torch_extract.extract_forward_backward(gm, saved, roles, num_fwd_outputs)
                    probe = probe_step_peak(*modules, num_fwd_outputs)
                    by_plan[plan_key] = None if probe is None else probe.scheduled_peak_bytes
                    seconds.extend([probe.seconds] if probe is not None else [])
                peak = by_plan[chosen.plan.saved.tobytes()]
                by_aim[aim] = CompileOutcome((chosen, saved), report=report, scheduled_peak_bytes=peak, aim=aim)
            return by_aim[aim]

        if probe_once(None).scheduled_peak_bytes is None:
            return (*by_aim[None].compiled, by_aim[None].report)
        kept = compile_within(cap, probe_once)
        report = dataclasses.replace(kept.report, schedule_probes=len(seconds), schedule_probe_seconds=sum(seconds))
        return (*kept.compiled, report)

    def _publish(self, report, joint, forward, backward, problem, cut_plan, costs):
        """The structured-trace artifact and, with ``dump_dir``, the dump folder (returned)."""
        from .inspect import dump

        try:
            return dump.publish(
                report,
                dump_dir=self.knobs.dump_dir,
                joint=joint,
                forward=forward,
                backward=backward,
                problem=problem,
                plan=cut_plan,
                costs=costs,
            )
        except Exception as exc:  # a dump must never stop training
            warnings.warn(
                f"rematpass could not write its dump: {type(exc).__name__}: {exc}", dump.RematDumpWarning, stacklevel=2
            )
            return None
