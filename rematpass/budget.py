"""What a ``memory_budget`` means, decided once.

``config.resolve`` validates the user's ``memory_budget`` and ``time_tolerance`` and parses them
into one of four values; every later stage (the planner, the scheduled-peak check, the report,
``rematpass show`` and ``report.html``) takes that value as it is and never looks at the Python
type of the knob:

- ``Fastest()``: no budget and ``time_tolerance=0``: the min-cut at the default price (the
  plan that recomputes only what is cheaper to recompute than to read back);
- ``DefaultPlan(tolerance)``: no budget (``None`` or ``1.0``): among plans within ``tolerance``
  of the step's estimated time of the fastest one, the least predicted peak;
- ``Fraction(value, tolerance)``: a float in ``[0, 1)``, a recompute allowance on PyTorch's
  ``activation_memory_budget`` scale spent on the least predicted peak; it may always spend what
  the default plan (``tolerance``) spends, so no fraction peaks above the default;
- ``PeakCap(bytes)``: a byte count or a size string, a cap on the step's peak.

    >>> parse_budget(None, 0.01)
    DefaultPlan(tolerance=0.01)
    >>> parse_budget(0.3, 0.01).describe()
    'memory_budget 0.3: least predicted peak within the recompute allowance of that fraction'
    >>> budget_from_json(PeakCap(2**20).to_json())
    PeakCap(bytes=1048576)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fastest:
    """The min-cut plan at the default price: no budget, ``time_tolerance=0``."""

    kind = "fastest"

    def describe(self) -> str:
        return "no memory_budget, time_tolerance 0: the fastest plan"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True)
class DefaultPlan:
    """No budget: the least predicted peak among plans within ``tolerance`` of the fastest's time."""

    tolerance: float
    kind = "default"

    def describe(self) -> str:
        return f"no memory_budget: the default plan (least predicted peak within {self.tolerance:g} of the step's time)"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "tolerance": self.tolerance}


@dataclass(frozen=True)
class Fraction:
    """A recompute allowance on PyTorch's ``activation_memory_budget`` scale, in ``[0, 1)``."""

    value: float
    tolerance: float = 0.0  # the default plan's, which a fraction may always spend
    kind = "fraction"

    def describe(self) -> str:
        return f"memory_budget {self.value:g}: least predicted peak within the recompute allowance of that fraction"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "tolerance": self.tolerance}


@dataclass(frozen=True)
class PeakCap:
    """A cap on the step's peak memory, in bytes."""

    bytes: int
    kind = "peak_cap"

    def describe(self) -> str:
        return f"memory_budget {self.bytes:,} bytes: a cap on the step's peak"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "bytes": self.bytes}


Budget = Fastest | DefaultPlan | Fraction | PeakCap


def parse_budget(memory_budget: float | int | None, time_tolerance: float) -> Budget:
    """The budget that validated ``memory_budget`` (None, a float in [0, 1] or bytes) and
    ``time_tolerance`` ask for. The one place where the knob's Python type carries meaning."""
    if memory_budget is None or (isinstance(memory_budget, float) and memory_budget == 1.0):
        return Fastest() if time_tolerance == 0 else DefaultPlan(time_tolerance)
    if isinstance(memory_budget, float):
        return Fraction(memory_budget, time_tolerance)
    return PeakCap(int(memory_budget))


def is_memory_budget(budget: Budget) -> bool:
    """Whether the user set a ``memory_budget`` (a fraction or a cap): time is then traded for memory,
    and the plan is checked on Inductor's schedule.

    >>> is_memory_budget(Fraction(0.3)), is_memory_budget(DefaultPlan(0.01))
    (True, False)
    """
    return isinstance(budget, Fraction | PeakCap)


def peak_cap_bytes(budget: Budget) -> int | None:
    """The cap a budget puts on the step's peak, in bytes; None for every budget but a ``PeakCap``.

    >>> peak_cap_bytes(PeakCap(2**20)), peak_cap_bytes(Fraction(0.5))
    (1048576, None)
    """
    return budget.bytes if isinstance(budget, PeakCap) else None


_KINDS = {cls.kind: cls for cls in (Fastest, DefaultPlan, Fraction, PeakCap)}


def budget_from_json(data: dict[str, Any] | None) -> Budget | None:
    """The budget a ``plan.json`` recorded (``Budget.to_json``); None for a dump without one."""
    if not data or data.get("kind") not in _KINDS:
        return None
    fields = {k: v for k, v in data.items() if k != "kind"}
    return _KINDS[data["kind"]](**fields)
