"""``rematpass show|diff|frontier``: read the dumps that ``dump_dir`` writes; ``rematpass calibrate``.

    rematpass show DIR            summary and the largest saved tensors of each graph
    rematpass diff DIR_A DIR_B    which decisions changed between two runs
    rematpass frontier DIR        saved bytes against recompute cost over lambda
    rematpass calibrate           measure this machine's FLOP rate and bandwidth for the cost model

DIR is a dump root (every graph folder under it) or one graph folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from .dump import FRONTIER_FILE, HTML_FILE, MARKER_FILES, PLAN_FILE, SCHEDULED_FILE
from .report import (
    RECOMPUTED,
    SAVED,
    budget_text,
    fmt_bytes,
    fmt_count,
    fmt_measured_peak,
    fmt_seconds,
    loss_head_line,
)


class DumpError(Exception):
    """A path that is not a readable rematpass dump."""


# ---------------------------------------------------------------------------- reading


def _natural(path: pathlib.Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _is_graph_dir(path: pathlib.Path) -> bool:
    return (path / PLAN_FILE).is_file() or any((path / m).is_file() for m in MARKER_FILES)


def find_graphs(path: str | pathlib.Path) -> list[pathlib.Path]:
    """The graph folders of a dump: ``path`` itself, or its subfolders, in compile order."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DumpError(f"{path}: no such directory")
    if not path.is_dir():
        raise DumpError(f"{path}: not a directory (give a dump folder, not a file)")
    if _is_graph_dir(path):
        return [path]
    graphs = sorted((p for p in path.iterdir() if p.is_dir() and _is_graph_dir(p)), key=_natural)
    if not graphs:
        raise DumpError(
            f"{path}: not a rematpass dump (no {PLAN_FILE} in it or in its subfolders). "
            "Write one with torch.compile(..., backend='remat', options={'dump_dir': DIR}) or REMAT_DUMP_DIR=DIR."
        )
    return graphs


def _load_json(path: pathlib.Path, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DumpError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DumpError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise DumpError(f"{path}: not a {schema} file")
    return data


def load_plan(folder: pathlib.Path) -> dict[str, Any]:
    return _load_json(folder / PLAN_FILE, "rematpass.plan")


def load_frontier(folder: pathlib.Path) -> dict[str, Any]:
    return _load_json(folder / FRONTIER_FILE, "rematpass.frontier")


def _marker(folder: pathlib.Path) -> str | None:
    for name in MARKER_FILES:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    return None


# ---------------------------------------------------------------------------- printing


def _cut(text: Any, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str],
    right: Iterable[int] = (),
    widths: dict[int, int] | None = None,
) -> str:
    """A plain text table; columns in ``right`` are right-aligned, ``widths`` caps columns."""
    widths = widths or {}
    cells = [[_cut(c, widths.get(i, 200)) for i, c in enumerate(r)] for r in [header, *rows]]
    size = [max(len(r[i]) for r in cells) for i in range(len(header))]
    right = set(right)
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(size[i]) if i in right else c.ljust(size[i]) for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * s for s in size))
    return "\n".join(lines)


def load_scheduled(folder: pathlib.Path) -> dict[str, Any] | None:
    """``scheduled.json`` (Inductor's scheduled peak, and whether the backend kept this plan), if written."""
    path = folder / SCHEDULED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _is_kept(folder: pathlib.Path) -> bool:
    """A plan the backend compiled only to check it under a budget, then discarded, is not kept."""
    scheduled = load_scheduled(folder)
    return scheduled is None or scheduled.get("kept", True)


def _title(folder: pathlib.Path, plan: dict[str, Any] | None) -> str:
    gid = (plan or {}).get("compile_id") or folder.name
    scheduled = load_scheduled(folder)
    attempts = len((scheduled or {}).get("attempts") or ())
    status = ""
    if not _is_kept(folder):
        status = "  [DISCARDED: compiled to check the budget, not used]"
    elif attempts > 1 and scheduled.get("schedule_probes"):
        status = (
            f"  [KEPT: the plan used, of {attempts} checked on Inductor's schedule for this graph; "
            f"{scheduled['schedule_probes']} probed without compiling, {scheduled.get('compiles', 1)} compiled]"
        )
    elif attempts > 1:
        status = f"  [KEPT: the plan used, of {attempts} compiled for this graph]"
    return f"== graph {gid}  ({folder}){status}"


def _shape(node: dict[str, Any]) -> str:
    return "[" + ", ".join(node["shape"]) + "]"


def _reasons(nodes: list[dict[str, Any]], decision: str) -> str:
    counts = collections.Counter(n.get("reason_kind") or n["reason"] for n in nodes if n["decision"] == decision)
    return ", ".join(f"{c} {k.replace('_', ' ')}" for k, c in counts.most_common()) or "none"


def peak_line(totals: dict[str, Any]) -> str:
    """The predicted peak of the step, and the measured one once ``record_measured_peak`` wrote it."""
    predicted = totals.get("predicted_peak_bytes")
    text = "peak:       " + (f"predicted {fmt_bytes(predicted)}" if predicted is not None else "not predicted")
    if totals.get("predicted_peak_at"):
        text += f" (at {totals['predicted_peak_at']})"
    measured = fmt_measured_peak(totals)
    return text + (f"; {measured}" if measured else "")


def record_measured_peak(path: str | pathlib.Path, peak_bytes: int) -> int:
    """Write a measured step peak into the plan.json (and report.html) of every graph of a dump
    whose plan was kept (not into plans a budget compiled only to check and then discarded).

    The figure is the whole training step's (one step may run several graphs), as
    ``rematpass.measure.peak_memory`` gives it; ``rematpass show`` then prints it
    next to the predicted peak. Returns the number of graphs updated.

        >>> import tempfile, torch, rematpass
        >>> from rematpass.measure import peak_memory
        >>> from rematpass import record_measured_peak
        >>> dump = tempfile.mkdtemp()
        >>> model = torch.compile(torch.nn.Linear(8, 8), backend="remat", options={"dump_dir": dump})
        >>> step = lambda: model(torch.randn(4, 8)).sum().backward()
        >>> step()
        >>> record_measured_peak(dump, peak_memory(step))
        1
    """
    from .html_report import render_html

    if isinstance(peak_bytes, bool) or not isinstance(peak_bytes, int) or peak_bytes < 0:
        raise ValueError(f"peak_bytes must be a non-negative int (bytes), got {peak_bytes!r}")
    folders = [f for f in find_graphs(path) if (f / PLAN_FILE).is_file() and _is_kept(f)]
    for folder in folders:
        plan = load_plan(folder)
        plan["totals"]["measured_peak_bytes"] = peak_bytes
        (folder / PLAN_FILE).write_text(json.dumps(plan, indent=1), encoding="utf-8")
        if (folder / FRONTIER_FILE).is_file():
            page = render_html(plan, load_frontier(folder), scheduled=load_scheduled(folder))
            (folder / HTML_FILE).write_text(page, encoding="utf-8")
    return len(folders)


def summary_lines(plan: dict[str, Any], scheduled: dict[str, Any] | None = None) -> list[str]:
    t, g = plan["totals"], plan.get("graph", {})
    default, inductor = t.get("default_saved_bytes"), t.get("inductor_saved_bytes")
    compared = [f"default plan: {fmt_bytes(default)}"] if default is not None else []
    compared += [f"torch.compile's partitioner: {fmt_bytes(inductor)}"] if inductor is not None else []
    return [
        plan.get("summary", ""),
        f"saved:      {t['saved_tensors']} tensors, {fmt_bytes(t['saved_bytes'])}"
        + (f" ({'; '.join(compared)})" if compared else "")
        + f"  [{_reasons(plan['nodes'], SAVED)}]",
        f"recomputed: {t['recomputed_ops']} ops, {fmt_count(t['recompute_flops'], 'FLOP')}, "
        f"est. {fmt_seconds(t['recompute_seconds'])}  [{_reasons(plan['nodes'], RECOMPUTED)}]",
        peak_line(t),
        f"{budget_text(plan, scheduled)}; lambda {t['lambda']:.3g} (default {t['lambda_default']:.3g}); "
        f"{t['num_solves']} max-flow solves in {fmt_seconds(t['solve_seconds'])}",
        *[
            f"region:     region_activation_memory_budget({r['fraction']:g}) over {r['num_nodes']} ops: saves "
            f"{fmt_bytes(r['saved_bytes'])} (target {fmt_bytes(r['target_bytes'])}, default "
            f"{fmt_bytes(r['default_bytes'])}, least {fmt_bytes(r['least_bytes'])})"
            for r in t.get("region_budgets") or ()
        ],
        *[loss_head_line(head) for head in t.get("loss_heads") or ()],
        f"graph:      {g.get('candidates', '?')} candidates; joint {g.get('joint_nodes', '?')}, "
        f"forward {g.get('forward_nodes', '?')}, backward {g.get('backward_nodes', '?')} nodes; "
        f"torch {plan.get('torch_version', '?')}",
    ]


def show(path: str, top: int = 15, out=None) -> int:
    out = out or sys.stdout
    for folder in find_graphs(path):
        marker = _marker(folder)
        if marker is not None and not (folder / PLAN_FILE).is_file():
            print(_title(folder, None), file=out)
            print(marker.rstrip() + "\n", file=out)
            continue
        plan = load_plan(folder)
        print(_title(folder, plan), file=out)
        print("\n".join(summary_lines(plan, load_scheduled(folder))), file=out)
        saved = sorted((n for n in plan["nodes"] if n["decision"] == SAVED), key=lambda n: (-n["bytes"], n["name"]))
        shown = saved if top <= 0 else saved[:top]
        print(f"\nLargest saved tensors ({len(shown)} of {len(saved)}):", file=out)
        rows = [
            (
                n["name"],
                n["op"],
                _shape(n),
                n["dtype"],
                fmt_bytes(n["bytes"]),
                n.get("module_path") or "-",
                n["reason"],
                (n.get("source") or "-").rsplit("/", 1)[-1],
            )
            for n in shown
        ]
        print(
            table(
                rows,
                ("node", "op", "shape", "dtype", "bytes", "module", "why", "source"),
                right=(4,),
                widths={2: 24, 5: 28, 6: 60},
            ),
            file=out,
        )
        print(f"\nDetails: {folder / 'report.html'}\n", file=out)
    return 0


def show_frontier(path: str, out=None) -> int:
    out = out or sys.stdout
    status = 0
    for folder in find_graphs(path):
        plan = load_plan(folder) if (folder / PLAN_FILE).is_file() else None
        if not (folder / FRONTIER_FILE).is_file():
            print(
                _title(folder, None)
                + f"\nno {FRONTIER_FILE} here"
                + (" (the graph came from cache)" if _marker(folder) else "")
                + "\n",
                file=out,
            )
            status = 1
            continue
        data = load_frontier(folder)
        note = "" if data.get("complete", True) else ", walk stopped early"
        print(
            _title(folder, plan) + f": {len(data['points'])} plans from {data['num_solves']} max-flow solves{note}",
            file=out,
        )
        rows = []
        for p in data["points"]:
            mark = " ".join(m for m, key in (("chosen", "chosen"), ("default", "default")) if p.get(key))
            rows.append(
                (
                    f"{p['lam']:.3g}",
                    fmt_bytes(p["saved_bytes"]),
                    p["saved_tensors"],
                    p["recomputed_ops"],
                    fmt_count(p["recompute_flops"], "FLOP"),
                    fmt_seconds(p["recompute_seconds"]),
                    mark,
                )
            )
        print(
            table(
                rows,
                ("lambda", "saved", "tensors", "recomputed", "recompute FLOPs", "est. time", ""),
                right=(0, 1, 2, 3, 4, 5),
            ),
            file=out,
        )
        if data.get("target_bytes") is not None:
            print(f"budget target: {fmt_bytes(data['target_bytes'])}", file=out)
        print(file=out)
    return status


# ---------------------------------------------------------------------------- diff


def _key(node: dict[str, Any]) -> tuple:
    return (node["op"], node.get("module_path", ""), tuple(node["shape"]), node["dtype"])


def match_nodes(a: list[dict[str, Any]], b: list[dict[str, Any]]):
    """Pairs (node_a, node_b): by name first; the rest by op + module path + shape, in graph order.
    Returns (pairs, only_in_a, only_in_b)."""
    by_name = {n["name"]: n for n in b}
    pairs, rest_a = [], []
    used = set()
    for n in a:
        m = by_name.get(n["name"])
        if m is not None and _key(m) == _key(n):
            pairs.append((n, m))
            used.add(m["name"])
        else:
            rest_a.append(n)
    pool: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
    for m in b:
        if m["name"] not in used:
            pool[_key(m)].append(m)
    only_a = []
    for n in rest_a:
        if pool[_key(n)]:
            pairs.append((n, pool[_key(n)].popleft()))
        else:
            only_a.append(n)
    only_b = [m for q in pool.values() for m in q]
    return pairs, only_a, only_b


def diff_plans(a: dict[str, Any], b: dict[str, Any], limit: int = 40, out=None) -> int:
    """Print what changed from plan ``a`` to plan ``b``; returns the number of changed decisions."""
    out = out or sys.stdout
    ka, kb = a.get("knobs", {}), b.get("knobs", {})
    changed_knobs = [
        f"{k}: {ka.get(k)!r} -> {kb.get(k)!r}"
        for k in sorted(set(ka) | set(kb))
        if ka.get(k) != kb.get(k) and k != "dump_dir"
    ]
    print("knobs: " + ("; ".join(changed_knobs) if changed_knobs else "same"), file=out)
    ta, tb = a["totals"], b["totals"]
    print(
        f"saved bytes: {fmt_bytes(ta['saved_bytes'])} -> {fmt_bytes(tb['saved_bytes'])} "
        f"({tb['saved_bytes'] - ta['saved_bytes']:+,} B); saved tensors {ta['saved_tensors']} -> {tb['saved_tensors']}",
        file=out,
    )
    print(
        f"recompute: {fmt_count(ta['recompute_flops'], 'FLOP')} -> {fmt_count(tb['recompute_flops'], 'FLOP')}, "
        f"est. {fmt_seconds(ta['recompute_seconds'])} -> {fmt_seconds(tb['recompute_seconds'])}; "
        f"recomputed ops {ta['recomputed_ops']} -> {tb['recomputed_ops']}",
        file=out,
    )
    pairs, only_a, only_b = match_nodes(a["nodes"], b["nodes"])
    changed = [(x, y) for x, y in pairs if x["decision"] != y["decision"]]
    reason_only = sum(1 for x, y in pairs if x["decision"] == y["decision"] and x["reason"] != y["reason"])
    renamed = sum(1 for x, y in pairs if x["name"] != y["name"])
    transitions = collections.Counter(f"{x['decision']} -> {y['decision']}" for x, y in changed)
    print(
        f"{len(changed)} decisions changed"
        + (f" ({', '.join(f'{c} {t}' for t, c in transitions.most_common())})" if changed else "")
        + f"; {reason_only} kept their decision with a new reason; {renamed} nodes matched by op+module+shape"
        + (f"; {len(only_a)} only in the first, {len(only_b)} only in the second" if only_a or only_b else ""),
        file=out,
    )

    def weight(pair):  # saved/recomputed changes first, biggest tensors first
        decisions = {pair[0]["decision"], pair[1]["decision"]}
        return (0 if SAVED in decisions else 1 if RECOMPUTED in decisions else 2, -pair[0]["bytes"], pair[0]["name"])

    changed.sort(key=weight)
    shown = changed if limit <= 0 else changed[:limit]
    if shown:
        rows = [
            (
                x["name"] if x["name"] == y["name"] else f"{x['name']} / {y['name']}",
                x["op"],
                x.get("module_path") or "-",
                _shape(x),
                fmt_bytes(x["bytes"]),
                x["decision"],
                y["decision"],
                y["reason"],
            )
            for x, y in shown
        ]
        print(
            table(
                rows,
                ("node", "op", "module", "shape", "bytes", "before", "after", "why now"),
                right=(4,),
                widths={2: 28, 3: 24, 7: 60},
            ),
            file=out,
        )
    if len(shown) < len(changed):
        print(f"... {len(changed) - len(shown)} more (--limit 0 shows all)", file=out)
    for label, nodes in (("only in the first", only_a), ("only in the second", only_b)):
        relevant = [n for n in nodes if n["decision"] in (SAVED, RECOMPUTED)]
        if relevant:
            print(
                f"{label} (saved or recomputed): "
                + ", ".join(f"{n['name']} ({n['decision']})" for n in relevant[:20])
                + (" ..." if len(relevant) > 20 else ""),
                file=out,
            )
    return len(changed)


def diff(path_a: str, path_b: str, limit: int = 40, out=None) -> int:
    out = out or sys.stdout
    graphs_a, graphs_b = find_graphs(path_a), find_graphs(path_b)
    if len(graphs_a) == 1 and len(graphs_b) == 1:
        pairs = [(graphs_a[0], graphs_b[0])]
        unpaired: list[pathlib.Path] = []
    else:
        names_b = {g.name: g for g in graphs_b}
        pairs = [(g, names_b[g.name]) for g in graphs_a if g.name in names_b]
        paired = {p for pair in pairs for p in pair}
        unpaired = [g for g in graphs_a + graphs_b if g not in paired]
    if not pairs:
        raise DumpError(
            f"no graph folders to compare: {path_a} has {[g.name for g in graphs_a]}, "
            f"{path_b} has {[g.name for g in graphs_b]}"
        )
    for ga, gb in pairs:
        print(f"== {ga}  ->  {gb}", file=out)
        if not (ga / PLAN_FILE).is_file() or not (gb / PLAN_FILE).is_file():
            print("no plan.json on one side (came from cache or was not partitioned): nothing to compare\n", file=out)
            continue
        diff_plans(load_plan(ga), load_plan(gb), limit=limit, out=out)
        print(file=out)
    for g in unpaired:
        print(f"no counterpart for {g}", file=out)
    return 0


# ---------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rematpass",
        description="Read the plans rematpass dumps (knob dump_dir); calibrate the cost model's rates.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{show,diff,frontier,calibrate}")
    p = sub.add_parser("show", help="summary and the largest saved tensors of each graph")
    p.add_argument("dir", help="a dump root or one graph folder")
    p.add_argument("--top", type=int, default=15, help="saved tensors to list per graph (0: all)")
    p = sub.add_parser("diff", help="which decisions changed between two runs")
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.add_argument("--limit", type=int, default=40, help="changed decisions to list per graph (0: all)")
    p = sub.add_parser("frontier", help="saved bytes against recompute cost over lambda")
    p.add_argument("dir")
    p = sub.add_parser("calibrate", help="measure matmul FLOP/s and memory bandwidth; write them to the rates file")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seconds", type=float, default=10.0, help="about how long to measure (default 10)")
    p.add_argument("--no-write", action="store_true", help="print the rates without writing the rates file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "show":
            return show(args.dir, top=args.top)
        if args.command == "diff":
            return diff(args.dir_a, args.dir_b, limit=args.limit)
        if args.command == "calibrate":
            from ..calibrate import calibrate_and_report

            return calibrate_and_report(args.device, args.seconds, write=not args.no_write)
        return show_frontier(args.dir)
    except (DumpError, ValueError) as exc:
        print(f"rematpass: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rematpass show DIR | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
