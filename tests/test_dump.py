"""Dumps (knob dump_dir): folder layout, each file's schema, the HTML page, cache-hit notes, logging."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import cheap_backend

import rematpass
from rematpass.inspect import dump
from rematpass.inspect.report import (
    BACKWARD,
    CHEAPER_TO_RECOMPUTE,
    CHEAPER_TO_SAVE,
    INPUT_DECISION,
    NOT_NEEDED,
    RECOMPUTED,
    SAVED,
)
from rematpass.zoo import ConvBN, ResidualMLP

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
DECISIONS = {SAVED, RECOMPUTED, BACKWARD, NOT_NEEDED, INPUT_DECISION}
REASON_KINDS = {
    "must_save",
    "user_policy",
    "checkpoint_policy",
    "cheaper_to_save",
    "cheaper_to_recompute",
    "forced_by_budget",
    "for_lower_peak",
    "cannot_save",
    "backward_only",
    "not_needed",
    "input",
}
NODE_FIELDS = {
    "name",
    "op",
    "shape",
    "dtype",
    "bytes",
    "flops",
    "recompute_seconds",
    "time_seconds",
    "decision",
    "reason",
    "reason_kind",
    "module_path",
    "module_type",
    "source",
    "source_code",
}


def _compile(dump_dir, model=ResidualMLP, **knobs):
    torch._dynamo.reset()
    rematpass.clear_reports()
    torch.manual_seed(0)
    module = model()
    compiled = torch.compile(module, backend=cheap_backend(dump_dir=str(dump_dir), **knobs))
    compiled(module.example()).backward()
    reports = rematpass.recent_reports()
    assert len(reports) == 1
    return reports[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ResidualMLP dumped at the fastest plan (time_tolerance=0: one min-cut, the reference every
    budget is read against) and at memory_budget=0.1: {name: (root, report)}."""
    root = tmp_path_factory.mktemp("dumps")
    out = {}
    for name, knobs in (("default", {"time_tolerance": 0}), ("budget", {"memory_budget": 0.1})):
        out[name] = (root / name, _compile(root / name, **knobs))
    torch._dynamo.reset()
    return out


def _graph(runs, name) -> pathlib.Path:
    (folder,) = [p for p in runs[name][0].iterdir() if p.is_dir()]
    return folder


def _plan(runs, name) -> dict:
    return json.loads((_graph(runs, name) / "plan.json").read_text())


def _frontier(runs, name) -> dict:
    return json.loads((_graph(runs, name) / "frontier.json").read_text())


def test_one_folder_per_graph_named_by_compile_id(runs):
    folder = _graph(runs, "default")
    assert folder.name == "0_0"
    names = {p.name for p in folder.iterdir()}
    assert {"joint.py", "forward.py", "backward.py", "plan.json", "frontier.json", "report.html"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    assert runs["default"][1].compile_id == "0/0"


def test_graph_code_is_readable_python_with_shapes(runs):
    folder = _graph(runs, "default")
    report = runs["default"][1]
    for name in ("joint.py", "forward.py", "backward.py"):
        text = (folder / name).read_text()
        ast.parse(text)  # print_readable output is Python
        assert re.search(r'"f32\[256, 32\]\[32, 1\]cpu"', text), f"{name} lacks shapes, strides and dtypes"
        assert "# File: " in text and "zoo.py" in text, f"{name} lacks source lines"
    joint = (folder / "joint.py").read_text()
    assert "tangents_1" in joint  # the joint graph, not the forward
    header = joint.splitlines()[2]
    assert header.startswith("# saved: ")
    assert set(header[len("# saved: ") :].split(", ")) == {n.name for n in report.saved_nodes()}
    assert "tangents_1" not in (folder / "forward.py").read_text()


def test_plan_json_schema_and_totals(runs):
    plan = _plan(runs, "default")
    report = runs["default"][1]
    assert plan["schema"] == "rematpass.plan" and plan["schema_version"] == dump.SCHEMA_VERSION
    assert plan["compile_id"] == "0/0"
    assert plan["torch_version"] == torch.__version__
    assert plan["knobs"]["memory_budget"] is None and plan["knobs"]["strict"] is True
    assert plan["machine"]["device"] == "cpu" and plan["machine"]["bytes_per_second"] > 0
    graph = plan["graph"]
    assert graph["candidates"] == len(plan["nodes"]) == report.num_joint_candidates
    assert graph["joint_nodes"] > graph["candidates"] > 0 and graph["forward_nodes"] > 0 and graph["backward_nodes"] > 0
    assert graph["parameters_and_buffers"] == 26  # 4 blocks x 6 + head weight and bias
    totals = plan["totals"]
    assert totals["saved_bytes"] == report.saved_bytes > 0
    assert totals["saved_tensors"] == len(report.saved_nodes())
    assert totals["recompute_flops"] == report.recompute_flops
    assert totals["lambda"] == totals["lambda_default"] == report.lam
    assert totals["num_solves"] == 1 and totals["solve_seconds"] > 0 and totals["target_bytes"] is None
    assert totals["default_saved_bytes"] is None
    for node in plan["nodes"]:
        assert set(node) == NODE_FIELDS
        assert node["decision"] in DECISIONS and node["reason_kind"] in REASON_KINDS and node["reason"]
        assert isinstance(node["shape"], list) and isinstance(node["bytes"], int)
    # The saved bytes are the saved activations: graph inputs kept for the backward exist before
    # the step and cost nothing.
    kept_inputs = [
        n for n in plan["nodes"] if n["decision"] == INPUT_DECISION and n["reason"].endswith("kept for the backward")
    ]
    saved = [n for n in plan["nodes"] if n["decision"] == SAVED]
    assert kept_inputs and sum(n["bytes"] for n in saved) == totals["saved_bytes"]


def test_nodes_know_their_module_and_source_line(runs):
    nodes = _plan(runs, "default")["nodes"]
    saved = [n for n in nodes if n["decision"] == SAVED]
    in_blocks = [n for n in saved if n["module_path"].startswith("blocks.")]
    assert in_blocks, "no saved node names its module"
    assert {n["module_type"] for n in in_blocks} <= {"LayerNorm", "Linear", "GELU"}
    assert all(re.fullmatch(r"blocks\.[0-3]\.[0-3]", n["module_path"]) for n in in_blocks)
    lines = {n["source"] for n in saved}
    import inspect

    from rematpass import zoo

    forward, first = inspect.getsourcelines(zoo.ResidualMLP.forward)
    residual = first + next(i for i, line in enumerate(forward) if line.strip() == "x = x + block(x)")
    assert lines and all(s.endswith(f"rematpass/zoo.py:{residual}") for s in lines), lines
    assert {n["source_code"] for n in saved} == {"x = x + block(x)"}
    head = [n for n in nodes if n["module_path"] == "head"]
    assert head and all(n["module_type"] == "Linear" for n in head)


def test_budget_reasons_tell_forced_from_chosen(runs):
    default = {n["name"]: n for n in _plan(runs, "default")["nodes"]}
    budget = _plan(runs, "budget")
    assert budget["totals"]["target_bytes"] is not None and budget["totals"]["budget_met"]
    assert budget["totals"]["default_saved_bytes"] == _plan(runs, "default")["totals"]["saved_bytes"]
    forced = [n for n in budget["nodes"] if n["reason_kind"] == "forced_by_budget"]
    assert forced, "a 0.1 budget on ResidualMLP must force some recomputation"
    for n in forced:
        assert n["decision"] == RECOMPUTED
        assert default[n["name"]]["decision"] == SAVED, f"{n['name']} is 'forced' but the default plan does not save it"
    # Recomputed nodes the default plan did not save are recomputed for their own sake.
    for n in budget["nodes"]:
        if n["decision"] == RECOMPUTED and default[n["name"]]["decision"] != SAVED:
            assert n["reason_kind"] != "forced_by_budget"
    assert not any(n["reason_kind"] == "forced_by_budget" for n in default.values())
    assert any(n["reason_kind"] == CHEAPER_TO_RECOMPUTE for n in budget["nodes"])
    assert all(n["reason_kind"] == CHEAPER_TO_SAVE for n in budget["nodes"] if n["decision"] == SAVED)


def test_user_policy_is_named_as_the_reason(tmp_path):
    # A convolution's output feeds BatchNorm's backward: banned from recomputation, it must be saved.
    report = _compile(tmp_path, model=ConvBN, memory_budget=0.0, never_recompute=["aten.convolution"])
    convs = [n for n in report.nodes if n.op == "aten.convolution" and n.decision == SAVED]
    assert convs and all(n.reason_kind == "user_policy" and "never_recompute" in n.reason for n in convs)


def test_frontier_walks_the_hull(runs):
    for name in ("default", "budget"):
        data = _frontier(runs, name)
        plan = _plan(runs, name)
        assert data["schema"] == "rematpass.frontier" and data["complete"]
        points = data["points"]
        assert len(points) >= 3 and data["num_solves"] >= len(points) - 1
        assert {
            "lam",
            "saved_bytes",
            "recompute_seconds",
            "recompute_flops",
            "saved_tensors",
            "recomputed_ops",
            "default",
            "chosen",
            "hull",
        } <= set(points[0])
        # A budget may choose a plan that ties at a hull breakpoint: on a hull edge, not a vertex.
        assert all(p["hull"] or p["chosen"] for p in points)
        for below, off, above in zip(points, points[1:], points[2:]):
            if not off["hull"]:
                share = (off["saved_bytes"] - below["saved_bytes"]) / (above["saved_bytes"] - below["saved_bytes"])
                on_edge = below["recompute_seconds"] + share * (above["recompute_seconds"] - below["recompute_seconds"])
                assert off["recompute_seconds"] == pytest.approx(on_edge, rel=1e-6)
        points = [p for p in points if p["hull"]]
        saved = [p["saved_bytes"] for p in points]
        cost = [p["recompute_seconds"] for p in points]
        assert saved == sorted(saved) and len(set(saved)) == len(saved)
        assert all(a > b for a, b in zip(cost, cost[1:])), "more memory must buy less recompute on the hull"
        (chosen,) = [p for p in data["points"] if p["chosen"]]
        (default,) = [p for p in points if p["default"]]
        assert chosen["saved_bytes"] == plan["totals"]["saved_bytes"]
        assert chosen["recompute_flops"] == plan["totals"]["recompute_flops"]
        assert default["saved_bytes"] == _plan(runs, "default")["totals"]["saved_bytes"]
    budget = _frontier(runs, "budget")
    (chosen,) = [p for p in budget["points"] if p["chosen"]]
    assert chosen["saved_bytes"] < _plan(runs, "default")["totals"]["saved_bytes"]
    assert (
        _plan(runs, "budget")["totals"]["predicted_peak_bytes"]
        < _plan(runs, "default")["totals"]["predicted_peak_bytes"]
    )
    # Every hull solve is listed; filling in a hull edge costs one more max-flow each, not a hull point.
    assert 2 <= len(budget["budget_search"]) <= _plan(runs, "budget")["totals"]["num_solves"]


# CI installs matplotlib (the plot extra) and Chromium, so there these two tests must run, not skip.
IN_CI = bool(os.environ.get("CI"))


def test_frontier_png_when_matplotlib_is_installed(runs):
    if not IN_CI:
        pytest.importorskip("matplotlib")
    png = _graph(runs, "budget") / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_html_is_self_contained_and_ordered(runs):
    page = (_graph(runs, "budget") / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    assert page.count("<svg") == 1 and "<polyline" in page
    assert "forced by the budget" in page and "memory_budget" in page
    assert "<code>blocks.0.0</code> (LayerNorm)" in page
    # Largest saved tensors: biggest first.
    section = page.split("<h2>Largest saved tensors</h2>")[1].split("<h2>")[0]
    sizes = [
        _parse_size(s) for s in re.findall(r'<td class="n">([0-9.]+ (?:B|KiB|MiB|GiB))</td><td class="n">', section)
    ]
    assert sizes and sizes == sorted(sizes, reverse=True)
    # Groups: by module, the group saving the most bytes first.
    groups = re.findall(r"<summary><code>([^<]+)</code>[^<]*<span class=\"d\">saved \d+ \(([^)]+)\)", page)
    group_bytes = [_parse_size(b) for _, b in groups]
    assert groups and group_bytes == sorted(group_bytes, reverse=True)


def _parse_size(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


@pytest.mark.skipif(
    not IN_CI and not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium (apt-get install chromium)"
)
def test_report_html_renders_in_headless_chromium(runs, tmp_path):
    page = _graph(runs, "budget") / "report.html"
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=60,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000, "the screenshot is nearly blank"
    dom = subprocess.run(
        flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert "Memory / recompute frontier" in dom and "<svg" in dom and "forced by the budget" in dom


def test_names_are_unique_and_filesystem_safe(tmp_path):
    assert dump.safe_name("0/0") == "0_0"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", dump.safe_name("!0/1/2 [attempt: 3]"))
    first = dump.claim_graph_dir(tmp_path, "0/0")
    second = dump.claim_graph_dir(tmp_path, "0/0")
    assert (first.name, second.name) == ("0_0", "0_0.1")
    anonymous = [dump.claim_graph_dir(tmp_path, None) for _ in range(2)]
    assert all(p.name.startswith("graph_") for p in anonymous) and anonymous[0] != anonymous[1]


def test_same_compile_id_twice_in_one_process_keeps_both(tmp_path):
    _compile(tmp_path)
    _compile(tmp_path, memory_budget=0.5)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0_0", "0_0.1"]
    budgets = [json.loads((tmp_path / n / "plan.json").read_text())["knobs"]["memory_budget"] for n in names]
    assert budgets == [None, 0.5]


def test_a_failing_dump_warns_and_training_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dump, "write_dump", broken)
    with pytest.warns(dump.RematDumpWarning, match="disk full"):
        report = _compile(tmp_path)
    assert report.saved_nodes()


def test_plan_is_a_structured_trace_artifact_even_without_dump_dir(monkeypatch):
    calls = []
    monkeypatch.setattr(torch._logging, "trace_structured", lambda name, *args, **kw: calls.append((name, kw)))
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = torch.compile(ResidualMLP(), backend=cheap_backend())
    compiled(ResidualMLP.example()).backward()
    ours = [
        kw
        for name, kw in calls
        if name == "artifact" and "metadata_fn" in kw and kw["metadata_fn"]().get("name") == "remat_plan"
    ]
    assert len(ours) == 1
    assert ours[0]["metadata_fn"]() == {"name": "remat_plan", "encoding": "json"}
    payload = json.loads(ours[0]["payload_fn"]())
    assert payload["schema"] == "rematpass.plan" and payload["nodes"]


def test_compile_without_partition_leaves_a_note(tmp_path, monkeypatch):
    # No dump_dir: nothing is written.
    token = dump.note_compile_start(None)
    assert dump.note_compile_end(token) is None and not any(tmp_path.iterdir())
    # Partitioned: the dump itself speaks, no note.
    token = dump.note_compile_start(tmp_path)
    dump._mark_partitioned()
    assert dump.note_compile_end(token) is None and not any(tmp_path.iterdir())
    # Not partitioned, no cache hit counted (e.g. inference): NOT_PARTITIONED.txt.
    with dump.watch_compile(tmp_path):
        pass
    (note,) = tmp_path.glob("*/NOT_PARTITIONED.txt")
    assert "without rematpass's partitioner" in note.read_text()
    assert "TORCHINDUCTOR_FORCE_DISABLE_CACHES=1" in note.read_text()
    # A counted AOTAutograd cache hit: CACHE_HIT.txt.
    from torch._dynamo.utils import counters

    with dump.watch_compile(tmp_path):
        counters["aot_autograd"]["autograd_cache_hit"] += 1
    (hit,) = tmp_path.glob("*/CACHE_HIT.txt")
    assert "came from the AOTAutograd cache" in hit.read_text()
    assert "force_disable_caches = True" in hit.read_text()
    # A compile that raises leaves nothing behind.
    with pytest.raises(RuntimeError), dump.watch_compile(tmp_path / "raised"):
        raise RuntimeError("compile failed")
    assert not (tmp_path / "raised").exists() and not dump._stack()


def _remat_with_watch(gm, example_inputs, options=None):
    """The backend as backend.py should wire it: compile_fx inside dump.watch_compile."""
    from torch._inductor.compile_fx import compile_fx

    knobs = rematpass.config.resolve(options)
    with dump.watch_compile(knobs.dump_dir):
        return compile_fx(
            gm, example_inputs, config_patches={"custom_partitioner_fn": rematpass.RematPartitioner(knobs)}
        )


def _cache_hit_run(backend, dump_dir, tmp_path, monkeypatch):
    """Compile a matmul-only model (no C++ kernels: fast) twice through real Inductor with caches on."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    model = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False))
    with (
        torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True),
        torch._functorch.config.patch(enable_autograd_cache=True),
    ):
        for _ in range(2):
            torch._dynamo.reset()
            out = torch.compile(model, backend=backend)(torch.randn(4, 8))
            out.backward(torch.ones_like(out))
    return sorted(p.name for p in pathlib.Path(dump_dir).iterdir())


@pytest.mark.inductor
def test_cache_hit_through_inductor_writes_cache_hit_note(tmp_path, monkeypatch):
    dump_dir = tmp_path / "dump"
    backend = lambda gm, inputs: _remat_with_watch(gm, inputs, {"dump_dir": str(dump_dir)})  # noqa: E731
    assert _cache_hit_run(backend, dump_dir, tmp_path, monkeypatch) == ["0_0", "0_0.1"]
    assert (dump_dir / "0_0" / "plan.json").is_file()
    assert sorted(p.name for p in (dump_dir / "0_0.1").iterdir()) == ["CACHE_HIT.txt"]
    assert "graph 0/0 came from the AOTAutograd cache" in (dump_dir / "0_0.1" / "CACHE_HIT.txt").read_text()


@pytest.mark.inductor
def test_remat_backend_notes_cache_hits(tmp_path, monkeypatch):
    import inspect

    import rematpass.backend

    if "watch_compile" not in inspect.getsource(rematpass.backend) and "note_compile_start" not in inspect.getsource(
        rematpass.backend
    ):
        pytest.skip("rematpass/backend.py does not call dump.watch_compile yet")
    dump_dir = tmp_path / "dump"
    monkeypatch.setenv("REMAT_DUMP_DIR", str(dump_dir))
    assert _cache_hit_run("remat", dump_dir, tmp_path, monkeypatch) == ["0_0", "0_0.1"]
    assert (dump_dir / "0_0.1" / "CACHE_HIT.txt").is_file()


@pytest.mark.slow
def test_torch_logs_shows_one_line_per_graph_and_torch_trace_gets_the_plan(tmp_path):
    script = textwrap.dedent("""
        import torch
        from helpers import cheap_backend
        from rematpass.zoo import ConvBN, ResidualMLP
        model = torch.compile(ResidualMLP(depth=1), backend=cheap_backend())
        model(ResidualMLP.example()).backward()
    """)
    env = {
        **os.environ,
        "TORCH_LOGS": "+rematpass",
        "TORCH_TRACE": str(tmp_path / "trace"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    }
    env.pop("REMAT_DUMP_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "rematpass: saved" in line]
    assert len(lines) == 1 and "(graph 0/0)" in lines[0], result.stderr[-3000:]
    traces = "".join(p.read_text() for p in (tmp_path / "trace").glob("*.log"))
    assert '"name": "remat_plan"' in traces and '"schema": "rematpass.plan"' in traces


def test_set_logs_knows_rematpass():
    import logging

    from torch._logging._internal import log_registry

    assert log_registry.is_log("rematpass")  # registered at import of rematpass
    torch._logging.set_logs(modules={"rematpass": logging.DEBUG})
    try:
        assert logging.getLogger("rematpass").getEffectiveLevel() == logging.DEBUG
    finally:
        torch._logging.set_logs()
