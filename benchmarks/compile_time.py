"""First-call compile time, cold and warm, and compiles per graph: torch.compile against remat.

    python benchmarks/compile_time.py                       # TinyGPT, the default variants
    python benchmarks/compile_time.py --variants inductor remat remat@0.3 remat@cap

Each variant runs in a fresh process twice with one private Inductor cache folder: the first
process finds the cache empty (cold), the second finds what the first stored (warm), as the
second run of a user's script does. A run times the first call, forward and backward of one
training step, which is where torch.compile compiles, and counts the partitions rematpass ran
and the compiles its reports say each graph took. ``remat@cap`` is a byte cap halfway between the
least-peak plan's and the default plan's predicted peaks. This is a program that prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, torch
import rematpass, rematpass.partitioner as partitioner
from rematpass.zoo import TinyGPT

variant, cap = sys.argv[1], sys.argv[2]
partitions = []
original = partitioner.RematPartitioner.partition
def counting(self, *args, **kwargs):
    partitions.append(1)
    return original(self, *args, **kwargs)
partitioner.RematPartitioner.partition = counting
torch.manual_seed(0)
model = TinyGPT(layers=2, dim=128, seq=64)
x = model.example()
if variant == "inductor":
    compiled = torch.compile(model)
else:
    budget = {"remat": None, "remat@0.3": 0.3, "remat@0.0": 0.0, "remat@cap": int(cap)}[variant]
    compiled = torch.compile(model, backend="remat", options={} if budget is None else {"memory_budget": budget})
started = time.perf_counter()
compiled(x).backward()
seconds = time.perf_counter() - started
reports = rematpass.recent_reports()
print(json.dumps({
    "seconds": seconds,
    "partitions": len(partitions),
    "compiles": [r.compiles for r in reports],
    "from_cache": [r.from_cache for r in reports],
    "predicted": [r.predicted_peak_bytes for r in reports],
}))
"""


def run(variant: str, cache: str, cap: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(cap)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cap_between_plans() -> int:
    """Halfway between the least-peak plan's predicted peak and the default plan's, from cold runs."""
    with tempfile.TemporaryDirectory() as cache:
        least = run("remat@0.0", cache, 0)["predicted"][0]
    with tempfile.TemporaryDirectory() as cache:
        default = run("remat", cache, 0)["predicted"][0]
    return (least + default) // 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["inductor", "remat", "remat@0.3", "remat@cap"])
    args = parser.parse_args(argv)
    cap = cap_between_plans() if "remat@cap" in args.variants else 0
    rows = []
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as cache:
            cold, warm = run(variant, cache, cap), run(variant, cache, cap)
        rows.append((variant, cold, warm))
    base_cold, base_warm = rows[0][1]["seconds"], rows[0][2]["seconds"]
    print(
        f"TinyGPT (2 layers, dim 128, 64 tokens), first call = compile + one step; byte cap {cap:,} B; ratios against {rows[0][0]}"
    )
    print("| variant | cold first call | warm first call | partitions cold / warm | compiles per graph cold / warm |")
    print("|---|---|---|---|---|")
    for variant, cold, warm in rows:
        print(
            f"| {variant} | {cold['seconds']:.1f} s ({cold['seconds'] / base_cold:.2f}x) "
            f"| {warm['seconds']:.1f} s ({warm['seconds'] / base_warm:.2f}x) "
            f"| {cold['partitions']} / {warm['partitions']} | {cold['compiles'] or '-'} / {warm['compiles'] or '-'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
