"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

It shows the summary, the memory/recompute frontier as an SVG chart, the
largest saved tensors, and every saved or recomputed node grouped by the
module that produced it, biggest saved tensors first.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import math
from typing import Any

from ..budget import Fraction, PeakCap, budget_from_json
from .report import (
    RECOMPUTED,
    SAVED,
    budget_text,
    chunked_head_summary,
    chunking,
    fmt_bytes,
    fmt_count,
    fmt_measured_peak,
    fmt_seconds,
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
  padding:0 16px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}
.card .k{color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.04em}.card .v{font-size:19px;font-weight:600}
.card .d{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f3;font-weight:600;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;white-space:nowrap}
.saved{background:#e3effd;color:#1a4f8b}.recomputed{background:#fdecd8;color:#8a4b08}
details{background:#fff;border:1px solid #ddd;border-radius:6px;margin:8px 0}
summary{cursor:pointer;padding:6px 10px;font-weight:600}summary .d{font-weight:400;color:#666;margin-left:8px}
details table{border-top:1px solid #ddd}
.kn td:first-child{color:#666;width:220px}
td code,td.nw{white-space:nowrap}
td.src{color:#666;font-size:12px;min-width:160px;max-width:340px}td.src code{white-space:pre-wrap;overflow-wrap:break-word}
td.why{min-width:220px}
.more{color:#666;font-size:12px}
.warn{background:#fff4e5;border:1px solid #f0c36d;border-radius:6px;padding:8px 12px;margin:10px 0}
svg text{font:12px system-ui,sans-serif;fill:#333}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _peak_detail(totals: dict) -> str:
    where = f"at {totals['predicted_peak_at']}" if totals.get("predicted_peak_at") else ""
    return "; ".join(part for part in (where, fmt_measured_peak(totals)) if part)


def _card(key: str, value: str, detail: str = "") -> str:
    return f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div><div class="d">{_e(detail)}</div></div>'


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


BYTE_UNITS = (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10), ("B", 1.0))
TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


def pick_unit(largest: float, units) -> tuple[str, float]:
    """The largest unit in which ``largest`` is at least 1."""
    for name, scale in units:
        if largest >= scale:
            return name, scale
    return units[-1]


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The chart's pixel box and the data range it shows; ``sx``/``sy`` map data to pixels (y grows downwards)."""

    width: int
    height: int
    x_hi: float
    y_hi: float
    left: int = 70
    right: int = 20
    top: int = 20
    bottom: int = 50

    def sx(self, x: float) -> float:
        return self.left + (self.width - self.left - self.right) * x / self.x_hi

    def sy(self, y: float) -> float:
        return self.height - self.bottom - (self.height - self.top - self.bottom) * y / self.y_hi


def frontier_svg(frontier: dict[str, Any], width: int = 720, height: int = 360) -> str:
    """The frontier as an inline SVG: saved MiB (x) against estimated recompute µs (y)."""
    points = frontier.get("points") or []
    if not points:
        return "<p>No frontier points.</p>"
    target = frontier.get("target_bytes")
    target = target if isinstance(target, (int, float)) else None
    x_unit, x_scale = pick_unit(max([p["saved_bytes"] for p in points] + [target or 0]), BYTE_UNITS)
    y_unit, y_scale = pick_unit(max(p["recompute_seconds"] for p in points), TIME_UNITS)
    xs = [p["saved_bytes"] / x_scale for p in points]
    ys = [p["recompute_seconds"] / y_scale for p in points]
    x_hi = max(xs + ([target / x_scale] if target is not None else [])) or 1.0
    y_hi = max(ys) or 1.0
    # Headroom, so the largest point and its markers are not cut by the frame.
    frame = _Frame(width, height, x_hi * 1.05, y_hi * 1.08)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="memory recompute frontier" style="background:#fff;border:1px solid #ddd;border-radius:6px">',
        _svg_grid(frame),
        _svg_axes(frame, x_unit, y_unit),
    ]
    if target is not None:
        out.append(_svg_budget_line(frame, target / x_scale))
    out.append(_svg_points(frame, xs, ys, points))
    out.append(_svg_legend(frame))
    out.append("</svg>")
    return "".join(out)


def _svg_grid(f: _Frame) -> str:
    """Light grid lines at round values of both axes, each labelled with its value."""
    out = []
    for t in _ticks(0, f.x_hi):
        out.append(
            f'<line x1="{f.sx(t):.1f}" y1="{f.top}" x2="{f.sx(t):.1f}" y2="{f.height - f.bottom}" stroke="#eee"/>'
            f'<text x="{f.sx(t):.1f}" y="{f.height - f.bottom + 16}" text-anchor="middle">{t:g}</text>'
        )
    for t in _ticks(0, f.y_hi):
        out.append(
            f'<line x1="{f.left}" y1="{f.sy(t):.1f}" x2="{f.width - f.right}" y2="{f.sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{f.left - 6}" y="{f.sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    return "".join(out)


def _svg_axes(f: _Frame, x_unit: str, y_unit: str) -> str:
    return (
        f'<line x1="{f.left}" y1="{f.height - f.bottom}" x2="{f.width - f.right}" y2="{f.height - f.bottom}" stroke="#555"/>'
        f'<line x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{f.height - f.bottom}" stroke="#555"/>'
        f'<text x="{(f.left + f.width - f.right) / 2}" y="{f.height - 10}" text-anchor="middle">'
        f"saved activation memory ({x_unit})</text>"
        f'<text transform="translate(16 {(f.top + f.height - f.bottom) / 2}) rotate(-90)" text-anchor="middle">'
        f"estimated recompute time ({y_unit})</text>"
    )


def _svg_budget_line(f: _Frame, x: float) -> str:
    """A dashed vertical line at the budget's target bytes (``x`` in the x axis' unit)."""
    tx = f.sx(x)
    return (
        f'<line x1="{tx:.1f}" y1="{f.top}" x2="{tx:.1f}" y2="{f.height - f.bottom}" '
        f'stroke="#888" stroke-dasharray="5 4"/><text x="{tx + 4:.1f}" y="{f.top + 12}">budget</text>'
    )


def _svg_points(f: _Frame, xs: list[float], ys: list[float], points: list[dict[str, Any]]) -> str:
    """The hull as a line through its points, every point as a dot with a tooltip, the default and chosen marked."""
    line = " ".join(f"{f.sx(x):.1f},{f.sy(y):.1f}" for x, y, p in zip(xs, ys, points) if p.get("hull", True))
    out = [f'<polyline points="{line}" fill="none" stroke="#3465a4" stroke-width="2"/>']
    for x, y, p in zip(xs, ys, points):
        cx, cy = f.sx(x), f.sy(y)
        tip = (
            f"lambda {p['lam']:.3g}: saves {fmt_bytes(p['saved_bytes'])} in {p['saved_tensors']} tensors, "
            f"recomputes {p['recomputed_ops']} ops ({fmt_seconds(p['recompute_seconds'])})"
        )
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#3465a4"><title>{_e(tip)}</title></circle>')
        if p.get("default"):
            out.append(
                f'<rect x="{cx - 7:.1f}" y="{cy - 7:.1f}" width="14" height="14" fill="none" stroke="#4e9a06" stroke-width="2.5"/>'
            )
        if p.get("chosen"):
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="10" fill="none" stroke="#cc0000" stroke-width="2.5"/>')
    return "".join(out)


def _svg_legend(f: _Frame) -> str:
    """A key in the top right corner, drawing each marker as the chart does."""
    lx, ly = f.width - f.right - 170, f.top + 8
    return (
        f'<rect x="{lx - 8}" y="{ly - 4}" width="172" height="62" fill="#fff" stroke="#ddd"/>'
        f'<circle cx="{lx + 6}" cy="{ly + 8}" r="4" fill="#3465a4"/><text x="{lx + 18}" y="{ly + 12}">min-cut plan (hull)</text>'
        f'<rect x="{lx - 1}" y="{ly + 20}" width="14" height="14" fill="none" stroke="#4e9a06" stroke-width="2.5"/>'
        f'<text x="{lx + 18}" y="{ly + 31}">default plan</text>'
        f'<circle cx="{lx + 6}" cy="{ly + 46}" r="7" fill="none" stroke="#cc0000" stroke-width="2.5"/>'
        f'<text x="{lx + 18}" y="{ly + 50}">chosen plan</text>'
    )


def _node_row(n: dict[str, Any], with_module: bool) -> str:
    cls = "saved" if n["decision"] == SAVED else "recomputed"
    src = n.get("source") or ""
    short = src.rsplit("/", 1)[-1]
    module = f"<td><code>{_e(n.get('module_path') or '(top level)')}</code></td>" if with_module else ""
    return (
        f'<tr><td><span class="badge {cls}">{_e(n["decision"])}</span></td><td><code>{_e(n["name"])}</code></td>'
        f'<td><code>{_e(n["op"])}</code></td><td class="nw"><code>{_e("[" + ", ".join(n["shape"]) + "]")}</code> {_e(n["dtype"])}</td>'
        f'<td class="n">{_e(fmt_bytes(n["bytes"]))}</td><td class="n">{_e(fmt_count(n["flops"]))}</td>'
        f'<td class="n">{_e(fmt_seconds(n.get("recompute_seconds")))}</td>{module}<td class="why">{_e(n["reason"])}</td>'
        f'<td class="src" title="{_e(src)}">{_e(short)}<br><code>{_e(n.get("source_code", ""))}</code></td></tr>'
    )


def _table(nodes: list[dict[str, Any]], with_module: bool = False) -> str:
    head = (
        "<tr><th>decision</th><th>node</th><th>op</th><th>shape / dtype</th><th>bytes</th><th>FLOPs</th>"
        "<th>recompute cost</th>" + ("<th>module</th>" if with_module else "") + "<th>why</th><th>source</th></tr>"
    )
    return "<table>" + head + "".join(_node_row(n, with_module) for n in nodes) + "</table>"


def _by_size(n: dict[str, Any]) -> tuple:
    return (n["decision"] != SAVED, -n["bytes"], n["name"])


def _groups(nodes: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    others: collections.Counter = collections.Counter()
    types: dict[str, str] = {}
    for n in nodes:
        path = n.get("module_path") or ""
        types.setdefault(path, n.get("module_type") or "")
        if n["decision"] in (SAVED, RECOMPUTED):
            groups[path].append(n)
        else:
            others[path] += 1
    order = sorted(groups, key=lambda p: (-sum(n["bytes"] for n in groups[p] if n["decision"] == SAVED), p))
    parts = []
    for path in order:
        members = sorted(groups[path], key=_by_size)
        saved = [n for n in members if n["decision"] == SAVED]
        recomputed = [n for n in members if n["decision"] == RECOMPUTED]
        title = path or "(top level)"
        kind = f" ({types[path]})" if types.get(path) else ""
        detail = f"saved {len(saved)} ({fmt_bytes(sum(n['bytes'] for n in saved))}), recomputed {len(recomputed)}" + (
            f", {others[path]} other nodes" if others[path] else ""
        )
        parts.append(
            f'<details open><summary><code>{_e(title)}</code>{_e(kind)}<span class="d">{_e(detail)}</span>'
            f"</summary>{_table(members)}</details>"
        )
    return "".join(parts) or "<p>Nothing saved or recomputed.</p>"


def _budget_value(budget: Any) -> str:
    """The card's headline for ``plan.json``'s ``budget`` (rematpass.budget)."""
    if isinstance(budget, PeakCap):
        return fmt_bytes(budget.bytes)
    if isinstance(budget, Fraction):
        return f"{budget.value:g}"
    return "none"


def render_html(
    plan: dict[str, Any], frontier: dict[str, Any] | None = None, top: int = 15, scheduled: dict[str, Any] | None = None
) -> str:
    """The page for one graph's plan.json (and frontier.json, scheduled.json) data."""
    gid = plan.get("compile_id") or "(no compile id)"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>rematpass plan, graph {_e(gid)}</title><style>{_CSS}</style></head><body>"
        f"<h1>rematpass plan &mdash; graph {_e(gid)}</h1>"
        f'<div class="sub">{_e(plan.get("summary", ""))}</div>{_budget_warning(plan["totals"])}'
        f'<div class="cards">{"".join(_summary_cards(plan, scheduled))}</div>'
        f"<h2>Memory / recompute frontier</h2>{_frontier_section(frontier)}"
        f"<h2>Largest saved tensors</h2>{_largest_saved(plan['nodes'], top)}"
        f"<h2>Saved and recomputed, by module</h2>{_groups(plan['nodes'])}"
        f'<h2>Knobs and machine</h2><table class="kn">{_knob_rows(plan)}</table>'
        "</body></html>\n"
    )


def _summary_cards(plan: dict[str, Any], scheduled: dict[str, Any] | None) -> list[str]:
    """The row of cards at the top: what is saved and recomputed, the peak, the budget, lambda, solver and graph."""
    totals, graph = plan["totals"], plan.get("graph", {})
    # budget_text reads "memory_budget <value>: <detail>"; the card's title and headline already give the value.
    budget_detail = budget_text(plan, scheduled).split(": ", 1)[-1]
    return [
        _card("saved", fmt_bytes(totals["saved_bytes"]), _saved_detail(totals)),
        _card(
            "recomputed",
            f"{totals['recomputed_ops']} ops",
            f"{fmt_count(totals['recompute_flops'], 'FLOP')}, est. {fmt_seconds(totals['recompute_seconds'])}",
        ),
        _card("peak", fmt_bytes(totals.get("predicted_peak_bytes")) + " predicted", _peak_detail(totals)),
        _card("memory budget", _budget_value(budget_from_json(plan.get("budget"))), budget_detail),
        _card(
            "lambda",
            f"{totals['lambda']:.3g}",
            f"default {totals['lambda_default']:.3g} (bytes per second of recompute)",
        ),
        _card(
            "solver",
            f"{totals['num_solves']} max-flow solves",
            f"{fmt_seconds(totals['solve_seconds'])} solving, {fmt_seconds(totals['total_seconds'])} in all",
        ),
        _card(
            "graph",
            f"{graph.get('candidates', '?')} candidates",
            f"joint {graph.get('joint_nodes', '?')}, forward {graph.get('forward_nodes', '?')}, "
            f"backward {graph.get('backward_nodes', '?')} nodes",
        ),
        *[_loss_head_card(head) for head in totals.get("loss_heads") or ()],
        *([_check_card(scheduled)] if (scheduled or {}).get("attempts") else []),
    ]


def _check_card(scheduled: dict[str, Any]) -> str:
    """The budget's check: how many plans it tried on Inductor's schedule, and what that cost."""
    probes = scheduled.get("schedule_probes") or 0
    detail = f"{len(scheduled['attempts'])} plans checked on Inductor's schedule"
    if probes:
        detail += f", {probes} probed without compiling ({fmt_seconds(scheduled.get('schedule_probe_seconds') or 0)})"
    return _card("compiles", str(scheduled.get("compiles", len(scheduled["attempts"]))), detail)


def _loss_head_card(head: dict[str, Any]) -> str:
    """A cross-entropy over an LM head: chunked (how, and the whole tensor it no longer holds), or why not."""
    if not head.get("chunked"):
        return _card("loss head", "left whole", head.get("reason", ""))
    return _card("loss head", chunking(head), f"{chunked_head_summary(head)}; loss and gradients formed per chunk")


def _saved_detail(totals: dict[str, Any]) -> str:
    """The saved card's detail: the tensor count, and what the default plan and torch.compile's partitioner save."""
    default_bytes, inductor_bytes = totals.get("default_saved_bytes"), totals.get("inductor_saved_bytes")
    return (
        f"{totals['saved_tensors']} tensors"
        + (f" (default plan: {fmt_bytes(default_bytes)})" if default_bytes is not None else "")
        + (f" (torch.compile's partitioner: {fmt_bytes(inductor_bytes)})" if inductor_bytes is not None else "")
    )


def _budget_warning(totals: dict[str, Any]) -> str:
    if totals.get("budget_met") is False:
        return (
            '<div class="warn">The memory budget cannot be met on this graph: this is the least-memory plan '
            "the min-cut finds.</div>"
        )
    return ""


def _frontier_section(frontier: dict[str, Any] | None) -> str:
    """A sentence on how to read the chart, then the chart."""
    if not frontier:
        return "<p>No frontier.json.</p>"
    note = "" if frontier.get("complete", True) else " (walk stopped early: solve or time limit)"
    return (
        f"<p>Each point is the plan minimising <i>saved bytes + lambda &times; recompute time</i> for some lambda; "
        f"{len(frontier['points'])} plans from {frontier['num_solves']} max-flow solves{_e(note)}. "
        "Green square: the default plan (lambda = bytes per second). Red ring: the plan used.</p>"
        + frontier_svg(frontier)
    )


def _largest_saved(nodes: list[dict[str, Any]], top: int) -> str:
    """The ``top`` largest saved tensors in one table; the rest appear only in the per-module sections."""
    saved = sorted((n for n in nodes if n["decision"] == SAVED), key=_by_size)
    more = f'<p class="more">{len(saved) - top} more below, by module.</p>' if len(saved) > top else ""
    return (_table(saved[:top], with_module=True) if saved else "<p>Nothing saved.</p>") + more


def _knob_rows(plan: dict[str, Any]) -> str:
    """The knobs the plan was made with, then the machine figures and versions it was made on."""
    machine = plan.get("machine", {})
    rows = list(plan.get("knobs", {}).items()) + [
        ("device", machine.get("device")),
        ("flops_per_second (used)", machine.get("flops_per_second")),
        ("bytes_per_second (used)", machine.get("bytes_per_second")),
        ("torch", plan.get("torch_version")),
        ("rematpass", plan.get("rematpass_version")),
        ("written", plan.get("created")),
    ]
    return "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
