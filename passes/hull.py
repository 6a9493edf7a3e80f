"""The lower convex hull of min-cut plans: (saved bytes, recompute cost) over lambda.

As lambda falls, saving gets relatively dearer and the min cut saves no more
bytes. Each hull edge is found by one solve at the lambda where the lines of
its two end plans cross (Eisner-Severance): a new plan there is a new
vertex; the same plan, or one on the segment already, means the two ends are
neighbours. Used to choose a budget plan by its peak (passes.peak) and to
draw the frontier in dumps (rematpass.inspect.dump).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .mincut import CutNetwork
from .plan import Cut

MAX_HULL_SOLVES = 48
# The far end of the hull, as a fraction of the default lambda: recompute cost still breaks ties
# between plans of equal bytes, but never outweighs a byte.
LOWEST_LAMBDA_FRACTION = 1e-7


@dataclass(frozen=True)
class HullWalk:
    vertices: list[Cut]  # the distinct plans found, most saved bytes first
    solved: list[Cut]  # every solve's plan, in the order solved
    complete: bool  # False when the solve count or time limit cut the walk short


def walk_hull(
    network: CutNetwork, lams: Sequence[float], *, max_solves: int = MAX_HULL_SOLVES, max_seconds: float = math.inf
) -> HullWalk:
    """Solve at each of ``lams`` (the walk's ends and any points in between), then fill in the hull between them."""
    started = time.perf_counter()
    solved: list[Cut] = []
    complete = True

    def solve(lam: float) -> Cut | None:
        nonlocal complete
        if len(solved) >= max_solves or time.perf_counter() - started > max_seconds:
            complete = False
            return None
        solved.append(network.solve(lam))
        return solved[-1]

    ends = [solve(lam) for lam in sorted(lams)]
    pending = [(a, b) for a, b in zip(ends, ends[1:]) if a is not None and b is not None and not a.same_plan(b)]
    while pending:
        low, high = pending.pop()
        lam = high.breakpoint(low)
        if lam is None or not low.lam < lam < high.lam:
            continue
        middle = solve(lam)
        if middle is None:
            break
        if middle.same_plan(low) or middle.same_plan(high):
            continue
        if not low.saved_bytes <= middle.saved_bytes <= high.saved_bytes:
            continue  # quantisation broke the nesting: not a vertex between these two
        if abs(middle.objective(lam) - low.objective(lam)) <= 1e-9 * max(1.0, low.objective(lam)):
            continue  # on the segment already: low and high are neighbours
        pending += [(low, middle), (middle, high)]
    vertices: list[Cut] = []
    for cut in sorted(solved, key=lambda c: (-c.saved_bytes, c.time_cost)):
        if not any(cut.same_plan(v) for v in vertices):
            vertices.append(cut)
    return HullWalk(vertices, solved, complete)
