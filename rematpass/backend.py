"""The ``remat`` torch.compile backend.

    >>> import torch
    >>> model = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memory_budget": 0.5})

It hands the graph to Inductor with ``RematPartitioner`` as
``custom_partitioner_fn``; Inductor runs its joint-graph passes, calls our
partitioner, and compiles the forward and backward it returns.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from . import config
from .dump import watch_compile
from .partitioner import RematPartitioner


def remat(gm: torch.fx.GraphModule, example_inputs, *, options: Mapping[str, Any] | None = None, mode: str | None = None):
    """Compile ``gm`` with Inductor, partitioned by rematpass. Knobs come from ``options``."""
    from torch._inductor.compile_fx import compile_fx

    knobs = config.resolve(options)
    patches: dict[str, Any] = {}
    if mode is not None and mode != "default":
        patches.update(torch._inductor.list_mode_options(mode))
    patches["custom_partitioner_fn"] = RematPartitioner(knobs)
    with watch_compile(knobs.dump_dir):
        return compile_fx(gm, example_inputs, config_patches=patches)
