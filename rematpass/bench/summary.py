"""``python -m rematpass.bench.summary DIR [DIR ...]``: what a run of the bench says about the plans' accuracy.

For each ``DIR/results.json`` (``python -m rematpass.bench --out DIR``, finished or stopped
part-way: the bench rewrites it after every model), one line per variant with the measured
peak next to rematpass's predicted peak, the step time against inductor's and the gradient
check, then a count of gradient mismatches and failed variants. ``benchmarks/gpu_check.sh``
ends with it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from .output import _mib, _ratio, _seconds

HEAD = (
    "variant",
    "measured peak",
    "predicted peak",
    "predicted / measured",
    "scheduled / measured",
    "step vs inductor",
    "compile",
    "partition",
    "partition host peak",
    "grads",
)


def _row(r: dict[str, Any]) -> tuple[str, ...]:
    if "error" in r:
        return (r["name"], "FAILED", *[""] * (len(HEAD) - 3), r["error"][:80])
    measured = r.get("peak_bytes")
    reports = r.get("remat_reports") or {}
    predicted = reports.get("predicted_peak_bytes")

    def over_measured(key: str) -> str:
        value = reports.get(key)
        return _ratio(value / measured) if value and measured else "-"

    grads = r.get("grads") or {}
    err = grads.get("max_rel_err")
    return (
        r["name"],
        _mib(measured),
        _mib(predicted),
        over_measured("predicted_peak_bytes"),
        over_measured("scheduled_peak_bytes"),
        _ratio(r.get("step_ratio")),
        _seconds(r.get("compile_seconds")),
        _seconds(r.get("partition_seconds")),
        _mib(r.get("partition_peak_host_bytes")),
        grads.get("status", "-") + (f" ({err:.0e})" if err is not None and grads.get("status") != "reference" else ""),
    )


def summarize(results: dict[str, Any], where: str = "") -> list[str]:
    machine = results.get("machine", {})
    device = results.get("device", "?") + (f" ({machine['gpu']})" if machine.get("gpu") else "")
    config = results.get("config", {})
    lines = [f"{where or 'results'}: device {device}, size {config.get('size')}, {config.get('steps')} timing rounds"]
    mismatches = failures = variants = 0
    for model in results.get("models", []):
        rows = [HEAD] + [_row(r) for r in model["variants"]]
        widths = [max(len(row[k]) for row in rows) for k in range(len(HEAD))]
        lines.append(f"  {model['name']}: {model['description']}")
        lines += [
            "    " + "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths)))
            for row in rows
        ]
        for r in model["variants"]:
            variants += 1
            failures += "error" in r
            mismatches += (r.get("grads") or {}).get("status") == "MISMATCH"
    if not results.get("models"):
        lines.append("  no model finished")
    lines.append(f"  {variants} variants: {mismatches} gradient mismatches, {failures} failed")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rematpass.bench.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a --out folder of python -m rematpass.bench")
    args = parser.parse_args(argv)
    for folder in args.dirs:
        path = pathlib.Path(folder) / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"{folder}: no results ({type(exc).__name__}: the run stopped before its first model finished?)")
            continue
        print("\n".join(summarize(results, folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
