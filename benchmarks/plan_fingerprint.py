"""Every benchmark model's plan at every budget, as a fingerprint to compare two commits by.

A refactor that must not change behaviour is checked with it: run it before and after, then
compare. Each model's joint graph is captured once (Inductor's decompositions and joint passes,
no C++ compile), then partitioned by ``RematPartitioner`` at each budget on a fresh copy; the
fingerprint is the saved set and the predicted peak of each plan.

    python benchmarks/plan_fingerprint.py --out before.json              # the six small models
    python benchmarks/plan_fingerprint.py --full --out before-full.json  # and the full-size suite
    python benchmarks/plan_fingerprint.py --compare before.json after.json

The two byte caps are set from the model's own plans: halfway between the least-peak plan's
predicted peak (``memory_budget=0.0``) and the default plan's, and 1.1 times the least.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
import torch.fx as fx
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._guards import detect_fake_mode

import rematpass
from rematpass.bench import models

FRACTIONS = (None, 0.8, 0.5, 0.3, 0.1, 0.0)


class _Capture(rematpass.RematPartitioner):
    """Keeps a copy of each joint graph it is given, then partitions it as usual."""

    def __init__(self):
        super().__init__(rematpass.Knobs(strict=True))
        self.joints: list = []

    def __call__(self, gm, joint_inputs, **kwargs):
        self.joints.append((fx.GraphModule(gm, copy.deepcopy(gm.graph)), joint_inputs, kwargs))
        return super().__call__(gm, joint_inputs, **kwargs)


def capture_joint(bench: models.BenchModel):
    """The joint graph Inductor would hand the partitioner for ``bench``'s training step."""
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.virtualized import V

    capture = _Capture()

    def partition(gm, joint_inputs, **kwargs):
        with (
            V.set_fake_mode(detect_fake_mode(joint_inputs)),
            torch._inductor.config.patch(custom_partitioner_fn=capture),
        ):
            return partition_fn(gm, joint_inputs, **kwargs)

    def eager(gm, _):
        return make_boxed_func(gm.forward)

    backend = aot_autograd(
        fw_compiler=eager, bw_compiler=eager, partition_fn=partition, decompositions=select_decomp_table()
    )
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        torch.compile(bench.module, backend=backend, fullgraph=True)(*bench.inputs)
    if len(capture.joints) != 1:
        raise RuntimeError(f"{bench.name}: expected one joint graph, got {len(capture.joints)}")
    return capture.joints[0]


def plan_at(joint, budget) -> dict:
    gm, joint_inputs, kwargs = joint
    fresh = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True, "memory_budget": budget}))
    with torch._inductor.virtualized.V.set_fake_mode(detect_fake_mode(joint_inputs)):
        partitioner(fresh, joint_inputs, **kwargs)
    report = partitioner.reports[-1]
    return {
        "saved": sorted(n.name for n in report.saved_nodes()),
        "saved_bytes": report.saved_bytes,
        "predicted_peak_bytes": report.predicted_peak_bytes,
    }


def fingerprint(name: str, size) -> dict:
    bench = models.build(name, size)
    joint = capture_joint(bench)
    plans = {repr(b): plan_at(joint, b) for b in FRACTIONS}
    least, default = plans["0.0"]["predicted_peak_bytes"], plans["None"]["predicted_peak_bytes"]
    for cap in sorted({(least + default) // 2, int(1.1 * least)}):
        plans[f"cap {cap}"] = plan_at(joint, max(cap, 2))
    return plans


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    differ = 0
    for model in sorted(set(a) | set(b)):
        for budget in sorted(set(a.get(model, {})) | set(b.get(model, {}))):
            pa, pb = a.get(model, {}).get(budget), b.get(model, {}).get(budget)
            same = pa == pb
            differ += not same
            print(f"{model:12} {budget:14} {'same' if same else 'DIFFERENT'}")
            if not same and pa and pb:
                print(
                    f"    saved +{sorted(set(pb['saved']) - set(pa['saved']))} -{sorted(set(pa['saved']) - set(pb['saved']))}"
                )
                print(f"    predicted peak {pa['predicted_peak_bytes']} -> {pb['predicted_peak_bytes']}")
    print(f"{differ} plans differ")
    return 1 if differ else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the fingerprint here (JSON)")
    parser.add_argument("--full", action="store_true", help="also the full-size suite (minutes)")
    parser.add_argument("--models", nargs="*", help="only these models")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two fingerprints")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    runs = [(name, 1.0) for name in models.DEFAULT_MODELS]
    runs += [(name, models.FULL) for name in models.FULL_SUITE] if args.full else []
    result = {}
    for name, size in runs:
        if args.models and name not in args.models:
            continue
        started = time.perf_counter()
        result[name] = fingerprint(name, size)
        print(f"{name}: {len(result[name])} plans in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
