"""Verify before promising: a byte ``memory_budget`` is checked against the peak of the kernels
Inductor actually scheduled, and the graph is recompiled with a smaller plan when it is over.

The planner's peak model does not see Inductor's fusion, ordering and in-place writes; on deep
recomputation it can be far low (benchmarks/RESULTS_bench.md gives the measured ratios). ``rematpass.scheduled_peak`` reads the schedule after
codegen instead. When that is over the budget, the next attempt aims the planner's predicted
peak lower by the ratio just observed (predicted / scheduled), since a nearby plan is usually
misjudged by about as much.

Deep recomputation can also schedule a higher peak than a shallower plan, the opposite of what
the planner predicts. So while no attempt fits (and under a fractional budget, a promise that a
lower fraction never peaks higher, whenever the schedule is more than ``CLIMB_ABOVE`` over the
prediction), the search climbs to shallower plans of the planner's frontier and goes on while the
scheduled peak does not rise, until ``FLAT_STEPS`` plans in a row schedule the same peak. Under a
byte budget, a plan that fits with room to spare is followed by shallower plans predicted within
the cap (``widen``): the planner errs both ways, and the plan that fits with the least
recomputation is the one to keep. After ``MAX_RECOMPILES``
recompiles the kept attempt is chosen by ``kept_index`` (every attempt's compiled code is held
until then, so the kept one is not compiled again), with a warning giving the figures when it is
over a byte budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .user_warnings import RematBudgetWarning, warn_at_user_code

MAX_RECOMPILES = 4
# The climb stops after this many shallower plans in a row scheduled the same peak (OLMo 2's
# least-peak plan and the four above it all scheduled 10,374,916 bytes: a probe each, for nothing).
FLAT_STEPS = 2
# A fraction's plan whose schedule is within this of its predicted peak is kept without trying
# shallower plans: near there the planner's order of plans is trusted.
CLIMB_ABOVE = 0.05
# Under a byte cap, a fitting plan scheduled more than WIDEN_BELOW under the cap is followed by up
# to MAX_WIDEN shallower plans predicted no more than WIDEN_SLACK over it (the planner errs both
# ways: a small model's default plan measured at its own peak was predicted 0.05% over it; suite
# plans are predicted up to 5.1% over their schedule, and a small Llama's plan predicted 3.1% over
# a cap of 1.1x its least-peak plan's peak schedules within it).
WIDEN_BELOW = 0.03
WIDEN_SLACK = 0.05
MAX_WIDEN = 2


@dataclass(frozen=True)
class VerifyAttempt:
    """One compile under a byte budget: what the planner aimed its predicted peak at, what it
    predicted for the plan it chose, and the peak of Inductor's schedule of that plan."""

    aim_bytes: int
    predicted_peak_bytes: int
    scheduled_peak_bytes: int
    saved_bytes: int


@dataclass
class CompileOutcome:
    """What one compile produced: the compiled callable, the report of its partition (None when
    our partitioner did not run: a cache hit, a fallback, no backward), and the step's peak as
    Inductor scheduled it (None when the schedule could not be read)."""

    compiled: Any
    report: Any = None
    scheduled_peak_bytes: int | None = None
    dump_folder: Any = None  # the partition's dump folder, when the dump_dir knob is set
    cache_hit: bool = False  # served from AOTAutograd's cache (the partitioner did not run)
    aim: int | None = None  # the predicted-peak aim it was planned for (None: the knobs' own plan)


def least_predicted_peak(report) -> int:
    """The least predicted peak among the plans the planner scored for this graph."""
    peaks = [p.predicted_peak_bytes for p in report.peak_plans]
    return min(peaks + [report.predicted_peak_bytes])


def climbing_ladder(peak_plans) -> list[int]:
    """Predicted peaks of the plans the planner would pick for some byte budget: those no other
    scored plan beats on both recompute time and predicted peak. Ascending."""
    ladder: list[int] = []
    fastest = float("inf")
    for plan in sorted(peak_plans, key=lambda p: (p.predicted_peak_bytes, p.time_cost)):
        if plan.time_cost < fastest:
            ladder.append(plan.predicted_peak_bytes)
            fastest = plan.time_cost
    return ladder


def next_aim(cap: int, attempt: VerifyAttempt, least: int) -> int | None:
    """The predicted peak to aim the next plan at, or None when no smaller plan is left."""
    if attempt.predicted_peak_bytes <= least:
        return None
    scaled = cap * attempt.predicted_peak_bytes / max(attempt.scheduled_peak_bytes, 1)
    return max(least, min(int(scaled), attempt.predicted_peak_bytes - 1))


def compile_within(cap: int | None, compile_once: Callable[[int | None], CompileOutcome]) -> CompileOutcome:
    """Compile under byte budget ``cap`` (None: a fractional budget, which has no cap but must not
    peak higher than a shallower plan would). ``compile_once(aim)`` compiles a fresh plan: with
    ``aim=None`` the plan the user's knobs ask for, else the plan the planner picks for a predicted
    peak of ``aim`` bytes. The user's knobs are never rewritten: each report keeps them."""
    attempts: list[tuple[VerifyAttempt, CompileOutcome]] = []
    outcome = compile_once(None)
    first_report = outcome.report
    if not _verifiable(outcome):
        _warn_unverified(cap, outcome)
        return outcome
    attempts.append((_attempt(None, outcome), outcome))

    # Down: a plan over the cap makes way for one aimed lower by the error just seen.
    while cap is not None and attempts[-1][0].scheduled_peak_bytes > cap and len(attempts) <= MAX_RECOMPILES:
        aim = next_aim(cap, attempts[-1][0], least_predicted_peak(outcome.report))
        if aim is None:
            break
        outcome = _try(aim, compile_once, attempts)
        if outcome is None:
            break

    # Up: deep recomputation can schedule worse than a shallower plan (Inductor holds recomputed
    # buffers the planner thought it would free). While no attempt fits, climb the planner's
    # frontier of shallower plans one at a time, and go on while the scheduled peak does not rise.
    best = _least_scheduled(attempts)[0]
    if cap is None and best.scheduled_peak_bytes <= best.predicted_peak_bytes * (1 + CLIMB_ABOVE):
        return _finish(cap, attempts)
    ladder = climbing_ladder(first_report.peak_plans)
    tried = {a.predicted_peak_bytes for a, _ in attempts}
    last, flat = best, 0
    while (cap is None or best.scheduled_peak_bytes > cap) and len(attempts) <= MAX_RECOMPILES:
        higher = [p for p in ladder if p > last.predicted_peak_bytes and p not in tried]
        if not higher:
            break
        tried.add(higher[0])
        outcome = _try(higher[0], compile_once, attempts)
        if outcome is None or attempts[-1][0].scheduled_peak_bytes > last.scheduled_peak_bytes:
            break
        flat = flat + 1 if attempts[-1][0].scheduled_peak_bytes == last.scheduled_peak_bytes else 0
        last = attempts[-1][0]
        if last.scheduled_peak_bytes < best.scheduled_peak_bytes:
            best = last
        if flat >= FLAT_STEPS:  # the peak is set by what these plans share: no shallower plan moves it
            break

    if cap is not None:
        widen(cap, ladder, compile_once, attempts)
    return _finish(cap, attempts)


def widen(cap: int, ladder: list[int], compile_once, attempts: list) -> None:
    """Try shallower plans than the shallowest that fits ``cap`` with room to spare: the
    shallowest plan of the ``ladder`` predicted within ``WIDEN_SLACK`` of the cap, then, once one
    was seen over the cap, the next plan down the ladder from it. (Not scaled by its error as
    ``next_aim`` aims: a small GPT's default plan, predicted 0.05% over a cap its schedule meets,
    was missed by 55 bytes that way.)"""
    for _ in range(MAX_WIDEN):
        fitting = [a for a, _ in attempts if a.scheduled_peak_bytes <= cap]
        if not fitting or len(attempts) > MAX_RECOMPILES:
            return
        shallowest = max(fitting, key=lambda a: a.predicted_peak_bytes)
        if shallowest.scheduled_peak_bytes >= cap * (1 - WIDEN_BELOW):
            return
        ceiling = cap * (1 + WIDEN_SLACK)
        over = [a for a, _ in attempts if a.scheduled_peak_bytes > cap > 0]
        over = [a for a in over if a.predicted_peak_bytes > shallowest.predicted_peak_bytes]
        if over:  # the next plan down the ladder from the least one seen over the cap
            ceiling = min(ceiling, min(a.predicted_peak_bytes for a in over) - 1)
        tried = {a.predicted_peak_bytes for a, _ in attempts}
        candidates = [p for p in ladder if shallowest.predicted_peak_bytes < p <= ceiling and p not in tried]
        if not candidates or _try(max(candidates), compile_once, attempts) is None:
            return


def _finish(cap: int | None, attempts: list) -> CompileOutcome:
    """Keep the attempt ``kept_index`` chooses, as compiled."""
    history = tuple(a for a, _ in attempts)
    best, outcome = attempts[kept_index(history, cap)]
    if outcome.report is not None:
        outcome.report = dataclasses.replace(
            outcome.report, scheduled_peak_bytes=outcome.scheduled_peak_bytes, verification=history
        )
    if cap is not None and best.scheduled_peak_bytes > cap:
        warn_at_user_code(
            f"rematpass: memory_budget={cap:,} bytes cannot be met on this graph: of the {len(history)} plans "
            f"compiled, the least peaks at {best.scheduled_peak_bytes:,} bytes in Inductor's schedule "
            f"(predicted {best.predicted_peak_bytes:,}); keeping that one",
            RematBudgetWarning,
        )
    return outcome


def kept_index(history, cap: int | None = None) -> int:
    """Which of a graph's attempts (``VerifyAttempt``s, in the order compiled) is kept: under a
    byte ``cap``, of those scheduled within it, the shallowest (the greatest predicted peak: the
    least recomputation); otherwise the least scheduled peak. The latest of equals."""
    fitting = [a for a in history if cap is not None and a.scheduled_peak_bytes <= cap]
    if fitting:
        shallowest = max(a.predicted_peak_bytes for a in fitting)
        return max(i for i, a in enumerate(history) if a in fitting and a.predicted_peak_bytes == shallowest)
    least = min(a.scheduled_peak_bytes for a in history)
    return max(i for i, a in enumerate(history) if a.scheduled_peak_bytes == least)


def budget_cap(report) -> int | None:
    """The byte cap of the budget ``report`` was planned under, or None (a fraction, no budget)."""
    cap = getattr(getattr(getattr(report, "knobs", None), "budget", None), "bytes", None)
    return cap if isinstance(cap, int) else None


def _least_scheduled(attempts: list) -> tuple[VerifyAttempt, CompileOutcome]:
    return attempts[kept_index([a for a, _ in attempts])]


def _verifiable(outcome: CompileOutcome) -> bool:
    report = outcome.report
    return report is not None and outcome.scheduled_peak_bytes is not None and report.predicted_peak_bytes is not None


def _attempt(aim: int | None, outcome: CompileOutcome) -> VerifyAttempt:
    return VerifyAttempt(
        aim_bytes=aim if aim is not None else int(outcome.report.target_peak_bytes or 0),
        predicted_peak_bytes=outcome.report.predicted_peak_bytes,
        scheduled_peak_bytes=outcome.scheduled_peak_bytes,
        saved_bytes=outcome.report.saved_bytes,
    )


def _try(aim: int, compile_once, attempts: list) -> CompileOutcome | None:
    """Compile the plan the planner picks for a predicted peak of ``aim`` bytes; None if unreadable."""
    outcome = compile_once(int(aim))
    if not _verifiable(outcome):
        return None
    attempts.append((_attempt(int(aim), outcome), outcome))
    return outcome


def _warn_unverified(cap: int | None, outcome: CompileOutcome) -> None:
    report = outcome.report
    if cap is not None and report is not None and not report.budget_met:
        warn_at_user_code(
            f"rematpass: memory_budget={cap:,} bytes cannot be met on this graph; the least-memory plan "
            f"saves {report.saved_bytes:,} bytes and is predicted to peak at "
            f"{report.predicted_peak_bytes:,} bytes (Inductor's schedule could not be read)",
            RematBudgetWarning,
        )
