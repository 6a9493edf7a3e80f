"""First-call compile time, cold and warm, and compiles per graph: torch.compile against remat.

    python benchmarks/compile_time.py                                  # TinyGPT, every variant
    python benchmarks/compile_time.py --models gpt2 llama whisper clip --variants inductor remat remat@0.3

Each variant runs in a fresh process twice with one private Inductor cache folder: the first
process finds the cache empty (cold), the second finds what the first stored (warm), as the
second run of a user's script does. ``--rounds N`` repeats that N times, each round running every
variant, and prints medians: of the seconds, and of each round's ratio to the first variant (a
warm call of a few seconds, or a machine shared for a while, is noisy in one sample). A run times
the first call, forward and backward of one training step, which is where torch.compile
compiles, and counts the partitions rematpass ran, the compiles its reports say each graph took
and the schedule probes of the budget's check (rematpass.schedule_probe). Models: ``tinygpt``, the benchmark suite's names at size 1
(``python -m rematpass.bench --help``) and the held-out transformers models of
benchmarks/heldout.py. ``remat@cap`` is a byte cap halfway between the scheduled peaks of the
least-peak plan (``remat@0.0``) and the default plan, on the graph where the default's is
largest. This is a program that prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, torch
import rematpass, rematpass.partitioner as partitioner

name, variant, cap = sys.argv[1], sys.argv[2], sys.argv[3]
partitions = []
original = partitioner.RematPartitioner.partition
def counting(self, *args, **kwargs):
    partitions.append(1)
    return original(self, *args, **kwargs)
partitioner.RematPartitioner.partition = counting
torch.manual_seed(0)
if name == "tinygpt":
    from rematpass.zoo import TinyGPT
    model = TinyGPT(layers=2, dim=128, seq=64)
    inputs = (model.example(),)
else:
    import heldout
    from rematpass.bench import models
    bench = heldout.BUILDERS[name]() if name in heldout.BUILDERS else models.build(name, 1.0)
    model, inputs = bench.module, bench.inputs
if variant == "inductor":
    compiled = torch.compile(model)
else:
    budget = {"remat": None, "remat@0.5": 0.5, "remat@0.3": 0.3, "remat@0.0": 0.0, "remat@cap": int(cap)}[variant]
    compiled = torch.compile(model, backend="remat", options={} if budget is None else {"memory_budget": budget})
started = time.perf_counter()
compiled(*inputs).backward()
seconds = time.perf_counter() - started
reports = rematpass.recent_reports()
print(json.dumps({
    "seconds": seconds,
    "partitions": len(partitions),
    "compiles": [r.compiles for r in reports],
    "probes": [r.schedule_probes for r in reports],
    "probe_seconds": sum(r.schedule_probe_seconds for r in reports),
    "from_cache": [r.from_cache for r in reports],
    "scheduled": [r.scheduled_peak_bytes for r in reports],
    "probe_agrees": [
        not r.verification or r.scheduled_peak_bytes is None
        or r.scheduled_peak_bytes in {a.scheduled_peak_bytes for a in r.verification}
        for r in reports
    ],
}))
"""

HERE = os.path.dirname(os.path.abspath(__file__))


def run(name: str, variant: str, cache: str, cap: int) -> dict:
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)  # heldout.py, and the caller's
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, variant, str(cap)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{name} {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_graph_cap(default: dict, least: dict) -> int:
    """Halfway between the least-peak and the default plans' scheduled peaks, on the graph where
    the default's is largest."""
    peaks = [(most or 0, fewest or 0) for most, fewest in zip(default["scheduled"], least["scheduled"])]
    top_default, top_least = max(peaks)
    return (top_default + top_least) // 2


def _ratio(seconds: float, ratio: float) -> str:
    return f"{seconds:.1f} s ({ratio:.2f}x)"


def _compiles(result: dict) -> str:
    return ",".join(str(c) for c in result["compiles"]) or "-"


def one_round(name: str, order: list[str], caches: str, cap: int | None) -> tuple[dict, int]:
    """Every variant once, each cold (a fresh cache folder) then warm (the same folder again)."""
    results: dict[str, tuple[dict, dict]] = {}
    for variant in order:
        if variant == "remat@cap" and cap is None:
            default = results.get("remat") or (run(name, "remat", tempfile.mkdtemp(dir=caches), 0), None)
            least = results.get("remat@0.0") or (run(name, "remat@0.0", tempfile.mkdtemp(dir=caches), 0), None)
            cap = largest_graph_cap(default[0], least[0])
        cache = tempfile.mkdtemp(dir=caches)
        results[variant] = run(name, variant, cache, cap or 0), run(name, variant, cache, cap or 0)
    return results, cap or 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tinygpt"])
    parser.add_argument(
        "--variants", nargs="+", default=["inductor", "remat", "remat@0.5", "remat@0.3", "remat@0.0", "remat@cap"]
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are printed")
    args = parser.parse_args(argv)
    print(
        "first call = compile + one training step; each variant cold (empty cache) then warm (a second process); "
        f"{args.rounds} interleaved round(s): median seconds, median of each round's ratio to the first variant"
    )
    print(
        "| model | variant | cold first call | warm first call | compiles per graph cold / warm | probes | probe time | probe = compiled |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        order = sorted(args.variants, key=lambda v: v == "remat@cap")  # the cap needs the other plans' peaks
        rounds, cap = [], None
        with tempfile.TemporaryDirectory() as caches:
            for _ in range(args.rounds):
                results, cap = one_round(name, order, caches, cap)
                rounds.append(results)
        base = args.variants[0]
        for variant in args.variants:
            cold, warm = rounds[0][variant]  # compiles and probes: the first round's (they repeat)

            def median(which: int, of: str | None = None) -> float:
                return statistics.median(
                    r[variant][which]["seconds"] / (r[of][which]["seconds"] if of else 1.0) for r in rounds
                )

            label = f"{variant} ({cap:,} B)" if variant == "remat@cap" else variant
            print(
                f"| {name} | {label} | {_ratio(median(0), median(0, base))} | {_ratio(median(1), median(1, base))} "
                f"| {_compiles(cold)} / {_compiles(warm)} | {','.join(map(str, cold['probes'])) or '-'} "
                f"| {cold['probe_seconds']:.1f} s | {'yes' if all(all(r[variant][0]['probe_agrees']) for r in rounds) else 'NO'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
