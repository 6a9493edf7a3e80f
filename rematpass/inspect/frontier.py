"""``frontier.json`` and ``frontier.png`` of a dump: saved bytes against recompute cost over
lambda, walked along the min-cut's hull, with the default and chosen plans marked."""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import numpy as np

from ..passes.hull import walk_hull
from ..passes.mincut import CutNetwork
from ..passes.plan import CutProblem, Plan
from .json_values import SCHEMA_VERSION, jsonable

log = logging.getLogger("rematpass")

# The frontier walk stops after this many max-flow solves or seconds, whichever first.
FRONTIER_MAX_SOLVES = 40
FRONTIER_MAX_SECONDS = 10.0
# The frontier's ends, as multiples of the default lambda.
FRONTIER_LOW, FRONTIER_HIGH = 1e-7, 1e4


def frontier_points(
    problem: CutProblem,
    plan: Plan,
    flops: np.ndarray | None = None,
    *,
    max_solves: int = FRONTIER_MAX_SOLVES,
    max_seconds: float = FRONTIER_MAX_SECONDS,
) -> dict[str, Any]:
    """The memory/recompute frontier: the min-cut plans along the lower convex hull.

    The hull walk (passes.hull) from lambda = default * 1e-7 through the default
    to default * 1e4, within a solve and a time limit. Every vertex is the plan
    minimising ``saved bytes + lambda * recompute seconds`` for the lambda it
    was found at.
    """
    from ..passes.analysis import INPUT

    started = time.perf_counter()
    flops = np.zeros(problem.summary.num_nodes) if flops is None else flops
    lam0 = plan.lam_default
    walk = walk_hull(
        CutNetwork(problem),
        [lam0 * FRONTIER_LOW, lam0, lam0 * FRONTIER_HIGH],
        max_solves=max_solves,
        max_seconds=max_seconds,
    )
    cuts = list(walk.solved)
    on_hull = list(cuts)
    if not any(c.same_plan(plan.cut) for c in cuts):
        cuts = cuts + [plan.cut]  # e.g. an ILP plan, or one filled in between vertices: shown, not a vertex
    points: dict[tuple[float, float], dict[str, Any]] = {}
    for cut in sorted(cuts, key=lambda c: c.lam):
        key = (round(cut.saved_bytes, 3), round(cut.time_cost, 15))
        point = points.setdefault(
            key,
            {
                "lam": cut.lam,
                "saved_bytes": cut.saved_bytes,
                "recompute_seconds": cut.time_cost,
                "recompute_flops": int(flops[cut.recomputed].sum()),
                "saved_tensors": int(np.sum(cut.saved & (problem.summary.kind != INPUT))),
                "recomputed_ops": int(np.sum(cut.recomputed)),
                "default": False,
                "chosen": False,
                "hull": False,
            },
        )
        point["hull"] |= any(cut is c for c in on_hull)
        point["default"] |= cut.lam == lam0
        point["chosen"] |= cut.same_plan(plan.cut)
    ordered = sorted(points.values(), key=lambda p: (p["saved_bytes"], -p["recompute_seconds"]))
    return jsonable(
        {
            "schema": "rematpass.frontier",
            "schema_version": SCHEMA_VERSION,
            "x": "saved_bytes",
            "y": "recompute_seconds",
            "lambda_default": lam0,
            "lambda_chosen": plan.cut.lam,
            "target_bytes": plan.target_bytes,
            "num_solves": len(walk.solved),
            "complete": walk.complete,
            "seconds": time.perf_counter() - started,
            "points": ordered,
            "budget_search": [
                {"lam": h.lam, "saved_bytes": h.saved_bytes, "recompute_seconds": h.time_cost} for h in plan.hull
            ],
        }
    )


def write_frontier_png(data: dict[str, Any], path: pathlib.Path) -> bool:
    """frontier.png with matplotlib when it is installed; False when it is not."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:
        return False
    from .html_report import BYTE_UNITS, TIME_UNITS, pick_unit

    points = data["points"]
    x_unit, x_scale = pick_unit(max([p["saved_bytes"] for p in points] + [data.get("target_bytes") or 0]), BYTE_UNITS)
    y_unit, y_scale = pick_unit(max(p["recompute_seconds"] for p in points), TIME_UNITS)
    xs = [p["saved_bytes"] / x_scale for p in points]
    ys = [p["recompute_seconds"] / y_scale for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.plot(xs, ys, "o-", color="#3465a4", label="min-cut plans (hull)")
        for key, color, label in (("default", "#73d216", "default plan"), ("chosen", "#cc0000", "chosen plan")):
            sel = [(x, y) for x, y, p in zip(xs, ys, points) if p[key]]
            if sel:
                ax.plot(*zip(*sel), "s" if key == "default" else "*", color=color, markersize=11, label=label)
        if data.get("target_bytes") is not None:
            ax.axvline(data["target_bytes"] / x_scale, color="#888", linestyle="--", label="budget")
        ax.set_xlabel(f"saved activation memory ({x_unit})")
        ax.set_ylabel(f"estimated recompute time ({y_unit})")
        ax.set_title("memory / recompute frontier")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return True
