"""Dumps a person can read: what was saved, what is recomputed, and why.

With the knob ``dump_dir`` (or ``REMAT_DUMP_DIR``) every partitioned graph
writes a folder ``DIR/<compile id>/``:

- ``joint.py``, ``forward.py``, ``backward.py``: the prepared joint graph and
  the forward and backward we cut from it, as readable FX code with shapes,
  strides and dtypes;
- ``plan.json``: knobs, versions, graph statistics, and for every candidate
  node its op, shape, dtype, bytes, FLOPs, estimated time, decision, reason,
  module path and source line; totals;
- ``frontier.json`` (and ``frontier.png`` when matplotlib is installed): saved
  bytes against recompute cost over lambda, walked along the min-cut's hull;
- ``report.html``: one self-contained page for a browser.

``rematpass show|diff|frontier DIR`` reads them back (``rematpass/inspect/cli.py``).

On a cache hit the partitioner is not called, so nothing above is written.
``watch_compile`` (used by the backend around ``compile_fx``) notices a
compile that finished without a partition and writes ``CACHE_HIT.txt`` (or
``NOT_PARTITIONED.txt`` when no cache hit was counted) saying so, and how to
force a fresh partition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import pathlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..cost import CostTable
from ..inductor_hooks import aot_autograd_cache_hits, current_compile_id, trace_artifact
from ..passes.plan import CutProblem, Plan
from .frontier import frontier_points, write_frontier_png
from .json_values import SCHEMA_VERSION
from .json_values import jsonable as _jsonable
from .report import PartitionReport

log = logging.getLogger("rematpass")

PLAN_FILE = "plan.json"
FRONTIER_FILE = "frontier.json"
FRONTIER_PNG = "frontier.png"
HTML_FILE = "report.html"
SCHEDULED_FILE = "scheduled.json"
CACHE_HIT_FILE = "CACHE_HIT.txt"
NOT_PARTITIONED_FILE = "NOT_PARTITIONED.txt"
MARKER_FILES = (CACHE_HIT_FILE, NOT_PARTITIONED_FILE)

FORCE_FRESH = (
    "To force a fresh partition (and a full dump), disable the caches for that run:\n"
    "    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python your_script.py\n"
    "or in Python, before compiling:\n"
    "    torch._inductor.config.force_disable_caches = True\n"
)


class RematDumpWarning(UserWarning):
    """A dump could not be written; training goes on."""


# ---------------------------------------------------------------------------- folder names

_counter = itertools.count()
_lock = threading.Lock()


def safe_name(text: str) -> str:
    """A folder name made of ``[A-Za-z0-9._-]``: "0/0" -> "0_0", "!0/1/2" -> "ca0_1_2"."""
    text = text.replace("!", "ca")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "graph"
    return name[:100]


def claim_graph_dir(root: str | os.PathLike, compile_id: str | None) -> pathlib.Path:
    """Create and return a new folder under ``root`` named after the compile id (or a counter).

    Never reuses a folder: the same compile id twice (after ``torch._dynamo.reset()``,
    or a second run into the same root) gets ``0_0.1``, ``0_0.2``, ...
    """
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _lock:
        base = safe_name(compile_id) if compile_id else f"graph_{next(_counter)}"
    for n in itertools.count():
        path = root / (base if n == 0 else f"{base}.{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- plan.json


def graph_statistics(
    summary, joint: fx.GraphModule | None, forward: fx.GraphModule | None, backward: fx.GraphModule | None
) -> dict[str, Any]:
    from ..passes.analysis import BACKWARD_ONLY, FORWARD, INPUT

    def count(gm):
        return None if gm is None else sum(1 for _ in gm.graph.nodes)

    return {
        "joint_nodes": count(joint),
        "forward_nodes": count(forward),
        "backward_nodes": count(backward),
        "candidates": int(summary.num_nodes),
        "candidate_inputs": int(np.sum(summary.kind == INPUT)),
        "candidate_forward": int(np.sum(summary.kind == FORWARD)),
        "candidate_backward_only": int(np.sum(summary.kind == BACKWARD_ONLY)),
        "parameters_and_buffers": int(np.sum(summary.is_static)),
        "data_edges": int(len(summary.edge_src)),
        "needed_by_backward": int(np.sum(summary.needed_by_backward)),
        "must_not_recompute": int(sum(r is not None for r in summary.no_recompute_reason)),
        "cannot_save": int(sum(r is not None for r in summary.no_save_reason)),
    }


def plan_dict(report: PartitionReport, graph: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything plan.json holds: one JSON-ready dict."""
    saved = report.saved_nodes()
    recomputed = report.recomputed_nodes()
    from .. import __version__

    return {
        "schema": "rematpass.plan",
        "schema_version": SCHEMA_VERSION,
        "compile_id": report.compile_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "rematpass_version": __version__,
        "knobs": _jsonable({k: v for k, v in dataclasses.asdict(report.knobs).items() if k != "budget"}),
        "budget": report.knobs.budget.to_json(),
        "machine": {
            "device": report.device,
            "flops_per_second": report.flops_per_second,
            "bytes_per_second": report.bytes_per_second,
        },
        "graph": _jsonable(graph or {"candidates": report.num_joint_candidates}),
        "totals": _jsonable(
            {
                "saved_tensors": len(saved),
                "saved_bytes": report.saved_bytes,
                "default_saved_bytes": report.default_saved_bytes,
                "recomputed_ops": len(recomputed),
                "recompute_flops": report.recompute_flops,
                "recompute_seconds": report.recompute_seconds,
                "lambda": report.lam,
                "lambda_default": report.lam_default,
                "target_bytes": report.target_bytes,
                "budget_met": report.budget_met,
                "solver": report.solver,
                "num_solves": report.num_solves,
                "solve_seconds": report.solve_seconds,
                "total_seconds": report.total_seconds,
                "predicted_peak_bytes": report.predicted_peak_bytes,
                "predicted_peak_at": report.predicted_peak_at,
                "target_peak_bytes": report.target_peak_bytes,
                "aim_peak_bytes": report.aim_peak_bytes,
                "inductor_saved_bytes": report.inductor_saved_bytes,
                "region_budgets": [dataclasses.asdict(r) for r in report.region_budgets],
                "loss_heads": [dataclasses.asdict(h) for h in report.loss_heads],
            }
        ),
        "peak_plans": [
            {
                "saved_bytes": p.saved_bytes,
                "recompute_seconds": p.time_cost,
                "predicted_peak_bytes": p.predicted_peak_bytes,
            }
            for p in report.peak_plans
        ],
        "summary": report.one_line(),
        "nodes": [_jsonable(dataclasses.asdict(n)) for n in report.nodes],
    }


# ---------------------------------------------------------------------------- writing


def graph_code(gm: fx.GraphModule, header: str = "", *, backward: bool = False) -> str:
    """Readable Python with shapes and ``# File:`` source lines. torch >= 2.14 prefixes the lines of nodes
    marked ``autograd_backward`` with "Backward of forward node:"; a backward module marks all, its
    recomputed forward ops too, so ``backward=True`` prints them unprefixed, as earlier releases did."""
    marks = {n: n.meta.pop("autograd_backward") for n in gm.graph.nodes if backward and "autograd_backward" in n.meta}
    try:
        code = gm.print_readable(print_output=False, include_stride=True, include_device=True)
    finally:
        for node, mark in marks.items():
            node.meta["autograd_backward"] = mark
    return (header + "\n" if header else "") + code


def _joint_header(report: PartitionReport) -> str:
    def names(nodes):
        return ", ".join(n.name for n in nodes) or "(none)"

    lines = [
        f"# rematpass joint graph {report.compile_id or ''} (after dead-code elimination and CSE)",
        f"# {report.one_line()}",
        f"# saved: {names(report.saved_nodes())}",
        f"# recomputed in the backward: {names(report.recomputed_nodes())}",
    ]
    return "\n".join(lines)


def _write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_dump(
    dump_dir: str | os.PathLike,
    report: PartitionReport,
    *,
    joint: fx.GraphModule,
    forward: fx.GraphModule,
    backward: fx.GraphModule,
    problem: CutProblem,
    plan: Plan,
    costs: CostTable | None = None,
) -> pathlib.Path:
    """Write one graph's folder under ``dump_dir``; returns it."""
    from .html_report import render_html

    flops = None if costs is None else np.array([c.flops for c in costs.costs], dtype=np.float64)
    folder = claim_graph_dir(dump_dir, report.compile_id)
    _write(folder / "joint.py", graph_code(joint, _joint_header(report)))
    _write(folder / "forward.py", graph_code(forward, f"# rematpass forward graph {report.compile_id or ''}"))
    backward_header = f"# rematpass backward graph {report.compile_id or ''}"
    _write(folder / "backward.py", graph_code(backward, backward_header, backward=True))
    plan_data = plan_dict(report, graph_statistics(problem.summary, joint, forward, backward))
    frontier_data = frontier_points(problem, plan, flops)
    _write(folder / PLAN_FILE, json.dumps(plan_data, indent=1))
    _write(folder / FRONTIER_FILE, json.dumps(frontier_data, indent=1))
    write_frontier_png(frontier_data, folder / FRONTIER_PNG)
    _write(folder / HTML_FILE, render_html(plan_data, frontier_data))
    return folder


def write_scheduled(folder: pathlib.Path, report: PartitionReport, *, kept: bool) -> None:
    """``scheduled.json``: the step's peak in the kernels Inductor scheduled for this plan, next to
    the predicted one, whether the backend kept the plan, and (under a budget) every plan it checked
    for this graph (rematpass.verify), with how many of them were probed without compiling
    (rematpass.schedule_probe) and how many compiles the graph took."""
    data = {
        "predicted_peak_bytes": report.predicted_peak_bytes,
        "scheduled_peak_bytes": report.scheduled_peak_bytes,
        "kept": kept,
        "attempts": [dataclasses.asdict(a) for a in report.verification],
        "compiles": report.compiles,
        "schedule_probes": report.schedule_probes,
        "schedule_probe_seconds": report.schedule_probe_seconds,
    }
    folder = pathlib.Path(folder)
    _write(folder / SCHEDULED_FILE, json.dumps(data, indent=1))
    if (folder / PLAN_FILE).is_file() and (folder / FRONTIER_FILE).is_file():  # the page shows the verdict too
        from .html_report import render_html

        plan_data = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8"))
        frontier_data = json.loads((folder / FRONTIER_FILE).read_text(encoding="utf-8"))
        _write(folder / HTML_FILE, render_html(plan_data, frontier_data, scheduled=data))


def publish(
    report: PartitionReport,
    *,
    dump_dir: str | None,
    joint: fx.GraphModule,
    forward: fx.GraphModule,
    backward: fx.GraphModule,
    problem: CutProblem,
    plan: Plan,
    costs: CostTable | None = None,
) -> pathlib.Path | None:
    """Emit the plan as a structured-trace artifact, write the dump folder when ``dump_dir`` is set,
    and tell a watching backend that this compile was partitioned."""
    _mark_partitioned()
    trace_artifact("remat_plan", lambda: json.dumps(plan_dict(report)))
    if not dump_dir:
        return None
    folder = write_dump(
        dump_dir, report, joint=joint, forward=forward, backward=backward, problem=problem, plan=plan, costs=costs
    )
    log.debug("rematpass: wrote the plan of graph %s to %s", report.compile_id, folder)
    return folder


# ---------------------------------------------------------------------------- cache hits

_watch = threading.local()


def _stack() -> list[dict[str, Any]]:
    if not hasattr(_watch, "stack"):
        _watch.stack = []
    return _watch.stack


def _mark_partitioned() -> None:
    for entry in _stack():
        entry["partitioned"] = True


def note_compile_start(dump_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Call before ``compile_fx``; pass what it returns to ``note_compile_end``."""
    token = {
        "dump_dir": os.fspath(dump_dir) if dump_dir else None,
        "compile_id": current_compile_id(),
        "partitioned": False,
        "cache_hits": aot_autograd_cache_hits(),
    }
    _stack().append(token)
    return token


def note_compile_end(token: dict[str, Any]) -> pathlib.Path | None:
    """Call after ``compile_fx`` returns. When our partitioner did not run for this compile
    and a dump was asked for, write a note saying why there is no plan; returns its path."""
    stack = _stack()
    if token in stack:
        stack.remove(token)
    if not token["dump_dir"] or token["partitioned"]:
        return None
    cache_hit = aot_autograd_cache_hits() > token["cache_hits"]
    folder = claim_graph_dir(token["dump_dir"], token["compile_id"])
    graph = f"graph {token['compile_id']}" if token["compile_id"] else "this graph"
    if cache_hit:
        path = folder / CACHE_HIT_FILE
        text = (
            f"rematpass: {graph} came from the AOTAutograd cache.\n"
            "On a cache hit the partitioner is not called, so there is no fresh plan.json for it here:\n"
            "the cached forward and backward were cut by the plan rematpass made when the entry was\n"
            "stored (the cache key covers every rematpass knob and source file).\n\n" + FORCE_FRESH
        )
    else:
        path = folder / NOT_PARTITIONED_FILE
        text = (
            f"rematpass: {graph} finished compiling without rematpass's partitioner.\n"
            "Likely causes: nothing in it needs a backward (inference, torch.no_grad, no input requires\n"
            "grad); planning failed and fell back to PyTorch's partitioner (a RematFallbackWarning\n"
            "says so); or the compiled graph came from a cache that did not count a hit.\n\n" + FORCE_FRESH
        )
    _write(path, text)
    log.debug("rematpass: %s", text.splitlines()[0])
    return path


@contextlib.contextmanager
def watch_compile(dump_dir: str | os.PathLike | None) -> Iterator[dict[str, Any]]:
    """``with watch_compile(knobs.dump_dir): return compile_fx(...)``: notes a compile with no partition."""
    token = note_compile_start(dump_dir)
    ok = False
    try:
        yield token
        ok = True
    finally:
        if ok:
            try:
                note_compile_end(token)
            except Exception as exc:  # a note must never break a compile
                import warnings

                warnings.warn(f"rematpass could not write its cache-hit note: {exc}", RematDumpWarning, stacklevel=3)
        else:
            with contextlib.suppress(ValueError):
                _stack().remove(token)
