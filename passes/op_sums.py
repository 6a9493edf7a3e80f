"""What a 0/1 knapsack can pay for part of the compute-bound ops that separate two plans.

PyTorch's budget solver recomputes whole matmuls and convolutions: between a plan and one that
recomputes a few more ops, it can spend only what some of those ops sum to. ``OpSums`` holds those
sums for a list of ops' spends (FLOPs), on a grid of 1/``GRID`` of their total so that any number
of ops costs the same: ``ceiling`` is the least a 0/1 knapsack pays for at least a given spend,
``levels`` every sum it can pay, and ``choose`` which ops pay a level, the earliest ones first
(their recomputation runs late in the backward, when most saved tensors are freed).

    >>> sums = OpSums([1.0, 4.0, 4.0])
    >>> sums.ceiling(2.5), sums.ceiling(6.0)
    (4.0, 8.0)
    >>> [round(float(level), 2) for level in sums.levels()]
    [1.0, 4.0, 5.0, 8.0]
    >>> sums.choose(8.0)
    [1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRID = 8192


class OpSums:
    """The sums of subsets of ``spends`` (one per op, in the order the ops run), to 1/GRID of their total."""

    def __init__(self, spends: Sequence[float]):
        self.spends = np.asarray(spends, dtype=np.float64)
        total = float(self.spends.sum())
        self.unit = total / GRID if total > 0 else 1.0
        self.weights = np.maximum(1, np.rint(self.spends / self.unit)).astype(np.int64)
        size = int(self.weights.sum()) + 1
        # reach[i][u]: some subset of the ops from i on weighs u grid units.
        self._reach = np.zeros((len(self.weights) + 1, size), dtype=bool)
        self._reach[-1, 0] = True
        for i in range(len(self.weights) - 1, -1, -1):
            weight = self.weights[i]
            self._reach[i] = self._reach[i + 1]
            self._reach[i, weight:] |= self._reach[i + 1, : size - weight]

    def levels(self) -> np.ndarray:
        """Every sum some ops pay, none and all excluded, ascending, to the grid (``choose`` names the ops)."""
        return np.flatnonzero(self._reach[0])[1:-1] * self.unit

    def ceiling(self, need: float) -> float:
        """The least sum of whole ops that is at least ``need`` (``inf`` when all of them fall short)."""
        if need <= 0:
            return 0.0
        units = np.flatnonzero(self._reach[0])
        at_least = units[units >= need / self.unit - 0.5]  # half a unit: the grid's rounding
        return self._spend_of(self._choose_units(int(at_least[0]))) if len(at_least) else math.inf

    def choose(self, level: float) -> list[int]:
        """Positions of the earliest ops whose spends sum to ``level`` (a value of ``levels``)."""
        units = np.flatnonzero(self._reach[0])
        return self._choose_units(int(units[np.argmin(np.abs(units * self.unit - level))]))

    def _choose_units(self, units: int) -> list[int]:
        chosen = []
        for i, weight in enumerate(self.weights):
            if units >= weight and self._reach[i + 1, units - weight]:
                chosen.append(i)
                units -= int(weight)
        return chosen

    def _spend_of(self, positions: list[int]) -> float:
        return float(self.spends[positions].sum())
