"""The cost model: bytes, FLOPs and estimated time of every candidate node.

Bytes are kept as sympy expressions (symbolic when shapes are dynamic) and
evaluated with the shape environment's hints. FLOPs come from
``torch.utils.flop_counter``'s registry for matmuls, convolutions and
attention, and from the element count for everything else. Time is a
roofline, ``max(flops / flops_per_second, bytes moved / bytes_per_second)``,
with one exception that matters most: a fusible op (pointwise, view, cheap
reduction; ``passes.op_facts.is_fusible_recompute``) recomputed inside a
backward kernel that already reads its inputs costs only its arithmetic, plus
one write of its output when a non-fusible backward op (a matmul, say) needs
it materialised.

Prices, in the units the solver uses:
- saving node v costs ``bytes(v)`` (0 for parameters and buffers);
- recomputing v costs ``time(v)`` seconds (0 when the forward never computes v).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy
import torch
import torch.fx as fx

from .calibrate import DEFAULT_RATES, load_rates
from .passes import torch_internals as ti
from .passes.analysis import BACKWARD_ONLY, FORWARD, INPUT, GraphSummary
from .passes.op_facts import flop_formula, is_compute_bound, is_fusible_recompute, is_getitem, is_view
from .passes.plan import CutProblem


@dataclass(frozen=True)
class NodeCost:
    bytes_expr: sympy.Expr
    bytes: int
    flops: int
    time: float  # seconds to compute it standalone (roofline)
    recompute_time: float  # seconds to recompute it in the backward (fusion-aware)
    fused: bool  # recomputed inside a backward kernel that reads its inputs anyway
    compute_flops: int = 0  # FLOPs by the flop counter's formula (matmul, convolution, attention), else 0


@dataclass(frozen=True)
class CostTable:
    """Per-candidate costs, indexed like ``GraphSummary.nodes``."""

    costs: tuple[NodeCost, ...]
    flops_per_second: float
    bytes_per_second: float
    device: str

    def save_bytes(self, summary: GraphSummary) -> np.ndarray:
        """What keeping each candidate for the backward adds to memory. Graph inputs add
        nothing: parameters, buffers and the batch exist before the step and the caller
        holds them through it, which is also how the peak is counted (passes.joint_liveness).
        (An input that is an earlier graph's activation, after a graph break, does cost
        memory when kept; that case is priced like the batch.)"""
        values = np.array([c.bytes for c in self.costs], dtype=np.float64)
        values[summary.is_static | (summary.kind == INPUT)] = 0.0
        return values

    def recompute_seconds(self, summary: GraphSummary) -> np.ndarray:
        """Seconds recomputing each candidate in the backward adds (0 when the forward does not compute it)."""
        values = np.array([c.recompute_time for c in self.costs], dtype=np.float64)
        values[summary.kind != FORWARD] = 0.0
        return values

    def save_time(self, summary: GraphSummary) -> np.ndarray:
        """Seconds saving each candidate adds to the step: a value only the backward uses is
        computed in the forward just to be saved, and the forward's kernel must write it out
        (a buffer Inductor would otherwise never materialise). Other values cost nothing extra."""
        values = np.array([c.bytes for c in self.costs], dtype=np.float64)
        values[(summary.kind != BACKWARD_ONLY) | summary.is_view] = 0.0
        return values / self.bytes_per_second

    def recompute_flops(self, summary: GraphSummary) -> np.ndarray:
        """Compute-bound FLOPs of recomputing each candidate: what fractional budgets count."""
        values = np.array([c.compute_flops for c in self.costs], dtype=np.float64)
        values[summary.kind != FORWARD] = 0.0
        return values

    def step_seconds(self, summary: GraphSummary) -> float:
        """The step's estimated time with nothing recomputed: the forward's roofline time
        times three (a backward costs about twice its forward: two matmuls per matmul)."""
        return 3.0 * float(sum(c.time for c, kind in zip(self.costs, summary.kind) if kind == FORWARD))

    def problem(self, summary: GraphSummary) -> CutProblem:
        return CutProblem(
            summary,
            self.save_bytes(summary),
            self.recompute_seconds(summary),
            self.recompute_flops(summary),
            self.save_time(summary),
        )

    @property
    def default_lambda(self) -> float:
        """Bytes per second of recompute: a byte saved costs one byte of memory traffic.

        At this lambda the cut minimises estimated time (reading a saved tensor
        back versus recomputing it), so the default plan is no slower than
        saving everything, and the cut's byte term picks the least memory
        among equally fast plans.
        """
        return self.bytes_per_second


def _tensor_bytes(val: object) -> sympy.Expr | int:
    """Bytes of a node's value: an int for static shapes, a sympy expression otherwise."""
    if isinstance(val, torch.Tensor):
        sizes = [ti.sym_expr(s) if isinstance(s, torch.SymInt) else int(s) for s in val.shape]
        numel = math.prod(sizes) if sizes else 1
        return numel * val.dtype.itemsize
    if isinstance(val, (list, tuple)):
        return sum((_tensor_bytes(v) for v in val), 0)
    if isinstance(val, (torch.SymInt, torch.SymBool, int, bool)):
        return 8
    return 0


def _hint(expr: sympy.Expr | int, val: object) -> int:
    if isinstance(expr, int):
        return expr
    expr = sympy.expand(expr)
    if not expr.free_symbols:
        return int(expr)
    shape_env = _shape_env(val)
    if shape_env is not None:
        try:
            return ti.hint_expr(shape_env, expr)
        except Exception:
            pass
    return int(expr.subs({s: 4096 for s in expr.free_symbols}))


def _shape_env(val: object):
    vals = val if isinstance(val, (list, tuple)) else (val,)
    for v in vals:
        if isinstance(v, torch.Tensor):
            for s in v.shape:
                if isinstance(s, torch.SymInt):
                    return s.node.shape_env
    return None


def _to_int(value: object) -> int:
    if isinstance(value, torch.SymInt):
        return ti.hint_int(value)
    return int(value)


def _numel(val: object) -> int:
    if isinstance(val, torch.Tensor):
        return math.prod(_to_int(s) for s in val.shape)
    if isinstance(val, (list, tuple)):
        return sum(_numel(v) for v in val)
    return 0


def _arg_vals(node: fx.Node):
    def value(a):
        return a.meta.get("val") if isinstance(a, fx.Node) else a

    args = torch.fx.node.map_aggregate(node.args, value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    return args, kwargs


def _node_numel(node: fx.Node) -> int:
    return _numel(node.meta.get("val"))


def node_flops(node: fx.Node, numel_of: Callable[[fx.Node], int] = _node_numel) -> int:
    """FLOPs of one node: the flop counter's formula where it has one, else element counts.

    ``numel_of`` gives a node's element count (``CostModel.table`` passes a cached one).
    """
    if node.op != "call_function" or is_getitem(node):
        return 0
    if is_compute_bound(node):
        args, kwargs = _arg_vals(node)
        try:
            return _to_int(flop_formula(node)(*args, **kwargs, out_val=node.meta.get("val")))
        except Exception:
            pass
    input_numel = max((numel_of(a) for a in node.all_input_nodes), default=0)
    return max(numel_of(node), input_numel)


class _Sizes:
    """Each node's bytes (as ``_tensor_bytes`` gives them, and hinted to an int) and
    element count, computed once. Static shapes take a plain-int path, no sympy."""

    def __init__(self):
        self._cache: dict[fx.Node, tuple[sympy.Expr | int, int, int]] = {}

    def __call__(self, node: fx.Node) -> tuple[sympy.Expr | int, int, int]:
        found = self._cache.get(node)
        if found is None:
            found = self._cache[node] = self._measure(node.meta.get("val"))
        return found

    @staticmethod
    def _measure(val: object) -> tuple[sympy.Expr | int, int, int]:
        if isinstance(val, torch.Tensor):
            shape = val.shape
            if not any(isinstance(size, torch.SymInt) for size in shape):
                numel = math.prod(shape)
                return numel * val.dtype.itemsize, numel * val.dtype.itemsize, numel
        raw = _tensor_bytes(val)
        return raw, _hint(raw, val), _numel(val)

    def bytes(self, node: fx.Node) -> int:
        return self(node)[1]

    def numel(self, node: fx.Node) -> int:
        return self(node)[2]


class CostModel:
    """Prices the candidates of a graph summary on a machine with the given rates."""

    def __init__(self, flops_per_second: float | None = None, bytes_per_second: float | None = None):
        self._flops_per_second = flops_per_second
        self._bytes_per_second = bytes_per_second

    def rates_for(self, device: str) -> tuple[float, float]:
        """The knobs' rates, else what ``rematpass calibrate`` measured for ``device``, else DEFAULT_RATES."""
        if self._flops_per_second and self._bytes_per_second:
            return self._flops_per_second, self._bytes_per_second
        calibrated = load_rates(device)
        if calibrated is not None:
            default_flops, default_bytes = calibrated.flops_per_second, calibrated.bytes_per_second
        else:
            default_flops, default_bytes = DEFAULT_RATES.get(device, DEFAULT_RATES["cpu"])
        return (self._flops_per_second or default_flops, self._bytes_per_second or default_bytes)

    @staticmethod
    def _read_by_unfusible_backward_op(node: fx.Node, forward_nodes: set[fx.Node]) -> bool:
        """Whether some backward op that cannot fuse a recomputation of ``node`` reads it (through
        views): then the recomputation writes a buffer. Not the peak model's question (does a value
        get a buffer, passes.liveness.inductor_materialized): which consumers fuse a recomputation
        is ``op_facts.is_fusible_recompute``, where the two differ."""
        pending = [node]
        while pending:
            current = pending.pop()
            for user in current.users:
                if user.op == "output" or user in forward_nodes:
                    continue
                if is_view(user):
                    pending.append(user)
                elif not is_fusible_recompute(user):
                    return True
        return False

    def table(self, summary: GraphSummary) -> CostTable:
        device = _graph_device(summary)
        flops_rate, bytes_rate = self.rates_for(device)
        forward_nodes = {n for n, k in zip(summary.nodes, summary.kind.tolist()) if k == FORWARD}
        sizes = _Sizes()
        views = summary.is_view.tolist()

        costs = []
        for i, node in enumerate(summary.nodes):
            raw, nbytes, _ = sizes(node)
            expr = sympy.expand(raw) if not isinstance(raw, int) else sympy.Integer(raw)
            if node.op != "call_function" or views[i] or is_getitem(node) or ti.is_sym_node(node):
                costs.append(NodeCost(expr, nbytes, 0, 0.0, 0.0, True))
                continue
            flops = node_flops(node, sizes.numel)
            compute_flops = flops if is_compute_bound(node) else 0
            moved = nbytes + sum(sizes.bytes(a) for a in node.all_input_nodes)
            time = max(flops / flops_rate, moved / bytes_rate)
            fused = is_fusible_recompute(node)
            if fused:
                recompute = flops / flops_rate
                if self._read_by_unfusible_backward_op(node, forward_nodes):
                    recompute += nbytes / bytes_rate
                    fused = False
            else:
                recompute = time
            costs.append(NodeCost(expr, nbytes, flops, time, recompute, fused, compute_flops))
        return CostTable(tuple(costs), flops_rate, bytes_rate, device)


def _graph_device(summary: GraphSummary) -> str:
    for node in summary.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.device.type
    return "cpu"
