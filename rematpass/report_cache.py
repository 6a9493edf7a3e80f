"""Reports kept beside Inductor's cache, so that a compile served from the cache has one too, and
the plan a budget's check kept, so that the next run compiles it once.

On an AOTAutograd cache hit Inductor never calls the partitioner: the cached forward and backward
were cut by the plan made when the entry was stored. The backend stores each graph's report here
when it partitions, keyed by what decides a plan (the graph Dynamo handed the backend, its inputs'
shapes, dtypes and strides, the knobs, rematpass's sources and the torch version), and on a cache
hit records the stored report, marked ``from_cache``, so ``rematpass.recent_reports()`` still
answers what was saved and why.

Under a budget the backend compiles plans until one fits what Inductor schedules
(rematpass.verify). Each attempt's report is stored under ``attempt_key(key, aim)`` (its
scheduled peak included, so a cache hit on it can be judged without codegen), and the aim of
the kept attempt under ``key`` (``store_kept_aim``), in the spirit of Dynamo's profile-guided
recompiles: the next run of the same graph under the same knobs compiles that plan once.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
    >>> key = graph_key(gm, [torch.randn(3, 2)], knobs_repr="Knobs()", sources="abc")
    >>> len(key)
    64
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import pickle
import tempfile
from collections.abc import Sequence

import torch

from .inductor_hooks import inductor_cache_dir

log = logging.getLogger("rematpass")

FOLDER = "rematpass_reports"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"T{tuple(value.shape)}{tuple(value.stride())}{value.dtype}{value.device.type}{value.requires_grad}"
    return f"{type(value).__name__}:{value}"


def graph_key(gm: torch.fx.GraphModule, example_inputs: Sequence[object], *, knobs_repr: str, sources: str) -> str:
    """What the plan of ``gm`` depends on, hashed. Parameter values do not decide a plan; shapes do."""
    parts = [gm.code, *map(_describe, example_inputs), knobs_repr, sources, torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def attempt_key(key: str, aim: int | None) -> str:
    """The key of one attempt of a budget's check: the graph's key and the attempt's aim."""
    return hashlib.sha256(f"{key} aim={aim}".encode()).hexdigest()


def _path(key: str, kind: str = "pkl") -> pathlib.Path:
    return pathlib.Path(inductor_cache_dir()) / FOLDER / f"{key}.{kind}"


def store_kept_aim(key: str, aim: int | None) -> None:
    """Remember which aim a budget's check kept for ``key`` (None: the plan the knobs ask for)."""
    _write_atomically(_path(key, "aim"), repr(aim).encode())


def load_kept_aim(key: str) -> tuple[bool, int | None]:
    """(found, aim) for ``key``; (False, None) when no check was remembered."""
    try:
        text = _path(key, "aim").read_text().strip()
        return True, None if text == "None" else int(text)
    except (OSError, ValueError):  # never stored, or unreadable: check again
        return False, None


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(data)
    os.replace(handle.name, path)


def store(key: str, report: object) -> None:
    """Keep ``report`` for ``key`` (atomically: a concurrent reader sees the old file or the new)."""
    _write_atomically(_path(key), pickle.dumps(report))


def load(key: str) -> object | None:
    """The report stored for ``key``, or None (never stored, or unreadable by this version)."""
    try:
        with open(_path(key), "rb") as handle:
            return pickle.load(handle)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a stale or foreign file must never break a compile
        log.debug("rematpass: stored report %s unreadable: %s", key, exc)
        return None
