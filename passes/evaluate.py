"""Score and check any plan the same way, whichever solver made it.

``violations`` lists every rule a plan breaks (empty for a valid plan): what
the backward reads is saved or computed in the backward, everything computed
in the backward has its inputs saved or computed there too, and the hard
rules (cannot save, cannot recompute, must recompute) hold.

``quantized_objective`` prices a plan in the max-flow's own integer units at
a given lambda, so a min cut and an ILP optimum compare exactly.
"""

from __future__ import annotations

import numpy as np

from .analysis import FORWARD
from .flow import quantize
from .mincut import CutNetwork, hard_rules
from .plan import Cut, CutProblem


def violations(problem: CutProblem, cut: Cut, *, limit: int = 10) -> list[str]:
    """The rules ``cut`` breaks, naming up to ``limit`` nodes for each."""
    s = problem.summary
    no_save, no_recompute = hard_rules(s)
    saved, in_backward = cut.saved, cut.in_backward
    available = saved | in_backward
    edge_bad = in_backward[s.edge_dst] & ~available[s.edge_src]
    checks = {
        "saved although it cannot be saved": saved & no_save,
        "computed in the backward although it cannot be recomputed": in_backward & no_recompute,
        "both saved and computed in the backward": saved & in_backward,
        "read by the backward but neither saved nor computed there": (s.needed_by_backward | s.must_recompute)
        & ~available,
        "must be recomputed but is not": s.must_recompute & ~in_backward,
        "recomputed mismatch (recomputed != in_backward & FORWARD)": cut.recomputed
        != (in_backward & (s.kind == FORWARD)),
    }
    found = []
    for rule, bad in checks.items():
        if bad.any():
            found.append(f"{rule}: {_names(s, np.flatnonzero(bad)[:limit])}")
    if edge_bad.any():
        pairs = [
            f"{s.nodes[u].name}->{s.nodes[v].name}"
            for u, v in zip(s.edge_src[edge_bad][:limit], s.edge_dst[edge_bad][:limit])
        ]
        found.append(f"computed in the backward from an input that is neither saved nor computed there: {pairs}")
    saved_bytes = float(problem.save_bytes[saved & ~s.is_static].sum())
    time_cost = problem.time_of(cut.saved, cut.recomputed)
    if not np.isclose(saved_bytes, cut.saved_bytes, rtol=1e-12, atol=0):
        found.append(f"saved_bytes {cut.saved_bytes} but the saved nodes hold {saved_bytes}")
    if not np.isclose(time_cost, cut.time_cost, rtol=1e-9, atol=1e-300):
        found.append(f"time_cost {cut.time_cost} but the recomputed and saved nodes cost {time_cost}")
    return found


def _names(summary, indices) -> list[str]:
    return [summary.nodes[i].name for i in indices]


def quantized_objective(problem: CutProblem, lam: float, cut: Cut, network: CutNetwork | None = None) -> int:
    """``saved bytes + lam * recompute cost`` of ``cut`` in the max-flow's integer units at ``lam``.

    Exactly the value of the s-t cut the plan corresponds to, so for a min
    cut it equals the max-flow value.
    """
    save, recompute, _ = (network or CutNetwork(problem)).quantized_node_costs(lam)
    return int(save[cut.saved].sum() + recompute[cut.in_backward].sum())


def budget_costs(problem: CutProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(bytes a saved node counts against a budget, quantised time of saving it,
    quantised recompute cost, scale).

    The budget counts ``Cut.saved_bytes`` (parameters are free); time costs
    (``CutProblem.time_of``: recomputation, and the write a saved value may
    cost) are quantised on one scale of their own, so two plans under one
    budget compare exactly. Nodes that cannot be recomputed cost 0 to
    recompute here (they never are).
    """
    s = problem.summary
    n = s.num_nodes
    _, no_recompute = hard_rules(s)
    nbytes = np.where(s.is_static, 0.0, problem.save_bytes.astype(np.float64))
    cost = np.where(no_recompute | (s.kind != FORWARD), 0.0, problem.recompute_seconds.astype(np.float64))
    save_time = np.zeros(n) if problem.save_time is None else problem.save_time.astype(np.float64)
    quantised, scale = quantize(np.concatenate([save_time, cost]))
    quantised = quantised.astype(np.int64)
    return nbytes, quantised[:n], quantised[n:], scale


def budget_time(problem: CutProblem, cut: Cut) -> int:
    """A plan's time cost in ``budget_costs`` units."""
    _, save_time, recompute, _ = budget_costs(problem)
    return int(save_time[cut.saved].sum() + recompute[cut.recomputed].sum())
