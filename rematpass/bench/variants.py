"""The variants ``python -m rematpass.bench`` trains each model under (the list is in ``suite``'s docstring)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable

import torch

from .. import inductor_hooks

DEFAULT_VARIANTS = (
    ["eager", "checkpoint", "inductor"]
    + [f"inductor@{b}" for b in (0.8, 0.5, 0.3, 0.1)]
    + ["remat"]
    + [f"remat@{b}" for b in (0.8, 0.5, 0.3, 0.1)]
)
# Full size: each compile takes minutes on a CPU, so fewer budgets and no checkpoint by default.
FULL_VARIANTS = ["eager", "inductor", "inductor@0.5", "inductor@0.3", "remat", "remat@0.5", "remat@0.3"]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # eager | checkpoint | inductor | remat
    budget: float | None = None
    fastest: bool = False  # remat-fastest: the default plan with time_tolerance=0 (no peak traded in)

    @property
    def compiled(self) -> bool:
        return self.kind in ("inductor", "remat")

    def compile(self, module: torch.nn.Module) -> Callable:
        if self.kind == "inductor":
            return torch.compile(module, backend="inductor", isolate_recompiles=True)
        if self.kind == "remat":
            options = {} if self.budget is None else {"memory_budget": self.budget}
            if self.fastest:
                options["time_tolerance"] = 0
            return torch.compile(module, backend="remat", options=options or None, isolate_recompiles=True)
        return module

    def first_call_context(self):
        if self.kind == "inductor" and self.budget is not None:
            return inductor_hooks.activation_memory_budget(self.budget)
        return contextlib.nullcontext()


def parse_variant(spec: str) -> Variant:
    if spec == "remat-fastest":
        return Variant(spec, "remat", fastest=True)
    kind, _, budget = spec.partition("@")
    if kind not in ("eager", "checkpoint", "inductor", "remat") or (budget and kind not in ("inductor", "remat")):
        raise argparse.ArgumentTypeError(
            f"unknown variant {spec!r}: use eager, checkpoint, inductor, inductor@B, remat, remat-fastest "
            "or remat@B (B in [0, 1])"
        )
    if not budget:
        return Variant(spec, kind)
    try:
        value = float(budget)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: budget {budget!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{spec!r}: budget must be in [0, 1]")
    return Variant(spec, kind, value)
