"""How long partitioning takes: rematpass against PyTorch's min-cut partitioner.

    python benchmarks/partition_speed.py                 # print the table
    python benchmarks/partition_speed.py --write         # and write benchmarks/RESULTS_partition_speed.md

For GPT-style models (rematpass.zoo.TinyGPT) of 4, 16, 32 and 96 layers the
joint graph is captured once, as Inductor hands it to a partitioner
(decomposed, joint passes run), and each partitioner then runs on its own
deep copy, interleaved, several times; the table gives medians. Like
Inductor, everything runs with the fake mode set and lazy graph modules as
``torch._dynamo.config.use_lazy_graph_module`` says.

Columns:
- total: the whole partition call, graph in, forward and backward modules out;
- decide: the part that chooses what to save. Ours: summary + cost table (timed
  in a staged run) + the solve as the partition report times it (min-cut
  search, or the peak-aware budget search); PyTorch: ``choose_saved_values_set``;
- the rest is graph surgery: clean-up (DCE, CSE), classification, building
  the forward and backward modules, reordering the backward. PyTorch copies
  the joint graph four times for it (classification and three copies in
  ``_extract_fwd_bwd_modules``); ours decides each module's nodes on the joint
  graph and copies each node once (passes/torch_extract.py), and pauses the
  cyclic garbage collector during the call (rematpass.partitioner).

A synthetic 100k-node problem (a random local DAG) times our solver alone.
This is a program that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import scipy
import torch

import rematpass
from rematpass.budget import Fraction
from rematpass.partitioner import cyclic_gc_paused
from rematpass.passes import torch_extract
from rematpass.passes import torch_internals as ti
from rematpass.passes.fastest import fastest_plan
from rematpass.passes.mincut import CutNetwork
from rematpass.passes.plan import CutProblem
from rematpass.passes.synthetic import BACKWARD_ONLY, FORWARD, INPUT, SyntheticGraph
from rematpass.planner import plan_for_peak
from rematpass.priced_graph import price_joint_graph
from rematpass.zoo import TinyGPT

ROOT = pathlib.Path(__file__).resolve().parent.parent

torch._inductor.config.force_disable_caches = True


def build_model(name: str, layers: int, dim: int | None) -> tuple[torch.nn.Module, tuple]:
    """``gpt``: rematpass.zoo.TinyGPT; ``llama``: transformers' Llama with grouped-query attention
    (head size 64, 4 query heads per KV head, SwiGLU 2.75x wide, vocab 32000), batch 1 x 128."""
    if name == "gpt":
        model = TinyGPT(layers=layers) if dim is None else TinyGPT(layers=layers, dim=dim)
        return model, (model.example(),)
    from rematpass.zoo import CausalLM, llama_lm

    dim = dim or 1024
    heads = dim // 64
    lm = llama_lm(
        vocab=32000, dim=dim, hidden=dim * 11 // 4, layers=layers, positions=256, heads=heads, kv_heads=heads // 4
    )
    return CausalLM(lm), (torch.randint(0, 32000, (1, 128)),)


def capture_joint(model: torch.nn.Module, inputs) -> dict:
    """The joint graph Inductor would hand a partitioner, with its kwargs and fake mode."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.virtualized import V

    captured = {}

    def spy(gm, joint_inputs, **kwargs):
        # A copy of the graph, sharing the module's tensors: a real tensor constant (Whisper's,
        # CLIP's) cannot be deep-copied while the fake mode is active.
        graph_copy = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        captured.update(gm=graph_copy, inputs=joint_inputs, kwargs=dict(kwargs), fake=detect_fake_mode(joint_inputs))
        return ti.default_partition(gm, joint_inputs, **kwargs)

    def partition(gm, joint_inputs, **kwargs):
        with V.set_fake_mode(detect_fake_mode(joint_inputs)):
            return partition_fn(gm, joint_inputs, partitioner_fn_override=spy, **kwargs)

    def eager(gm, example_inputs):
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    backend = aot_autograd(
        fw_compiler=eager, bw_compiler=eager, partition_fn=partition, decompositions=select_decomp_table()
    )
    torch.compile(model, backend=backend)(*inputs).backward()
    torch._dynamo.reset()
    return captured


@contextlib.contextmanager
def inductor_context(captured):
    from torch._dynamo import config as dynamo_config
    from torch._inductor.virtualized import V
    from torch.fx._lazy_graph_module import _use_lazy_graph_module

    with V.set_fake_mode(captured["fake"]), _use_lazy_graph_module(dynamo_config.use_lazy_graph_module):
        yield


class TorchDecideTimer:
    """Times ``choose_saved_values_set`` inside PyTorch's partitioner."""

    def __init__(self):
        import torch._functorch.partitioners as p

        self.module, self.original, self.seconds = p, p.choose_saved_values_set, 0.0

    def __enter__(self):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        self.module.choose_saved_values_set = timed
        return self

    def __exit__(self, *exc):
        self.module.choose_saved_values_set = self.original
        return False


def run_torch(captured, budget: float | None) -> tuple[float, float]:
    from torch._functorch import config as functorch_config

    gm = copy.deepcopy(captured["gm"])
    patch = functorch_config.patch(activation_memory_budget=budget) if budget is not None else contextlib.nullcontext()
    with inductor_context(captured), patch, TorchDecideTimer() as decide:
        started = time.perf_counter()
        ti.torch_min_cut_partition(gm, captured["inputs"], compiler="inductor", **captured["kwargs"])
        total = time.perf_counter() - started
    return total, decide.seconds


def run_ours(captured, knobs: dict) -> tuple[float, float]:
    """(seconds of the whole partition call, seconds its report gives to the solve)."""
    gm = copy.deepcopy(captured["gm"])
    partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True, **knobs}))
    with inductor_context(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        partitioner(gm, captured["inputs"], compiler="inductor", **captured["kwargs"])
        total = time.perf_counter() - started
    return total, rematpass.recent_reports()[-1].solve_seconds


def ours_stages(captured) -> dict:
    """The default partition's stages one by one, timed: graph clean-up (DCE, CSE),
    classification, summary + cost table, min-cut solve, module extraction."""
    kwargs = captured["kwargs"]
    with inductor_context(captured), cyclic_gc_paused():  # as the partitioner runs
        a = price_joint_graph(
            copy.deepcopy(captured["gm"]),
            num_fwd_outputs=kwargs["num_fwd_outputs"],
            static_lifetime_input_indices=kwargs["static_lifetime_input_indices"],
        )
        gm, roles, summary, costs = a.gm, a.roles, a.summary, a.costs
        seconds = {
            "prepare": a.seconds["prepare"],
            "classify": a.seconds["classify"],
            "summarize+cost": a.seconds["summarize"] + a.seconds["price"],
        }
        started = time.perf_counter()
        plan = fastest_plan(costs.problem(summary), costs.default_lambda)
        seconds["solve"] = time.perf_counter() - started
        started = time.perf_counter()
        saved = [node for node, keep in zip(summary.nodes, plan.saved) if keep]
        torch_extract.extract_forward_backward(gm, saved, roles, kwargs["num_fwd_outputs"])
        seconds["extract"] = time.perf_counter() - started
    return seconds


def gpt_rows(layer_counts, repeats: int, model_name: str = "gpt", dim: int | None = None):
    rows = []
    variants = [
        ("ours", lambda c: run_ours(c, {})),
        ("torch", lambda c: run_torch(c, None)),
        ("ours@0.5", lambda c: run_ours(c, {"memory_budget": 0.5})),
        ("torch@0.5", lambda c: run_torch(c, 0.5)),
    ]
    for layers in layer_counts:
        torch.manual_seed(0)
        model, inputs = build_model(model_name, layers, dim)
        captured = capture_joint(model, inputs)
        with inductor_context(captured):
            kw = captured["kwargs"]
            candidates = price_joint_graph(
                copy.deepcopy(captured["gm"]),
                num_fwd_outputs=kw["num_fwd_outputs"],
                static_lifetime_input_indices=kw["static_lifetime_input_indices"],
            ).summary.num_nodes
        times = {name: [] for name, _ in variants}
        staged = []
        for _ in range(repeats):  # interleaved: A B C D (stages) A B C D (stages) ...
            for name, fn in variants:
                times[name].append(fn(captured))
            staged.append(ours_stages(captured))
        stages = {stage: statistics.median(run[stage] for run in staged) for stage in staged[0]}
        med = {}
        for name, runs in times.items():
            decide = statistics.median(d for _, d in runs)
            if name.startswith("ours"):  # the report times the solve; add the summary and cost table
                decide += stages["summarize+cost"]
            med[name] = (statistics.median(t for t, _ in runs), decide)
        rows.append((layers, len(captured["gm"].graph.nodes), candidates, med, stages))
        print(f"  {layers} layers done", file=sys.stderr, flush=True)
    return rows


def synthetic_problem(n: int, seed: int = 0) -> CutProblem:
    """A random local DAG shaped like a joint graph: inputs, forward and backward-only nodes,
    1-3 inputs per node from the previous 60, 30% of forward values read by the backward."""
    rng = np.random.default_rng(seed)
    kind = np.full(n, FORWARD, dtype=np.int8)
    n_inputs = max(2, n // 100)
    kind[:n_inputs] = INPUT
    kind[rng.choice(np.arange(n_inputs, n), n // 5, replace=False)] = BACKWARD_ONLY
    fan_in = rng.integers(1, 4, n)
    src, dst = [], []
    for j in range(1, 4):
        nodes = np.flatnonzero((fan_in >= j) & (np.arange(n) >= n_inputs))
        src.append(np.maximum(nodes - rng.integers(1, 60, len(nodes)), 0))
        dst.append(nodes)
    src, dst = np.concatenate(src), np.concatenate(dst)
    ok = ~((kind[dst] == FORWARD) & (kind[src] == BACKWARD_ONLY))
    keys = np.unique(src[ok].astype(np.int64) * n + dst[ok])
    no_recompute = tuple(
        "input" if k == INPUT else ("random" if r < 0.01 else None) for k, r in zip(kind, rng.random(n))
    )
    no_save = tuple(None if nr else ("view" if r < 0.1 else None) for nr, r in zip(no_recompute, rng.random(n)))
    is_static = (kind == INPUT) & (rng.random(n) < 0.7)
    needed = (rng.random(n) < 0.3) & (kind != BACKWARD_ONLY)
    must = np.array([nr is None for nr in no_recompute]) & (kind == FORWARD) & (rng.random(n) < 0.005)
    nbytes = np.where(is_static, 0.0, np.exp(rng.uniform(np.log(1e3), np.log(1e7), n)).round())
    cost = np.where(kind == FORWARD, nbytes / 1e10 * np.where(rng.random(n) < 0.6, 0.05, 3.0), 0.0)
    g = SyntheticGraph()
    g.nodes(kind, nbytes, cost, no_recompute=no_recompute, no_save=no_save, static=is_static, must_recompute=must)
    g.edges(keys // n, keys % n)
    g.needed_by_backward(needed)
    return g.problem()


def synthetic_rows(n: int, repeats: int):
    problem = synthetic_problem(n)
    lam = 1e10
    rows = []

    def fake_peak(cut):  # the synthetic problem has no graph to simulate: peak by saved bytes
        return int(cut.saved_bytes)

    solvers = (
        ("fastest plan", lambda: fastest_plan(problem, lam)),
        ("memory_budget=0.5, peak = saved bytes", lambda: plan_for_peak(problem, lam, Fraction(0.5), fake_peak).plan),
    )
    for label, solve in solvers:
        seconds, plan = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            plan = solve()
            seconds.append(time.perf_counter() - started)
        rows.append((label, statistics.median(seconds), plan.num_solves))
    started = time.perf_counter()
    CutNetwork(problem).solve(lam)
    one_solve = time.perf_counter() - started
    return n, len(problem.summary.edge_src), rows, one_solve


def _commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "passes", "rematpass"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()}-core CPU ({model}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"scipy {scipy.__version__}, numpy {np.__version__}"
    )


def render(gpt, synthetic, repeats: int, load_before: tuple[float, float, float]) -> str:
    load_after = os.getloadavg()
    lines = [
        f"Machine: {machine()}. rematpass at commit {_commit()}.",
        f"Load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after the run: other processes "
        "share the cores, so compare columns of one row (interleaved runs), not rows of different runs.",
        f"Medians of {repeats} interleaved runs; seconds. `@0.5`: rematpass `memory_budget=0.5`, "
        "PyTorch `activation_memory_budget=0.5`.",
        "",
        "| layers | joint nodes | candidates | ours total | torch total | ratio | ours@0.5 total | torch@0.5 total | ratio "
        "| ours decide | torch decide | ours@0.5 decide | torch@0.5 decide |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layers, joint, candidates, m, _ in gpt:
        lines.append(
            f"| {layers} | {joint:,} | {candidates:,} | {m['ours'][0]:.3f} | {m['torch'][0]:.3f} | "
            f"{m['ours'][0] / m['torch'][0]:.2f}x | {m['ours@0.5'][0]:.3f} | {m['torch@0.5'][0]:.3f} | "
            f"{m['ours@0.5'][0] / m['torch@0.5'][0]:.2f}x | {m['ours'][1]:.3f} | {m['torch'][1]:.3f} | "
            f"{m['ours@0.5'][1]:.3f} | {m['torch@0.5'][1]:.3f} |"
        )
    lines += [
        "",
        "Where our default partition spends its time (medians of the staged runs; seconds):",
        "",
        "| layers | prepare (DCE, CSE) | classify | summarize + cost | solve | extract (fw/bw modules, reorder) | sum |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layers, _, _, _, st in gpt:
        lines.append(
            f"| {layers} | {st['prepare']:.3f} | {st['classify']:.3f} | {st['summarize+cost']:.3f} | {st['solve']:.3f} "
            f"| {st['extract']:.3f} | {sum(st.values()):.3f} |"
        )
    n, edges, rows, one_solve = synthetic
    lines += [
        "",
        f"Synthetic problem, our solver alone ({n:,} candidates, {edges:,} data edges, "
        f"{2 * n + 2:,}-vertex flow network; one max-flow solve including network construction: {one_solve:.3f} s):",
        "",
        "| plan | seconds | max-flow solves |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {seconds:.3f} | {solves} |" for label, seconds, solves in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 16, 32, 96])
    parser.add_argument("--model", choices=["gpt", "llama"], default="gpt", help="joint graphs of which model")
    parser.add_argument("--dim", type=int, default=None, help="model width (llama default: 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic-nodes", type=int, default=100_000)
    parser.add_argument("--write", action="store_true", help="also write benchmarks/RESULTS_partition_speed.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    gpt = gpt_rows(args.layers, args.repeats, args.model, args.dim)
    synthetic = synthetic_rows(args.synthetic_nodes, args.repeats)
    table = render(gpt, synthetic, args.repeats, load_before)
    print(table)
    if args.write:
        out = ROOT / "benchmarks" / "RESULTS_partition_speed.md"
        stamp = datetime.date.today().isoformat()
        out.write_text(
            f"# Partition speed ({stamp})\n\nMeasured with `python benchmarks/partition_speed.py --write`.\n\n{table}"
        )
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
