"""Do budgets keep their promise on the measured peak? Fractions and byte caps, small models.

    python benchmarks/budget_promise.py                              # cnn llama gpt mixer at size 0.5
    python benchmarks/budget_promise.py --models cnn --size 1

For each model (the benchmark suite's builders, ``python -m rematpass.bench --help``): the exact
peak of a steady training step (rematpass.measure, an SGD step included) under the default plan
and ``memory_budget`` 0.5, 0.3 and 0.0, then under byte caps between the least-peak plan's measured
peak and the default's: 1.1x the least (when below the default), halfway, and exactly the
default's. Each row says whether the promise held: a fraction's peak never above a larger
fraction's, a cap's peak within 1% of the cap and never above the default's, and a "cannot be
met" warning only where the measured peak is over the cap. Every run compiles with Inductor's
caches on, in a cache folder of its own. This is a program that prints a table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="budget_promise_"))

import torch  # noqa: E402

import rematpass  # noqa: E402
from rematpass.bench import models  # noqa: E402
from rematpass.measure import peak_memory  # noqa: E402
from rematpass.user_warnings import RematBudgetWarning  # noqa: E402

SLACK = 1.01  # measured / cap
FRACTIONS = (None, 0.5, 0.3, 0.0)


def measure(name: str, size: float, budget) -> dict:
    """One model under one budget: its exact steady-step peak, compiles per graph and warnings."""
    bench = models.build(name, size)
    torch._dynamo.reset()
    rematpass.clear_reports()
    options = {} if budget is None else {"memory_budget": budget}
    compiled = torch.compile(bench.module, backend="remat", options=options)
    optimizer = torch.optim.SGD(bench.module.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=False)
        compiled(*bench.inputs).backward()
        optimizer.step()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RematBudgetWarning)
        step()
    step()
    reports = rematpass.recent_reports()
    return {
        "peak": peak_memory(step),
        "compiles": [r.compiles for r in reports],
        "warned": any("cannot be met" in str(w.message) for w in caught),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "llama", "gpt", "mixer"])
    parser.add_argument("--size", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(f"exact CPU peaks of a steady step, suite models at size {args.size}; Inductor caches on")
    print("| model | memory_budget | measured peak | vs cap | vs default | compiles per graph | warned | promise |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        runs = {budget: measure(name, args.size, budget) for budget in FRACTIONS}
        default, least = runs[None]["peak"], runs[0.0]["peak"]
        previous = None
        for budget in FRACTIONS:
            run = runs[budget]
            held = previous is None or run["peak"] <= previous
            previous = run["peak"]
            _row(name, "default" if budget is None else f"{budget}", run, None, default, held)
        caps = [int(least * 1.1)] if least * 1.1 < default else []
        caps += [int((least + default) / 2), default]
        for cap in caps:
            run = measure(name, args.size, cap)
            over = run["peak"] > cap * SLACK
            false_warning = run["warned"] and run["peak"] <= cap
            held = not over and run["peak"] <= default * SLACK and not false_warning
            _row(name, f"{cap:,} B", run, cap, default, held)
    return 0


def _row(name: str, budget: str, run: dict, cap: int | None, default: int, held: bool) -> None:
    vs_cap = f"{run['peak'] / cap:.4f}" if cap else "-"
    print(
        f"| {name} | {budget} | {run['peak'] / 2**20:.3f} MiB | {vs_cap} | {run['peak'] / default:.3f}x "
        f"| {','.join(map(str, run['compiles']))} | {'yes' if run['warned'] else 'no'} | {'held' if held else 'BROKEN'} |",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
