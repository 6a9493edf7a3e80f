"""The ``remat`` torch.compile backend.

    >>> import torch
    >>> model = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memory_budget": 0.5})

It hands the graph to Inductor with ``RematPartitioner`` as
``custom_partitioner_fn``; Inductor runs its joint-graph passes, calls our
partitioner, and compiles the forward and backward it returns. The last
joint-graph pass is ``passes.gather_pool_grad``: a max-pool backward whose
windows do not overlap becomes a gather that fuses into its consumers,
instead of a scatter into a pool-input-sized zero tensor. After
Inductor's post-grad patterns, ``passes.hoist_matmul`` moves a matmul that
addmm fusion delayed back to where its operands would otherwise die (with
tied embeddings it would hold the logits gradient through the whole
backward); Inductor's buffer reuse is off unless the ``buffer_reuse`` knob
says otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from . import config
from .inductor_hooks import CustomGraphPass, compile_with_inductor, get_hash_for_files, installed_pass, mode_options
from .inspect.dump import watch_compile
from .partitioner import RematPartitioner
from .passes import gather_pool_grad, hoist_matmul


class HoistLateMatmuls(CustomGraphPass):
    """``passes.hoist_matmul`` as an Inductor post-grad pass (cacheable: keyed on its source)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        hoist_matmul.hoist_late_matmuls(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((hoist_matmul.__file__,))


class GatherMaxPoolBackward(CustomGraphPass):
    """``passes.gather_pool_grad`` as an Inductor joint-graph pass, so the partitioner sees its result."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        gather_pool_grad.gather_max_pool_backward(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((gather_pool_grad.__file__,))


class _PassesInOrder(CustomGraphPass):
    """The user's passes, then ours, as one pass. Inductor accepts a list in a custom pass slot
    only since pytorch#184108 (May 2026); older releases call the slot's value, so it must be one
    callable. Cacheable when every pass is."""

    def __init__(self, passes: tuple):
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for graph_pass in self.passes:
            graph_pass(graph)

    def uuid(self) -> bytes | None:
        ids = [p.uuid() if isinstance(p, CustomGraphPass) else None for p in self.passes]
        if any(i is None for i in ids):
            return None  # Inductor then bypasses its cache, as it would for the user's pass alone
        return hashlib.sha256(repr(ids).encode()).digest()


def _after_user_passes(slot: str, ours: CustomGraphPass) -> CustomGraphPass:
    """What to put in Inductor's custom pass ``slot``: ours, after any the user installed there."""
    installed = installed_pass(slot)
    if installed is None:
        return ours
    if not isinstance(installed, (list, tuple)):
        installed = (installed,)
    return _PassesInOrder(tuple(installed) + (ours,))


def remat(
    gm: torch.fx.GraphModule, example_inputs, *, options: Mapping[str, Any] | None = None, mode: str | None = None
):
    """Compile ``gm`` with Inductor, partitioned by rematpass. Knobs come from ``options``."""
    knobs = config.resolve(options)
    patches: dict[str, Any] = {}
    if mode is not None and mode != "default":
        patches.update(mode_options(mode))
    patches["custom_partitioner_fn"] = RematPartitioner(knobs)
    patches["joint_custom_post_pass"] = _after_user_passes("joint_custom_post_pass", GatherMaxPoolBackward())
    patches["post_grad_custom_post_pass"] = _after_user_passes("post_grad_custom_post_pass", HoistLateMatmuls())
    patches["allow_buffer_reuse"] = knobs.buffer_reuse
    with watch_compile(knobs.dump_dir):
        return compile_with_inductor(gm, example_inputs, patches)
