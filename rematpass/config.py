"""The knobs of the ``remat`` backend, validated at the boundary.

Knobs resolve, lowest precedence first: the defaults below, ``REMAT_*``
environment variables, ``rematpass.config.patch(...)``, and the ``options``
dict given to ``torch.compile``::

    >>> import rematpass
    >>> with rematpass.config.patch(memory_budget=0.5):
    ...     rematpass.config.resolve().memory_budget
    0.5
    >>> rematpass.config.resolve({"memory_budget": "1.5GiB"}).memory_budget
    1610612736

A bad knob raises ``KnobError`` naming the knob and what it allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .budget import Budget, DefaultPlan, Fastest, parse_budget
from .passes.torch_internals import OpOverload, OpOverloadPacket

ENV_PREFIX = "REMAT_"


class KnobError(ValueError):
    """A knob was given a name, type or value it does not accept."""


@dataclass(frozen=True)
class Knobs:
    """Every setting the partitioner reads. Frozen and picklable: part of the cache key."""

    # What the user asked for, validated; what it means is ``budget`` below (rematpass.budget).
    # None or 1.0: the default plan (least predicted peak within time_tolerance of the fastest).
    # float in [0, 1): fraction on PyTorch's activation_memory_budget scale, spent as a
    #   recompute allowance on the least predicted peak (0 = least-peak plan).
    # int bytes (or a string such as "1.5GiB"): cap on the step's peak memory, checked on
    #   Inductor's schedule when verify_peak is on.
    memory_budget: float | int | None = None
    # Machine rates for the roofline; None picks a default for the graph's device.
    flops_per_second: float | None = None
    bytes_per_second: float | None = None
    # Op policies: op names such as "aten.mm" or "mm".
    never_recompute: tuple[str, ...] = ()
    always_recompute: tuple[str, ...] = ()
    # Raise instead of falling back to PyTorch's partitioner when planning fails.
    strict: bool = False
    # Write each partitioned graph's plan and graphs under this folder.
    dump_dir: str | None = None
    # "mincut" (default) or "ilp": the fastest plan solved exactly by an ILP (small graphs), falling
    # back to min-cut. The ILP has no peak model, so time_tolerance does not apply to it and it is
    # not combinable with a memory_budget (KnobError).
    solver: str = "mincut"
    # Seconds the ILP solver may take before we fall back to the min-cut plan.
    ilp_time_limit: float = 30.0
    # How the peak predictor models allocation: "fused" (Inductor: pointwise ops
    # fused into their consumers allocate nothing) or "unfused" (every op allocates,
    # as in aot_eager-style backends).
    peak_model: str = "fused"
    # Let Inductor hold a freed buffer for a later allocation of the same size (its
    # allow_buffer_reuse). Off by default: the held buffer stays allocated across the
    # kernels between, above the peak the plan was chosen for (docs/design.md, section 8).
    buffer_reuse: bool = False
    # The default plan (memory_budget None) may cost up to this fraction of the step's estimated
    # time more than the fastest plan, and among those it takes the least predicted peak. 0: the
    # fastest plan.
    time_tolerance: float = 0.01
    # Under a memory_budget, check plans on the peak of the kernels Inductor schedules for them
    # (rematpass.verify): probed without compiling (rematpass.schedule_probe), so the budget
    # compiles once and is cached; where the schedule cannot be probed, compiled one by one (at
    # most MAX_RECOMPILES more), and the aim kept is remembered for the next run. A byte cap takes
    # smaller plans while over; a fraction, shallower plans while they schedule a lower peak.
    verify_peak: bool = True
    # The LM head and its cross-entropy in chunks of tokens (passes.loss_head): "auto" (the head's
    # vocabulary over its hidden size), a number of chunks, or 0 (off).
    loss_chunks: str | int = "auto"
    # memory_budget and time_tolerance parsed once (rematpass.budget): what every later stage reads.
    budget: Budget = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "budget", parse_budget(self.memory_budget, self.time_tolerance))


KNOB_HELP = {
    "memory_budget": "None, a float in [0, 1], a byte count (int >= 2) or a size string like '1.5GiB' or '800MB'",
    "flops_per_second": "None or a positive number",
    "bytes_per_second": "None or a positive number",
    "never_recompute": "a list of op names such as ['aten.mm', 'convolution'] (or a comma-separated string)",
    "always_recompute": "a list of op names such as ['aten.gelu'] (or a comma-separated string)",
    "strict": "True or False",
    "dump_dir": "None or a folder path (string or os.PathLike)",
    "solver": "'mincut' or 'ilp' (the fastest plan solved exactly; not with a memory_budget below 1)",
    "ilp_time_limit": "a positive number of seconds",
    "peak_model": "'fused' (Inductor) or 'unfused' (every op allocates)",
    "buffer_reuse": "True or False",
    "time_tolerance": "a fraction of the step's estimated time in [0, 1), e.g. 0.01 (0: the fastest plan)",
    "verify_peak": "True or False",
    "loss_chunks": "'auto', a number of chunks (int >= 1), or 0 to leave the loss head whole",
}

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def _fail(name: str, value: Any, why: str = "") -> KnobError:
    detail = f" ({why})" if why else ""
    return KnobError(f"rematpass knob {name}={value!r} is not allowed{detail}; allowed: {KNOB_HELP[name]}")


def parse_size(text: str) -> int:
    """``"1.5GiB"`` -> 1610612736. Raises ValueError on anything else."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _memory_budget(value: Any) -> float | int | None:
    name = "memory_budget"
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(name, value, "a bool is neither a fraction nor a size")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise _fail(name, value, "a fraction must lie in [0, 1]; give larger budgets in bytes")
        return value
    if isinstance(value, int):
        if value in (0, 1):
            raise _fail(name, value, "ambiguous: write 0.0 / 1.0 for a fraction or '1B' for bytes")
        if value < 0:
            raise _fail(name, value, "negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "none":
            return None
        try:
            number = float(text)
        except ValueError:
            try:
                return parse_size(text)
            except ValueError:
                raise _fail(name, value) from None
        if "." in text or "e" in text.lower():
            return _memory_budget(number)
        return _memory_budget(int(number))
    raise _fail(name, value, f"wrong type {type(value).__name__}")


def _rate(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _fail(name, value) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, f"wrong type {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise _fail(name, value, "must be positive and finite")
    return float(value)


def canonical_op_name(name: Any, knob: str) -> str:
    """``"mm"``, ``"aten.mm"``, ``"aten::mm"``, ``"aten.mm.default"`` or the op itself -> ``"aten.mm"``."""
    if isinstance(name, OpOverload):
        name = name.overloadpacket
    if isinstance(name, OpOverloadPacket):
        return f"{name._qualified_op_name.split('::')[0]}.{name.__name__}"
    if not isinstance(name, str) or not name.strip():
        raise _fail(knob, name, "each op must be a name or a torch op")
    parts = name.strip().replace("::", ".").split(".")
    if len(parts) == 1:
        parts = ["aten", parts[0]]
    namespace, op = parts[0], parts[1]
    try:
        getattr(getattr(torch.ops, namespace), op)
    except (AttributeError, RuntimeError):
        raise _fail(knob, name, f"no op {namespace}.{op} in torch.ops") from None
    return f"{namespace}.{op}"


def _ops(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _fail(name, value, f"wrong type {type(value).__name__}")
    return tuple(sorted({canonical_op_name(v, name) for v in value}))


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise _fail(name, value)


def _dump_dir(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise _fail("dump_dir", value, f"wrong type {type(value).__name__}")


def _solver(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("mincut", "ilp"):
        return value.strip().lower()
    raise _fail("solver", value)


def _peak_model(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("fused", "unfused"):
        return value.strip().lower()
    raise _fail("peak_model", value)


def _time_tolerance(value: Any) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not 0 <= number < 1:
        raise _fail("time_tolerance", value)
    return number


def _loss_chunks(value: Any) -> str | int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail("loss_chunks", value)


def _time_limit(value: Any) -> float:
    rate = _rate("ilp_time_limit", value)
    if rate is None:
        raise _fail("ilp_time_limit", value)
    return rate


_VALIDATORS = {
    "memory_budget": _memory_budget,
    "flops_per_second": functools.partial(_rate, "flops_per_second"),
    "bytes_per_second": functools.partial(_rate, "bytes_per_second"),
    "never_recompute": functools.partial(_ops, "never_recompute"),
    "always_recompute": functools.partial(_ops, "always_recompute"),
    "strict": functools.partial(_bool, "strict"),
    "dump_dir": _dump_dir,
    "solver": _solver,
    "ilp_time_limit": _time_limit,
    "peak_model": _peak_model,
    "buffer_reuse": functools.partial(_bool, "buffer_reuse"),
    "time_tolerance": _time_tolerance,
    "verify_peak": functools.partial(_bool, "verify_peak"),
    "loss_chunks": _loss_chunks,
}
KNOB_NAMES = tuple(f.name for f in dataclasses.fields(Knobs) if f.init)
assert set(KNOB_NAMES) == set(_VALIDATORS) == set(KNOB_HELP)


def _check_names(values: Mapping[str, Any], where: str) -> None:
    if not isinstance(values, Mapping):
        raise KnobError(f"rematpass {where} must be a dict of knobs, got {type(values).__name__}")
    for name in values:
        if name not in _VALIDATORS:
            close = [k for k in KNOB_NAMES if _similar(k, str(name))]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KnobError(f"unknown rematpass knob {name!r} in {where}.{hint} Known knobs: {', '.join(KNOB_NAMES)}")


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.7


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Knobs set as ``REMAT_<NAME>`` (e.g. ``REMAT_MEMORY_BUDGET=0.5``)."""
    environ = os.environ if environ is None else environ
    found = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in _VALIDATORS:
                found[name] = value
            elif name not in _IGNORED_ENV:
                _check_names({name: value}, f"environment variable {key}")
    return found


# REMAT_* variables that are not knobs: REMAT_RATES_FILE says where `rematpass calibrate` keeps
# the measured rates (rematpass.calibrate).
_IGNORED_ENV: frozenset[str] = frozenset({"rates_file"})

_local = threading.local()


def _patches() -> list[dict[str, Any]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


class patch(contextlib.ContextDecorator):
    """Set knobs for the compiles that happen inside (context manager or decorator).

    Compilation happens at a compiled model's first call, so the call, not the
    ``torch.compile`` line, must run inside the patch.
    """

    def __init__(self, **values: Any):
        _check_names(values, "rematpass.config.patch")
        for name, value in values.items():
            _VALIDATORS[name](value)
        self._values = values

    def __enter__(self):
        _patches().append(self._values)
        return self

    def __exit__(self, *exc):
        _patches().pop()
        return False


def resolve(options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Knobs:
    """Knobs from defaults < environment < patches < options, each value validated."""
    merged: dict[str, Any] = {}
    layers = [("environment", from_environment(environ))]
    layers += [("rematpass.config.patch", p) for p in _patches()]
    layers.append(("torch.compile options", dict(options or {})))
    for where, values in layers:
        _check_names(values, where)
        for name, value in values.items():
            merged[name] = _VALIDATORS[name](value)
    knobs = Knobs(**merged)
    _check_solver_with_budget(knobs)
    return knobs


def _check_solver_with_budget(knobs: Knobs) -> None:
    """The ILP solves the fastest plan's objective (saved bytes + lambda * time) exactly. Budgets
    and time_tolerance are planned on the predicted peak, which the ILP does not model: with
    solver='ilp' a memory_budget is refused, and time_tolerance does not apply (documented)."""
    budget = knobs.memory_budget
    if knobs.solver == "ilp" and not isinstance(knobs.budget, (Fastest, DefaultPlan)):
        raise KnobError(
            f"rematpass knob solver='ilp' cannot be combined with memory_budget={budget!r}: the ILP solves "
            "the default plan exactly and does not model the predicted peak a budget is planned on; "
            "allowed: solver='ilp' with memory_budget None or 1.0, or solver='mincut' with any memory_budget"
        )
