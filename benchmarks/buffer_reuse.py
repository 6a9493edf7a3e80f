"""What Inductor's buffer reuse does to peak memory and step time, for PyTorch's budgets and ours.

    python benchmarks/buffer_reuse.py                         # the suite, print the table
    python benchmarks/buffer_reuse.py --models gpt llama --write

Inductor can keep a freed buffer in a pool for a later allocation of the
same size (``torch._inductor.config.allow_buffer_reuse``); the buffer stays
allocated across the kernels in between. rematpass turns that off
(``buffer_reuse=False``). For each model of ``python -m rematpass.bench``'s
suite and each variant, this compiles the variant twice, reuse on and off
(for ``remat`` through the knob, for ``inductor`` through Inductor's config),
measures the exact peak of a training step (``rematpass.measure.peak_memory``)
and times both copies interleaved in one process; step times are medians.
This is a program that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import statistics
import sys
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import rematpass  # noqa: E402
from rematpass import bench  # noqa: E402
from rematpass.bench import models as bench_models  # noqa: E402
from rematpass.bench.output import machine  # noqa: E402

VARIANTS = [f"inductor@{b}" for b in (0.8, 0.5, 0.3, 0.1)] + ["remat"] + [f"remat@{b}" for b in (0.8, 0.5, 0.3, 0.1)]


def compiled_run(model: bench_models.BenchModel, spec: str, reuse: bool) -> bench.Run:
    torch._dynamo.reset()
    run = bench.Run(bench.parse_variant(spec), model, "cpu", [])
    with torch._inductor.config.patch(allow_buffer_reuse=reuse), rematpass.config.patch(buffer_reuse=reuse):
        run.first_step(seed=0)
    run.measure_memory()
    return run


def measure(name: str, variants: list[str], steps: int) -> list[dict]:
    model = bench_models.build(name)
    runs = {(spec, reuse): compiled_run(model, spec, reuse) for spec in variants for reuse in (True, False)}
    for _ in range(3):
        for run in runs.values():
            run.train_step()
    for _ in range(steps):
        for run in runs.values():
            run.timed_step()
    rows = []
    for spec in variants:
        on, off = runs[(spec, True)], runs[(spec, False)]
        rows.append(
            {
                "model": name,
                "variant": spec,
                "peak_on": on.result["peak_bytes"],
                "peak_off": off.result["peak_bytes"],
                "step_on": statistics.median(on.times),
                "step_off": statistics.median(off.times),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | peak, reuse on | peak, reuse off | off / on | step on / off (ms) | off / on |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | `{r['variant']}` | {r['peak_on']:,} B | {r['peak_off']:,} B | "
            f"{r['peak_off'] / r['peak_on']:.3f}x | {r['step_on'] * 1e3:.1f} / {r['step_off'] * 1e3:.1f} | "
            f"{r['step_off'] / r['step_on']:.3f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(bench_models.DEFAULT_MODELS))
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--write", action="store_true", help="also write benchmarks/RESULTS_buffer_reuse.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch._inductor.config.fx_graph_cache = False  # every variant compiles (and partitions) afresh
    torch._functorch.config.enable_autograd_cache = False
    rows = []
    for name in args.models:
        new = measure(name, args.variants, args.steps)
        print(table(new) if not rows else table(new).split("\n", 2)[-1], flush=True)
        rows += new
    if args.write:
        host = machine()
        header = (
            f"# Buffer reuse on and off\n\n`python benchmarks/buffer_reuse.py --write`, {datetime.date.today()}: "
            f"{host.get('cpu', platform.machine())}, {host['cpu_count']} cores, torch {host['torch']}, "
            f"1 thread, {args.steps} interleaved steps per copy (medians).\n\n"
        )
        pathlib.Path(__file__).with_name("RESULTS_buffer_reuse.md").write_text(header + table(rows) + "\n")


if __name__ == "__main__":
    main()
