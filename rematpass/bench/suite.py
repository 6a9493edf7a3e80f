"""Where rematpass stands against eager, checkpointing, Inductor's default and PyTorch's memory budget.

    python -m rematpass.bench                                  # the whole suite on the CPU
    python -m rematpass.bench --models gpt2 llama --variants inductor remat remat@0.3
    python -m rematpass.bench --device cuda --size 4 --out bench-gpu
    python -m rematpass.bench --size full    # GPT-2 small, Llama 8 layers, ViT-B/16, ResNet-50

Trains each model of the suite (``rematpass.bench.models``; ``--size full``:
its full-size suite, batch per device, ``--batch`` overrides) under each
variant in one process, prints one table per model, writes ``results.json``
to ``--out`` and draws ``pareto.png`` (peak memory against step time; needs
the ``plot`` extra, matplotlib).

Variants (``--variants``; ``@B`` is a memory budget in [0, 1]):
  eager          the model as written
  checkpoint     eager, each block wrapped in torch.utils.checkpoint(use_reentrant=False)
  inductor       torch.compile(backend="inductor"): Inductor's default min-cut partitioner
  inductor@B     the same under torch._functorch.config.activation_memory_budget=B, set
                 around the compile and the first step (the partitioner runs lazily there)
  remat          torch.compile(backend="remat")
  remat-fastest  the same with time_tolerance=0: the fastest plan, no peak traded for time
  remat@B        torch.compile(backend="remat", options={"memory_budget": B})

How each figure is measured:
- peak: exact peak bytes allocated above the level before one training step
  (zero_grad(set_to_none=False), forward, backward, SGD step), by
  ``rematpass.measure.peak_memory`` (CPU: profiler allocator events, second
  reading; CUDA: max_memory_allocated). Gradients already exist, so the figure
  is activations plus the backward's temporaries.
- predicted peak: the planner's prediction for the plan it chose (``predicted_peak_bytes``);
  scheduled / measured: the peak of the kernels Inductor scheduled for it, read after codegen
  (``scheduled_peak_bytes``, docs/design.md section 9), over the measured peak.
- saved: ``rematpass.measure.saved_activation_bytes`` over forward+backward (distinct
  storages autograd keeps, parameters excluded). Under checkpointing the
  checkpoint's own hooks hide what it keeps, so the block inputs it holds for
  the recomputation are added (deduplicated by storage).
- recompute FLOPs, over the save-everything plan. Compiled variants: the FLOPs
  (torch.utils.flop_counter's: matmul, conv, attention; pointwise ops count 0) of
  the backward graph's copies of forward ops, read from the graphs each
  partitioner returns, the same way for all three partitioners (see
  ``rematpass.bench.partition_records``); ``recompute ops / elements`` count the copied
  non-view ops and their output elements, which shows pointwise recomputation.
  Eager variants: FlopCounterMode's total over forward+backward minus eager's.
- partition time: wall time of the partitioner call alone (Inductor's joint-graph
  passes excluded), measured by the same wrapper for every compiled variant.
  partition host peak: the most host memory one partitioner call took above what
  was in use before it (``--partition-memory``; see ``rematpass.bench.partition_records.HostPeak``).
  compile time: wall time of the first forward+backward (both compiles and one step).
- step time: after all variants of a model are compiled and measured, they are
  kept alive and run in interleaved rounds (A B C ... A B C ..., start rotated each
  round), one training step each per round. Reported: the median over rounds of
  (variant's step / inductor's step in the same round), and the median time.
- grads: the first step's parameter gradients (fp32) against eager's with the
  same weights, inputs and seed: max over parameters of max|g - g_eager| / max|g_eager|,
  matched if <= 1e-4. With dropout, compiled code draws its own masks, so compiled
  variants are compared with ``inductor`` under the same seed instead (Inductor's
  masks depend only on the seed); eager and checkpoint still compare with eager.

Dynamo keeps compiled code per code object, so variants of one model are compiled
with ``isolate_recompiles=True`` instead of ``torch._dynamo.reset()`` between them
(a reset would throw away the compiled models the interleaved timing needs). The
wrapper checks that each compiled variant ran its own partitioner and that nothing
recompiled afterwards. Dynamo is reset between models; caches are disabled.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import inductor_hooks
from ..measure import peak_memory, saved_activation_bytes
from . import models as bench_models
from .command_line import parse_args
from .output import _mib, machine, markdown, plot, table, targets
from .partition_records import (
    PartitionRecorder,
    grad_error,
    kept_partitions,
    saved_bytes_with_held,
)
from .variants import Variant

SCHEMA = "rematpass.bench/1"
BASELINE = "inductor"
GRAD_RTOL = 1e-4
LR = 1e-4


# ------------------------------------------------------------------ one variant


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


class Run:
    """One variant of one model: its module, its step functions and what was measured."""

    def __init__(
        self,
        variant: Variant,
        bench: bench_models.BenchModel,
        device: str,
        block_paths: list[str],
        result: dict[str, Any] | None = None,
    ):
        self.variant, self.device = variant, device
        self.model = copy.deepcopy(bench.module).to(device).train()
        self.inputs = tuple(t.to(device) for t in bench.inputs)
        self.held: list = []
        if variant.kind == "checkpoint":
            bench_models.checkpoint_blocks([self.model.get_submodule(p) for p in block_paths], self._hold)
        self.fn = variant.compile(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.recording = False
        self.result = result if result is not None else {"name": variant.name, "kind": variant.kind}
        self.times: list[float] = []

    def _hold(self, args) -> None:
        if self.recording:
            self.held.append(args)

    def forward_backward(self):
        loss = self.fn(*self.inputs)
        loss.backward()
        return loss

    def train_step(self):
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.forward_backward()
        self.optimizer.step()
        return loss

    def first_step(self, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        self.model.zero_grad(set_to_none=True)
        _sync(self.device)
        started = time.perf_counter()
        with self.variant.first_call_context():
            loss = self.forward_backward()
        _sync(self.device)
        if self.variant.compiled:
            self.result["compile_seconds"] = time.perf_counter() - started
        self.result["loss"] = float(loss.detach())
        return _grads(self.model)

    def measure_memory(self) -> None:
        if self.variant.kind == "checkpoint":
            self.recording = True
            try:
                saved = saved_bytes_with_held(self.forward_backward, self.model, self.held)
            finally:
                self.recording = False
        else:
            saved = saved_activation_bytes(self.forward_backward, self.model)
        self.result["saved_bytes"] = saved
        self.result["peak_bytes"] = peak_memory(self.train_step, self.device)

    def count_flops(self) -> int:
        with FlopCounterMode(display=False) as counter:
            self.forward_backward()
        return int(counter.get_total_flops())

    def timed_step(self) -> None:
        _sync(self.device)
        started = time.perf_counter()
        self.train_step()
        _sync(self.device)
        self.times.append(time.perf_counter() - started)


def _remat_reports_since(count: int) -> dict[str, Any] | None:
    import rematpass

    reports = rematpass.recent_reports()[count:]
    if not reports:
        return None
    return {
        "graphs": len(reports),
        "planned_saved_bytes": sum(r.saved_bytes for r in reports),
        "planned_recompute_flops": sum(r.recompute_flops for r in reports),
        "total_seconds": sum(r.total_seconds for r in reports),
        "solve_seconds": sum(r.solve_seconds for r in reports),
        "budget_met": all(r.budget_met for r in reports),
        # Graphs run one after another: the step peaks with the largest one.
        "predicted_peak_bytes": max((r.predicted_peak_bytes or 0 for r in reports), default=0) or None,
        # The same, read off the kernels Inductor scheduled (rematpass.scheduled_peak).
        "scheduled_peak_bytes": max((r.scheduled_peak_bytes or 0 for r in reports), default=0) or None,
        # Inductor compiles per graph (a budget's check probes its plans and compiles once) and probes.
        "compiles": [r.compiles for r in reports],
        "schedule_probes": [r.schedule_probes for r in reports],
    }


def _grad_check(run: Run, grads: dict, eager_grads: dict, compiled_ref: dict | None, dropout: bool) -> dict:
    variant = run.variant
    if variant.kind == "eager":
        return {"status": "reference", "reference": "eager", "max_rel_err": 0.0}
    if not dropout or not variant.compiled:
        reference, name = eager_grads, "eager"
    elif variant.name == BASELINE:
        return {
            "status": "n/a",
            "reference": None,
            "max_rel_err": None,
            "reason": "dropout: compiled code draws its own masks, which eager cannot reproduce; "
            "this variant is the reference for the other compiled variants",
        }
    elif compiled_ref is None:
        return {
            "status": "n/a",
            "reference": None,
            "max_rel_err": None,
            "reason": f"dropout model and {BASELINE} (the same-seed reference) was not run",
        }
    else:
        reference, name = compiled_ref, f"{BASELINE} (same seed: dropout)"
    error = grad_error(grads, reference)
    return {"status": "match" if error <= GRAD_RTOL else "MISMATCH", "reference": name, "max_rel_err": error}


@dataclasses.dataclass
class _Reference:
    """What one model's variants are checked against: eager's first step, and under dropout the
    BASELINE variant's gradients once it has run (compiled code draws its own dropout masks)."""

    eager_grads: dict[str, torch.Tensor]
    eager_flops: int
    compiled_grads: dict[str, torch.Tensor] | None = None


def run_model(
    bench: bench_models.BenchModel,
    variants: list[Variant],
    *,
    device: str,
    steps: int,
    seed: int,
    say: Callable[[str], None] = print,
    partition_memory: str = "rss",
) -> dict[str, Any]:
    inductor_hooks.reset_dynamo()
    names = {id(m): n for n, m in bench.module.named_modules()}
    block_paths = [names[id(b)] for b in bench.blocks]
    reference = _eager_reference(bench, device, block_paths, seed)
    recompiled = False
    with PartitionRecorder(partition_memory) as recorder:
        runs, results = _run_variants(bench, variants, recorder, reference, device, block_paths, seed, say)
        if runs and steps > 0:
            recompiled = _time_rounds(runs, steps, recorder, bench.name, say)
    _step_times(runs)
    _ratios_to_baseline(results)
    return {
        "name": bench.name,
        "description": bench.description,
        "params": bench.num_params,
        "inputs": [list(t.shape) for t in bench.inputs],
        "blocks": len(bench.blocks),
        "dropout": bench.dropout,
        "eager_flops": reference.eager_flops,
        "baseline": BASELINE,
        "recompiled_during_timing": recompiled,
        "variants": results,
    }


def _eager_reference(bench: bench_models.BenchModel, device: str, block_paths: list[str], seed: int) -> _Reference:
    """Eager's first-step gradients and FLOPs; its model is freed on return, before any variant is built."""
    eager = Run(Variant("eager", "eager"), bench, device, block_paths)
    grads = eager.first_step(seed)
    return _Reference(grads, eager.count_flops())


def _run_variants(bench, variants, recorder, reference, device, block_paths, seed, say) -> tuple[list[Run], list]:
    """Compile and measure each variant; returns the runs that succeeded (kept alive for the timing) and
    one result row per variant, failed ones carrying their ``error``."""
    runs: list[Run] = []
    results: list[dict[str, Any]] = []
    for k, variant in enumerate(variants, 1):
        label = f"[{bench.name} {k}/{len(variants)}] {variant.name}"
        say(f"{label}: {'compiling and ' if variant.compiled else ''}measuring ...")
        started = time.perf_counter()
        result: dict[str, Any] = {"name": variant.name, "kind": variant.kind, "budget": variant.budget}
        results.append(result)
        try:
            run = Run(variant, bench, device, block_paths, result)
            _measure_variant(run, recorder, reference, seed, bench.dropout)
            runs.append(run)
            say(
                f"{label}: done in {time.perf_counter() - started:.1f} s: peak {_mib(result['peak_bytes'])}, "
                f"saved {_mib(result['saved_bytes'])}, grads {result['grads']['status']}"
            )
        except Exception as exc:  # one failing variant must not stop the suite
            result["error"] = f"{type(exc).__name__}: {exc}"
            say(f"{label}: FAILED: {result['error']}")
    return runs, results


def _measure_variant(run: Run, recorder: PartitionRecorder, reference: _Reference, seed: int, dropout: bool) -> None:
    """First step (the compile), partition figures, gradient check, memory and FLOPs, into ``run.result``."""
    import rematpass

    variant, result = run.variant, run.result
    n_records, n_reports = len(recorder.records), len(rematpass.recent_reports())
    grads = run.first_step(seed)
    if variant.name == BASELINE:
        reference.compiled_grads = grads
    if variant.compiled:
        _record_partitions(result, variant, recorder.records[n_records:], n_reports)
    result["grads"] = _grad_check(run, grads, reference.eager_grads, reference.compiled_grads, dropout)
    n_records = len(recorder.records)
    run.measure_memory()
    if not variant.compiled:
        result["recompute_flops"] = max(0, run.count_flops() - reference.eager_flops)
    if len(recorder.records) != n_records:
        raise RuntimeError("the compiled model recompiled while being measured")


def _record_partitions(result: dict[str, Any], variant: Variant, records: list[dict], n_reports: int) -> None:
    """Time, host memory and recompute of the partitioner calls one compiled variant made."""
    import rematpass

    if not records:
        raise RuntimeError("no partition ran for this variant (a cached or reused compile?)")
    result["partitions"] = len(records)
    result["partition_seconds"] = sum(r["seconds"] for r in records)
    peaks = [r["host_peak_bytes"] for r in records]
    # Calls run one after another, so the variant's partitioner needs the largest of them.
    result["partition_peak_host_bytes"] = None if None in peaks else max(peaks)
    kept = kept_partitions(records, rematpass.recent_reports()[n_reports:])
    for key in ("recompute_flops", "recompute_ops", "recompute_elements"):
        result[key] = sum(r[key] for r in kept)
    if variant.kind == "remat":
        result["remat_reports"] = _remat_reports_since(n_reports)


def _time_rounds(runs: list[Run], steps: int, recorder: PartitionRecorder, name: str, say) -> bool:
    """Interleaved timing rounds, the start rotated each round so no variant always runs first; the
    first round only warms up. Returns whether anything recompiled meanwhile."""
    say(f"[{name}] timing {len(runs)} variants, {steps} interleaved rounds after one warm-up round ...")
    n_records = len(recorder.records)
    for round_ in range(steps + 1):
        for k in range(len(runs)):
            runs[(k + round_) % len(runs)].timed_step()
        if round_ == 0:
            for run in runs:
                run.times.clear()
    recompiled = len(recorder.records) != n_records
    if recompiled:
        say(f"[{name}] WARNING: a compiled model recompiled during timing; times are suspect")
    return recompiled


def _ratios_to_baseline(results: list[dict[str, Any]]) -> None:
    base = next((r for r in results if r["name"] == BASELINE and "peak_bytes" in r), None)
    for row in results:
        if base and "peak_bytes" in row:
            row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else None
            row["saved_ratio"] = row["saved_bytes"] / base["saved_bytes"] if base["saved_bytes"] else None


def _step_times(runs: list[Run]) -> None:
    base = next((r for r in runs if r.variant.name == BASELINE), None)
    for run in runs:
        row = run.result
        if not run.times:
            continue
        row["step_seconds"] = statistics.median(run.times)
        row["step_rounds"] = len(run.times)
        if base is not None and len(base.times) == len(run.times):
            ratios = sorted(t / b for t, b in zip(run.times, base.times))
            row["step_ratio"] = statistics.median(ratios)
            q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
            row["step_ratio_iqr"] = [q[0], q[2]]


def _warm_up(device: str) -> None:
    """Compile a tiny model once per backend, so the first variant is not charged for loading the toolchain."""
    for backend in ("inductor", "remat"):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 1)).to(device)
        torch.compile(model, backend=backend)(torch.randn(4, 8, device=device)).sum().backward()
    inductor_hooks.reset_dynamo()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, variants = parse_args(argv, __doc__)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    inductor_hooks.inductor_caches_disabled()  # so every variant's partitioner really runs
    warnings.filterwarnings("ignore", message=".*dynamo_pgo force disabled.*")
    results = _results_header(args, variants)
    if not args.no_warmup:
        _say("warming up the compilers ...")
        _warm_up(args.device)
    for name in args.models:
        results["models"].append(_bench_model(name, variants, args))
        # Rewritten after each model, so an interrupted suite keeps the models it finished.
        (out / "results.json").write_text(json.dumps(results, indent=1))
    _write_results(results, out)
    return results


def _say(line: str) -> None:
    print(line, flush=True)


def _results_header(args: argparse.Namespace, variants: list[Variant]) -> dict[str, Any]:
    """results.json before any model has run: the machine and the configuration, ``models`` empty."""
    return {
        "schema": SCHEMA,
        "machine": machine(),
        "device": args.device,
        "config": {
            "models": args.models,
            "variants": [v.name for v in variants],
            "size": args.size,
            "batch": args.batch,
            "seq": args.seq,
            "partition_memory": args.partition_memory,
            "steps": args.steps,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "baseline": BASELINE,
            "grad_rtol": GRAD_RTOL,
        },
        "models": [],
    }


def _bench_model(name: str, variants: list[Variant], args: argparse.Namespace) -> dict[str, Any]:
    """Build one model, run all variants on it and print its table."""
    bench = bench_models.build(name, args.size, args.seed, device=args.device, batch=args.batch, seq=args.seq)
    _say(f"== {name}: {bench.description}, {bench.num_params / 1e6:.2f} M parameters")
    model = run_model(
        bench,
        variants,
        device=args.device,
        steps=args.steps,
        seed=args.seed,
        say=_say,
        partition_memory=args.partition_memory,
    )
    _say("\n" + "\n".join([table(model), *targets(model)]) + "\n")
    return model


def _write_results(results: dict[str, Any], out: pathlib.Path) -> None:
    """The final results.json (with the load average at the end), results.md and pareto.png."""
    with contextlib.suppress(Exception):
        results["machine"]["load_average_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    _say(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    if plot(results, out / "pareto.png"):
        _say(f"wrote {out / 'pareto.png'}")
    else:
        _say("no plot: matplotlib is not installed (pip install 'rematpass[plot]') or no step times were measured")
