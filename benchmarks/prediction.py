"""How close is the planner's predicted peak to the peak of Inductor's schedule, plan by plan?

    python benchmarks/prediction.py                            # the suite's small models
    python benchmarks/prediction.py --models cnn vit --size 1
    python benchmarks/prediction.py --models resnet50 --size full

For each model the joint graph is captured once, as Inductor hands it to a partitioner. Every plan
of the planner's frontier (the min-cut hull's vertices from the fastest plan to the least-bytes one)
is then predicted by the planner's peak model, with what it knows of Inductor's kernels (fused values
read in their readers' kernels, outputs written over dying inputs, channels-last copies of
convolution inputs, convolution workspaces), and probed: its forward and backward are
lowered and scheduled by Inductor and the step peak read off the schedule
(``rematpass.schedule_probe``, equal to the compiled one on the suite). ``error`` is predicted /
scheduled - 1. Models: the suite's (``python -m rematpass.bench --help``), ``--size full`` for the
full-size ones, and the held-out transformers architectures of ``benchmarks/heldout.py``. This is a
program that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import platform
import subprocess
import sys
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import heldout  # noqa: E402
from partition_speed import capture_joint, inductor_context  # noqa: E402

from rematpass.bench import models  # noqa: E402
from rematpass.partitioner import peak_predictor  # noqa: E402
from rematpass.passes import torch_extract  # noqa: E402
from rematpass.passes.hull import walk_hull  # noqa: E402
from rematpass.passes.mincut import CutNetwork  # noqa: E402
from rematpass.priced_graph import price_joint_graph  # noqa: E402
from rematpass.schedule_probe import probe_step_peak  # noqa: E402

WITHIN = 0.03


def build(name: str, size):
    if name in heldout.BUILDERS:
        torch.manual_seed(0)
        bench = heldout.BUILDERS[name]()
    else:
        bench = models.build(name, size)
    return bench.module, tuple(bench.inputs)


def plans_of(name: str, size) -> list[dict]:
    """Predicted and scheduled step peaks of every plan on the frontier of ``name``'s first graph
    with a backward."""
    module, inputs = build(name, size)
    captured = capture_joint(module, inputs)
    kwargs = captured["kwargs"]
    rows = []
    with inductor_context(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        priced = price_joint_graph(
            copy.deepcopy(captured["gm"]),
            num_fwd_outputs=kwargs["num_fwd_outputs"],
            static_lifetime_input_indices=kwargs["static_lifetime_input_indices"],
        )
        gm, roles, summary, costs = priced.gm, priced.roles, priced.summary, priced.costs
        predictor = peak_predictor(gm, summary, roles, kwargs["num_fwd_outputs"], "fused")
        lam = costs.default_lambda
        hull = walk_hull(CutNetwork(costs.problem(summary)), [lam * 1e-7, lam]).vertices
        for i, cut in enumerate(hull):
            predicted = predictor(cut)
            saved = [node for node, keep in zip(summary.nodes, cut.saved) if keep]
            forward, backward = torch_extract.extract_forward_backward(gm, saved, roles, kwargs["num_fwd_outputs"])
            probe = probe_step_peak(forward, backward, kwargs["num_fwd_outputs"])
            scheduled = probe.scheduled_peak_bytes if probe is not None else None
            rows.append(
                {
                    "model": name,
                    "plan": i,
                    "saved": cut.saved_bytes,
                    "predicted": predicted,
                    "scheduled": scheduled,
                    "error": None if not scheduled else predicted / scheduled - 1,
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    scheduled = "unread" if r["scheduled"] is None else f"{r['scheduled']:,}"
    error = "-" if r["error"] is None else f"{r['error']:+.1%}"
    return f"| {r['model']} | {r['plan']} | {r['saved']:,} | {r['predicted']:,} | {scheduled} | {error} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = [*models.SUITE, *models.FULL_SUITE, *heldout.BUILDERS]
    parser.add_argument("--models", nargs="+", default=list(models.SUITE), choices=choices)
    parser.add_argument("--size", default="0.5", help="the suite's size (a number) or 'full'")
    args = parser.parse_args()
    size = args.size if args.size == "full" else float(args.size)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, rematpass {commit}, size {size}")
    print("| model | plan | saved bytes | predicted peak | scheduled peak | error |")
    print("|---|---|---|---|---|---|")
    rows = [r for name in args.models for r in plans_of(name, size)]
    errors = [r["error"] for r in rows if r["error"] is not None]
    within = sum(abs(e) <= WITHIN for e in errors)
    print(
        f"\n{len(rows)} plans, {len(errors)} read; within {WITHIN:.0%} of the schedule: {within}; "
        f"error from {min(errors):+.1%} to {max(errors):+.1%}"
        if errors
        else "\nno schedule read"
    )


if __name__ == "__main__":
    main()
