"""Tables, machine description and the Pareto plot of ``python -m rematpass.bench``."""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
from typing import Any

import torch


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _count(n: float | None) -> str:
    if n is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}"
    return f"{n:.0f}"


def _seconds(s: float | None) -> str:
    return "-" if s is None else (f"{s:.1f} s" if s >= 1 else f"{s * 1e3:.0f} ms")


def _grads_cell(row: dict) -> str:
    grads = row.get("grads") or {}
    status = grads.get("status", "-")
    if grads.get("max_rel_err") is not None and status != "reference":
        status += f" ({grads['max_rel_err']:.0e})"
    return status


def _predicted_over_measured(row: dict[str, Any], key: str = "predicted_peak_bytes") -> str:
    predicted, measured = (row.get("remat_reports") or {}).get(key), row.get("peak_bytes")
    return f"{predicted / measured:.3f}" if predicted and measured else "-"


def _per_graph(reports: dict[str, Any] | None) -> str:
    """Inductor compiles and schedule probes of each graph, e.g. ``1/2`` (``1/2, 1/0`` for two graphs)."""
    if not reports or "compiles" not in reports:
        return "-"
    return ", ".join(f"{c}/{p}" for c, p in zip(reports["compiles"], reports["schedule_probes"]))


COLUMNS = [
    ("variant", lambda r: r["name"]),
    ("peak", lambda r: _mib(r.get("peak_bytes"))),
    ("peak vs inductor", lambda r: _ratio(r.get("peak_ratio"))),
    ("predicted peak", lambda r: _mib((r.get("remat_reports") or {}).get("predicted_peak_bytes"))),
    ("predicted / measured", lambda r: _predicted_over_measured(r)),
    ("scheduled / measured", lambda r: _predicted_over_measured(r, "scheduled_peak_bytes")),
    ("saved", lambda r: _mib(r.get("saved_bytes"))),
    ("recompute FLOPs", lambda r: _count(r.get("recompute_flops"))),
    (
        "recompute ops / elements",
        lambda r: (
            "-" if r.get("recompute_ops") is None else f"{r['recompute_ops']} / {_count(r['recompute_elements'])}"
        ),
    ),
    ("step", lambda r: _seconds(r.get("step_seconds"))),
    ("step vs inductor", lambda r: _ratio(r.get("step_ratio"))),
    ("compile", lambda r: _seconds(r.get("compile_seconds"))),
    ("compiles / probes per graph", lambda r: _per_graph(r.get("remat_reports"))),
    ("partition", lambda r: _seconds(r.get("partition_seconds"))),
    ("partition host peak", lambda r: _mib(r.get("partition_peak_host_bytes"))),
    ("grads", _grads_cell),
]


def table(model: dict[str, Any], markdown: bool = False) -> str:
    """The model's results as a text (or Markdown) table."""
    rows = [
        [
            fn(r) if "error" not in r else (r["name"] if k == 0 else ("FAILED" if k == 1 else ""))
            for k, (_, fn) in enumerate(COLUMNS)
        ]
        for r in model["variants"]
    ]
    head = [name for name, _ in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(f"`{c}`" if k == 0 else c for k, c in enumerate(row)) + " |" for row in rows]
    else:
        widths = [max(len(head[k]), *(len(row[k]) for row in rows)) for k in range(len(head))]

        def fmt(cells):
            return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head)] + [fmt(row) for row in rows]
    errors = [f"{r['name']}: {r['error']}" for r in model["variants"] if "error" in r]
    return "\n".join(lines + [f"  failed {e}" for e in errors])


def machine() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    with contextlib.suppress(Exception):
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    with contextlib.suppress(Exception):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    with contextlib.suppress(Exception):
        info["load_average"] = os.getloadavg()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(Exception):
        import subprocess

        root = pathlib.Path(__file__).resolve().parent.parent

        def git(*a):
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

        info["rematpass_commit"] = git("rev-parse", "--short", "HEAD")
        info["rematpass_dirty"] = git("status", "--porcelain", "--", "rematpass", "passes").splitlines()
    return info


def plot(results: dict[str, Any], path: pathlib.Path) -> bool:
    """Peak memory against step time, both relative to inductor, one panel per model. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = [m for m in results["models"] if any("step_ratio" in r for r in m["variants"])]
    if not models:
        return False
    cols = min(3, len(models))
    rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    colours = {"eager": "tab:gray", "checkpoint": "tab:brown", "inductor": "tab:blue", "remat": "tab:red"}
    for ax, model in zip(axes.flat, models):
        points = [r for r in model["variants"] if "step_ratio" in r and "peak_ratio" in r]
        front, best = [], float("inf")  # the Pareto front: no other point is both faster and smaller
        for r in sorted(points, key=lambda r: (r["step_ratio"], r["peak_ratio"])):
            if r["peak_ratio"] < best:
                front.append(r)
                best = r["peak_ratio"]
        if len(front) > 1:
            ax.step(
                [r["step_ratio"] for r in front],
                [r["peak_ratio"] for r in front],
                where="post",
                color="0.6",
                linestyle="--",
                linewidth=0.8,
                label="Pareto front",
            )
        for kind, colour in colours.items():
            group = [r for r in points if r["kind"] == kind]
            if not group:
                continue
            ax.plot(
                [r["step_ratio"] for r in group],
                [r["peak_ratio"] for r in group],
                "o",
                color=colour,
                label=kind,
                alpha=0.85,
            )
            for r in group:
                ax.annotate(
                    r["name"].split("@")[-1] if "@" in r["name"] else r["name"],
                    (r["step_ratio"], r["peak_ratio"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_title(model["name"])
        ax.set_xlabel("step time / inductor (median of interleaved rounds)")
        ax.set_ylabel("peak memory / inductor")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    where = results["machine"].get("gpu") or results["machine"].get("cpu") or results["device"]
    fig.suptitle(
        f"peak memory vs step time, both relative to inductor; lower left is better ({where}, "
        f"torch threads: {results['config'].get('threads', '?')})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def targets(model: dict[str, Any]) -> list[str]:
    """The targets of issues 3 and 6, checked on one model: a line each, starting "met" / "MISSED" / "n/a"
    (for budgets, "met" is issue 6's: a lower peak than PyTorch's budget path with no more recompute FLOPs)."""
    rows = {r["name"]: r for r in model["variants"] if "error" not in r}
    lines = []
    remat = rows.get("remat")
    if remat and "peak_ratio" in remat:
        step = remat.get("step_ratio")
        ok = remat["peak_ratio"] <= 0.85 and step is not None and step <= 1.02
        lines.append(
            f"{'met' if ok else 'MISSED'}: remat peak {remat['peak_ratio']:.2f}x inductor's (target <= 0.85x) "
            f"at step time {_ratio(step)} (target <= 1.02x)"
        )
    for name, row in rows.items():
        if row["kind"] != "remat" or row["budget"] is None:
            continue
        torch_row = rows.get(f"inductor@{row['budget']:g}") or rows.get(f"inductor@{row['budget']}")
        if torch_row is None:
            lines.append(f"n/a: {name}: inductor@{row['budget']:g} did not run")
            continue
        peak_ratio = row["peak_bytes"] / torch_row["peak_bytes"]
        mine, theirs = row.get("recompute_flops"), torch_row.get("recompute_flops")
        known = mine is not None and theirs is not None
        flops = f"{_count(mine)} vs {_count(theirs)}" + (f" ({mine / theirs:.2f}x)" if theirs else "")
        issue6 = row["peak_bytes"] < torch_row["peak_bytes"] and known and mine <= theirs
        issue3 = peak_ratio <= 1 and known and mine <= 0.7 * theirs
        predicted = (row.get("remat_reports") or {}).get("predicted_peak_bytes")
        lines.append(
            f"{'met' if issue6 else 'MISSED'}: {name}: peak {_mib(row['peak_bytes'])} vs {_mib(torch_row['peak_bytes'])} "
            f"({peak_ratio:.3f}x), recompute FLOPs {flops}; lower peak with no more FLOPs (issue 6): "
            f"{'yes' if issue6 else 'no'}; peak <= 1x with FLOPs <= 0.7x (issue 3): {'yes' if issue3 else 'no'}"
            + (f"; predicted peak {_mib(predicted)}" if predicted else "")
        )
    return lines


PARTITION_MEMORY_NOTES = {
    "rss": " (resident-set growth: a lower bound, low when the call reuses memory freed earlier)",
    "tracemalloc": " (Python and numpy allocations; partition and compile times include tracemalloc's slowdown)",
}


def markdown(results: dict[str, Any]) -> str:
    """results.md: the machine, the settings and one Markdown table per model."""
    m, c = results["machine"], results["config"]
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, {m.get('memory_gib', '?')} GiB, "
        f"torch {m.get('torch')}, Python {m.get('python')}, {c.get('threads', '?')} torch threads, device {results['device']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; rematpass {m.get('rematpass_commit', '?')}.",
        f"Settings: size {c['size']}"
        + (f", batch {c['batch']}" if c.get("batch") else "")
        + f", {c['steps']} interleaved timing rounds, seed {c['seed']}"
        + (f", partition host memory by {c['partition_memory']}" if c.get("partition_memory") else "")
        + PARTITION_MEMORY_NOTES.get(c.get("partition_memory"), "")
        + "; "
        f"load average {m.get('load_average')} at the start, {m.get('load_average_end')} at the end.",
        "",
    ]
    for model in results["models"]:
        lines += [f"### {model['name']}", "", f"{model['description']}; {model['params'] / 1e6:.2f} M parameters.", ""]
        lines += [table(model, markdown=True), ""]
        lines += [f"- {line}" for line in targets(model)] + [""]
        if model.get("recompiled_during_timing"):
            lines += ["Warning: a compiled model recompiled during the timing rounds.", ""]
    return "\n".join(lines)
