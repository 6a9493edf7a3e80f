"""Exact memory figures of one training step (docs/design.md, section 4).

>>> import torch
>>> from rematpass.measure import saved_activation_bytes
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
>>> saved_activation_bytes(lambda: model(torch.randn(4, 8)).sum().backward(), model)
256
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable

import torch


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return (str(tensor.device), storage.data_ptr())


def saved_activation_bytes(step: Callable[[], object], model: torch.nn.Module | None = None) -> int:
    """Bytes of the distinct storages autograd keeps for the backward during ``step``.

    Parameters and buffers of ``model`` are not counted. A saved view counts its
    whole storage, since that is what stays alive.
    """
    static = set()
    if model is not None:
        static = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor):
        if not tensor.is_meta and tensor.layout == torch.strided:
            key = _storage_key(tensor)
            if key not in static:
                seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _profiled_peak_cpu(step: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    totals = [e["args"]["Total Allocated"] for e in memory]
    first = memory[0]["args"]
    before = first["Total Allocated"] - first.get("Bytes", 0)
    return max(totals) - before


def peak_memory(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated during ``step`` above what was allocated before it.

    CPU: read from the profiler's allocator events; the step is profiled twice
    and the second reading taken (the first profiled step reads high).
    CUDA: ``torch.cuda.max_memory_allocated`` after a reset.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    _profiled_peak_cpu(step)
    return _profiled_peak_cpu(step)
