"""Reports kept beside Inductor's cache, so that a compile served from the cache has one too.

On an AOTAutograd cache hit Inductor never calls the partitioner: the cached forward and backward
were cut by the plan made when the entry was stored. The backend stores each graph's report here
when it partitions, keyed by what decides a plan (the graph Dynamo handed the backend, its inputs'
shapes, dtypes and strides, the knobs, rematpass's sources and the torch version), and on a cache
hit records the stored report, marked ``from_cache``, so ``rematpass.recent_reports()`` still
answers what was saved and why.

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


def _path(key: str) -> pathlib.Path:
    return pathlib.Path(inductor_cache_dir()) / FOLDER / f"{key}.pkl"


def store(key: str, report: object) -> None:
    """Keep ``report`` for ``key`` (atomically: a concurrent reader sees the old file or the new)."""
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
        pickle.dump(report, handle)
    os.replace(handle.name, path)


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
