"""``RematPartitioner``: the custom partitioner Inductor calls on each joint graph.

The pipeline, one stage a module: prepare and classify (passes.torch_internals),
summarise (passes.analysis) and price (rematpass.cost), the four of them run by
rematpass.analyse; solve (passes.budget; with a
budget, rematpass.peak_planning over passes.hull and passes.peak),
rewrite (passes.torch_extract.extract_forward_backward), report
(rematpass.report). Any failure while planning falls back to PyTorch's own
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

from .analyse import analyse
from .calibrate import rates_file_key
from .config import Knobs
from .inductor_hooks import CustomPartitionerFn, current_compile_id, get_hash_for_files
from .inspect.report import build_report, record
from .passes import torch_extract
from .passes import torch_internals as ti
from .passes.budget import plan_for_budget
from .peak_planning import PeakPredictor, plan_for_peak, plan_for_speed
from .user_warnings import RematBudgetWarning, RematFallbackWarning, warn_at_user_code

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


def budget_target(knobs: Knobs):
    """The budget as ``plan_for_budget`` takes it: None, bytes, or a function of the hull ends."""
    budget = knobs.memory_budget
    if budget is None or budget == 1.0 and isinstance(budget, float):
        return None
    if isinstance(budget, float):
        return lambda least, default: least + budget * (default - least)
    return float(budget)


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


class RematPartitioner(CustomPartitionerFn):
    """Partition a joint graph by a cost-priced min-cut. Picklable; ``uuid`` covers knobs and sources."""

    def __init__(self, knobs: Knobs | None = None, *, verified_after: bool = False, aim_peak_bytes: int | None = None):
        self.knobs = knobs or Knobs()
        # The backend checks the compiled plan against a byte budget (rematpass.verify) and warns
        # itself, with Inductor's figures, when no plan meets it.
        self.verified_after = verified_after
        # Set by that check when it recompiles: plan for this predicted peak instead of the knob's
        # budget (the knobs, and so the report, keep what the user asked for).
        self.aim_peak_bytes = aim_peak_bytes
        self.reports: list = []  # this instance's partitions, for the backend to complete
        self.dump_folders: list = []  # and the dump folder of each (None: no dump)

    def __getstate__(self):
        return {
            "knobs": self.knobs,
            "verified_after": self.verified_after,
            "aim_peak_bytes": self.aim_peak_bytes,
            "reports": [],
            "dump_folders": [],
        }

    def uuid(self) -> Any:
        # The calibrated rates file prices every plan whose rates are not set by knobs.
        return (repr(self.knobs), self.aim_peak_bytes, source_hash().hex(), rates_file_key())

    def __call__(self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
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
        from .inspect import dump

        started = time.perf_counter()
        # A dump compares with what torch.compile's own partitioner would save (on a copy: our
        # analysis changes the graph in place). Costs one more partition, so only when dumping.
        untouched = fx.GraphModule(gm, copy.deepcopy(gm.graph)) if self.knobs.dump_dir else None
        analysis = analyse(
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
        predictor = PeakPredictor(gm, summary, roles, num_fwd_outputs, self.knobs.peak_model)
        peak_plan = None
        if self.knobs.solver == "ilp":  # exact; falls back to the min-cut plan with a warning
            from .passes.ilp import ilp_plan

            plan = ilp_plan(problem, costs.default_lambda, None, time_limit=self.knobs.ilp_time_limit)
        elif budget_target(self.knobs) is None and self.knobs.time_tolerance == 0 and self.aim_peak_bytes is None:
            plan = plan_for_budget(problem, costs.default_lambda, None)
        else:
            # The default plan may cost up to time_tolerance of the step more than the fastest.
            slack = self.knobs.time_tolerance * costs.step_seconds(summary)
            if self.aim_peak_bytes is not None:
                peak_plan = plan_for_peak(problem, costs.default_lambda, int(self.aim_peak_bytes), predictor, slack)
            elif budget_target(self.knobs) is None:
                peak_plan = plan_for_speed(problem, costs.default_lambda, predictor, slack)
            else:
                peak_plan = plan_for_peak(problem, costs.default_lambda, self.knobs.memory_budget, predictor, slack)
            plan = peak_plan.plan
        solve_seconds = time.perf_counter() - solve_started
        saved = [node for node, keep in zip(summary.nodes, plan.saved) if keep]
        fw_module, bw_module = torch_extract.extract_forward_backward(gm, saved, roles, num_fwd_outputs)
        report = build_report(
            self.knobs,
            summary,
            costs,
            plan,
            solve_seconds=solve_seconds,
            total_seconds=time.perf_counter() - started,
            default_saved=plan.default_saved,
            compile_id=current_compile_id(),
        )
        estimate = predictor.joint_estimate(plan.cut)
        report = dataclasses.replace(
            report,
            predicted_peak_bytes=estimate.peak_bytes,
            predicted_peak_at=f"{estimate.peak_phase}:{estimate.peak_node}",
            target_peak_bytes=peak_plan.target_peak if peak_plan else None,
            peak_plans=peak_plan.scored if peak_plan else (),
            aim_peak_bytes=self.aim_peak_bytes,
            inductor_saved_bytes=(
                None
                if untouched is None
                else inductor_saved_bytes(untouched, joint_inputs, num_fwd_outputs, static_lifetime_input_indices)
            ),
        )
        record(report)
        self.reports.append(report)
        self.dump_folders.append(None)
        try:
            self.dump_folders[-1] = dump.publish(
                report,
                dump_dir=self.knobs.dump_dir,
                joint=gm,
                forward=fw_module,
                backward=bw_module,
                problem=problem,
                plan=plan,
                costs=costs,
            )
        except Exception as exc:  # a dump must never stop training
            warnings.warn(
                f"rematpass could not write its dump: {type(exc).__name__}: {exc}", dump.RematDumpWarning, stacklevel=2
            )
        if not plan.budget_met and not self.verified_after:
            warn_at_user_code(
                f"rematpass: memory_budget={self.knobs.memory_budget!r} cannot be met on this graph; "
                f"the least-memory plan saves {report.saved_bytes:,} bytes "
                f"and is predicted to peak at {report.predicted_peak_bytes:,} bytes",
                RematBudgetWarning,
            )
        log.info("%s", report.one_line())
        return fw_module, bw_module
