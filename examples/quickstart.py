"""Train a small transformer a few steps with backend="remat" and compare with torch.compile's default.

    python examples/quickstart.py

Prints, per variant, the activation bytes saved for the backward and the
step's peak CPU memory (both exact, see rematpass.measure), and the loss.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch

import rematpass
from rematpass.measure import peak_memory, saved_activation_bytes
from rematpass.zoo import SmallTransformer  # nn.TransformerEncoder as a language model: any nn.Module will do


def train(model, tokens, steps, lr=1e-3):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(tokens)
        loss.backward()
        optimizer.step()
    return loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch._inductor.config.force_disable_caches = True  # so each variant really partitions
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")

    torch.manual_seed(0)
    base = SmallTransformer()
    tokens = torch.randint(0, 256, (args.batch, 64))
    variants = [
        ("torch.compile default (Inductor min-cut)", dict(backend="inductor")),
        ("remat default", dict(backend="remat")),
        ("remat memory_budget=0.3", dict(backend="remat", options={"memory_budget": 0.3})),
    ]
    rows = []
    for name, kwargs in variants:
        print(f"compiling and training: {name} ...", flush=True)
        torch._dynamo.reset()
        model = copy.deepcopy(base)
        compiled = torch.compile(model, **kwargs)
        loss = train(compiled, tokens, args.steps)

        def step():
            compiled(tokens).backward()

        saved = saved_activation_bytes(step, model)
        peak = peak_memory(step)
        rows.append((name, saved, peak, loss))

    baseline_saved, baseline_peak = rows[0][1], rows[0][2]
    print()
    print(f"{'variant':42} {'saved activations':>18} {'peak step memory':>18} {'loss':>8}")
    for name, saved, peak, loss in rows:
        print(
            f"{name:42} {saved / 2**20:>9.3f} MiB {saved / baseline_saved:>5.2f}x "
            f"{peak / 2**20:>9.3f} MiB {peak / baseline_peak:>5.2f}x {loss:>8.4f}"
        )
    reports = rematpass.recent_reports()
    if reports:
        print()
        print("last remat plan:", reports[-1].one_line())


if __name__ == "__main__":
    main()
