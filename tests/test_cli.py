"""The `rematpass` command: show, diff, frontier, and its errors."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import cheap_backend

import rematpass
from rematpass.inspect import cli
from rematpass.inspect.report import fmt_bytes
from rematpass.zoo import ResidualMLP

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Dump roots of ResidualMLP at the fastest plan ("a") and at memory_budget=0.1 ("b"), both with
    time_tolerance=0 (the default plan would already take the budget's plan on this small model).

    A batch of 256 rows, so activations, not weights, set the peak and the budget recomputes."""
    base = tmp_path_factory.mktemp("cli")
    for name, knobs in (("a", {"time_tolerance": 0}), ("b", {"memory_budget": 0.1, "time_tolerance": 0})):
        torch._dynamo.reset()
        torch.manual_seed(0)
        compiled = torch.compile(ResidualMLP(), backend=cheap_backend(dump_dir=str(base / name), **knobs))
        compiled(ResidualMLP.example(256)).backward()
    torch._dynamo.reset()
    return base / "a", base / "b"


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = cli.main(list(map(str, argv)))
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def plan(root: pathlib.Path) -> dict:
    return json.loads((root / "0_0" / "plan.json").read_text())


def test_show_root_and_graph_folder_print_the_same(roots):
    a, _ = roots
    code, from_root, _ = run("show", a)
    assert code == 0
    code, from_graph, _ = run("show", a / "0_0")
    assert code == 0 and from_graph == from_root


def test_show_prints_summary_and_largest_saved_first(roots):
    _, b = roots
    code, out, _ = run("show", b, "--top", "3")
    assert code == 0
    data = plan(b)
    assert out.startswith("== graph 0/0")
    assert (
        f"memory_budget 0.1: least predicted peak within the recompute that saving {fmt_bytes(data['totals']['target_bytes'])} costs"
        in out
    )
    assert f"saved:      {data['totals']['saved_tensors']} tensors" in out
    assert "forced by budget" in out  # recomputed reasons are counted
    table = out.split("Largest saved tensors")[1].split("Details:")[0]
    shown = min(3, data["totals"]["saved_tensors"])
    assert f"({shown} of {data['totals']['saved_tensors']})" in table
    rows = [line.split()[0] for line in table.strip().splitlines()[3:]]
    saved = sorted((n for n in data["nodes"] if n["decision"] == "saved"), key=lambda n: (-n["bytes"], n["name"]))
    assert rows == [n["name"] for n in saved[:3]]
    assert "report.html" in out


def test_show_all_lists_every_saved_tensor(roots):
    a, _ = roots
    code, out, _ = run("show", a, "--top", "0")
    count = plan(a)["totals"]["saved_tensors"]
    assert code == 0 and f"({count} of {count})" in out


def test_diff_between_two_budgets(roots):
    a, b = roots
    code, out, _ = run("diff", a, b, "--limit", "0")
    assert code == 0
    assert "knobs: memory_budget: None -> 0.1" in out
    pa, pb = plan(a), plan(b)
    before = {n["name"]: n["decision"] for n in pa["nodes"]}
    changed = [n for n in pb["nodes"] if before[n["name"]] != n["decision"]]
    assert changed
    assert f"{len(changed)} decisions changed" in out
    assert "saved -> recomputed" in out and "forced by the budget (the default plan saves it)" in out
    for n in changed:
        assert any(line.startswith(n["name"] + " ") for line in out.splitlines()), f"{n['name']} missing from the diff"
    # Saved/recomputed changes are listed before the rest.
    assert "0 nodes matched by op+module+shape" in out


def test_diff_limit_and_identical_runs(roots):
    a, b = roots
    code, out, _ = run("diff", a, b, "--limit", "3")
    assert code == 0 and "more (--limit 0 shows all)" in out
    code, out, _ = run("diff", a, a)
    assert code == 0 and "knobs: same" in out and "0 decisions changed" in out


def test_diff_matches_renamed_nodes_by_op_module_shape(roots, tmp_path):
    a, _ = roots
    data = plan(a)
    renamed = json.loads(json.dumps(data))
    for n in renamed["nodes"]:
        n["name"] = "r_" + n["name"]
    flipped = next(n for n in renamed["nodes"] if n["decision"] == "saved" and n["module_path"] == "blocks.2.0")
    flipped["decision"], flipped["reason"] = "recomputed", "made up for the test"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "plan.json").write_text(json.dumps(renamed))
    code, out, _ = run("diff", a / "0_0", tmp_path / "x")
    assert code == 0
    assert f"{len(data['nodes'])} nodes matched by op+module+shape" in out
    assert "1 decisions changed (1 saved -> recomputed)" in out
    assert f"{flipped['name'][2:]} / {flipped['name']}" in out
    pairs, only_a, only_b = cli.match_nodes(data["nodes"], renamed["nodes"])
    assert not only_a and not only_b
    assert all(x["name"] == y["name"][2:] for x, y in pairs), "order within op+module+shape must be kept"


def test_diff_reports_unmatched_nodes():
    a = [
        {
            "name": "x",
            "op": "aten.mm",
            "module_path": "m",
            "shape": ["2"],
            "dtype": "float32",
            "decision": "saved",
            "reason": "r",
            "bytes": 8,
        }
    ]
    b = [
        {
            "name": "y",
            "op": "aten.add",
            "module_path": "m",
            "shape": ["2"],
            "dtype": "float32",
            "decision": "saved",
            "reason": "r",
            "bytes": 8,
        }
    ]
    pairs, only_a, only_b = cli.match_nodes(a, b)
    assert pairs == [] and only_a == a and only_b == b


def test_frontier_prints_every_point(roots):
    _, b = roots
    code, out, _ = run("frontier", b)
    assert code == 0
    data = json.loads((b / "0_0" / "frontier.json").read_text())
    lines = out.strip().splitlines()
    assert lines[0].startswith("== graph 0/0") and f"{len(data['points'])} plans" in lines[0]
    rows = lines[3 : 3 + len(data["points"])]
    assert sum("chosen" in r for r in rows) == 1 and sum("default" in r for r in rows) == 1
    assert "budget target:" in out


def test_cache_hit_folder_is_shown_not_hidden(roots, tmp_path):
    a, _ = roots
    root = tmp_path / "dump"
    shutil.copytree(a / "0_0", root / "0_0")
    (root / "0_0.1").mkdir()
    (root / "0_0.1" / "CACHE_HIT.txt").write_text("rematpass: graph 0/0 came from the AOTAutograd cache.\n")
    code, out, _ = run("show", root)
    assert code == 0 and out.index("== graph 0/0  (") < out.index("came from the AOTAutograd cache")
    code, out, _ = run("frontier", root)
    assert code == 1 and "no frontier.json here (the graph came from cache)" in out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a directory"),
        (lambda p: p, "not a rematpass dump"),
        (lambda p: (p / "g").mkdir() or (p / "g" / "plan.json").write_text("{oops") and p / "g", "not valid JSON"),
        (
            lambda p: (p / "g").mkdir() or (p / "g" / "plan.json").write_text("[]") and p / "g",
            "not a rematpass.plan file",
        ),
    ],
)
def test_clear_errors(tmp_path, make, message):
    path = make(tmp_path)
    for argv in (("show", path), ("frontier", path), ("diff", path, path)):
        code, out, err = run(*argv)
        assert code == 2 and message in err and err.startswith("rematpass: error: "), (argv, err)


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_python_dash_m_and_console_script(roots):
    _, b = roots
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "rematpass", "frontier", str(b)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "chosen" in result.stdout
    script = shutil.which("rematpass")
    if script is None:
        pytest.skip("the rematpass console script is not on PATH (pip install -e .)")
    result = subprocess.run([script, "show", str(b / "missing")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no such directory" in result.stderr


def test_measured_peak_is_recorded_next_to_the_predicted_one(roots, tmp_path):
    _, b = roots
    dump = tmp_path / "b"
    shutil.copytree(b, dump)
    predicted = plan(dump)["totals"]["predicted_peak_bytes"]
    assert predicted > 0
    assert rematpass.record_measured_peak(dump, 2 * predicted) == 1
    assert plan(dump)["totals"]["measured_peak_bytes"] == 2 * predicted
    code, out, _ = run("show", dump)
    assert code == 0
    assert f"peak:       predicted {fmt_bytes(predicted)}" in out
    assert f"measured {fmt_bytes(2 * predicted)} for the step (predicted / measured 0.500)" in out
    (page,) = dump.glob("*/report.html")
    assert "predicted / measured 0.500" in page.read_text()
    with pytest.raises(ValueError, match="peak_bytes"):
        rematpass.record_measured_peak(dump, -1)


def test_a_byte_cap_dump_marks_kept_and_discarded_attempts(tmp_path):
    """Under a byte cap the backend compiles attempts until one fits Inductor's schedule; show, the
    page and record_measured_peak must tell the kept plan from the ones only compiled to check."""
    import dataclasses

    from rematpass.inspect import dump
    from rematpass.verify import VerifyAttempt

    cap = 300_000
    torch.manual_seed(0)
    compiled = torch.compile(ResidualMLP(), backend=cheap_backend(dump_dir=str(tmp_path), memory_budget=cap))
    compiled(ResidualMLP.example(256)).backward()
    report = rematpass.recent_reports()[-1]
    discarded, kept = tmp_path / "0_0", tmp_path / "0_0.1"
    shutil.copytree(discarded, kept)
    over = VerifyAttempt(cap, report.predicted_peak_bytes, cap + 50_000, report.saved_bytes)
    under = VerifyAttempt(cap - 1, report.predicted_peak_bytes, cap - 10_000, report.saved_bytes)
    dump.write_scheduled(discarded, dataclasses.replace(report, scheduled_peak_bytes=cap + 50_000), kept=False)
    dump.write_scheduled(
        kept, dataclasses.replace(report, scheduled_peak_bytes=cap - 10_000, verification=(over, under)), kept=True
    )

    code, out, _ = run("show", tmp_path)
    assert code == 0
    first, second = out.split("== graph")[1:]
    assert "[DISCARDED" in first and f"memory_budget {fmt_bytes(cap)} (peak cap): NOT met" in first
    assert "[KEPT" in second and "of 2 compiled" in second
    assert f"memory_budget {fmt_bytes(cap)} (peak cap): met by Inductor's scheduled peak" in second
    import html

    card = re.search(
        r'<div class="k">memory budget</div><div class="v">(.*?)</div><div class="d">(.*?)</div>',
        (kept / "report.html").read_text(),
    )
    assert card is not None
    assert card.group(1) == fmt_bytes(cap) and html.unescape(card.group(2)).startswith(
        "met by Inductor's scheduled peak"
    )

    assert rematpass.record_measured_peak(tmp_path, 123_456) == 1
    assert cli.load_plan(kept)["totals"]["measured_peak_bytes"] == 123_456
    assert "measured_peak_bytes" not in cli.load_plan(discarded)["totals"]
