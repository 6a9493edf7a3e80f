"""rematpass's warnings, shown at the line of the user's code that started the compile.

A compile runs deep inside Dynamo and Inductor; a warning issued with a fixed ``stacklevel``
would point at rematpass or torch. ``warn_at_user_code`` walks out of those frames and names the
user's line (``loss = model(x)``, ``loss.backward()``), so the warning filter and the message say
where it came from.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_at_user_code("example", RematBudgetWarning)
    >>> caught[0].category.__name__
    'RematBudgetWarning'
"""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings

import torch


class RematBudgetWarning(UserWarning):
    """A ``memory_budget`` could not be met by any plan; the least-memory one was used."""


class RematFallbackWarning(UserWarning):
    """Planning failed; PyTorch's default partitioner was used for this graph."""


def _library_dirs() -> tuple[str, ...]:
    from . import passes  # installed inside rematpass, but a checkout keeps it at the top level

    ours = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(passes.__file__)))
    return (*ours, os.path.dirname(os.path.abspath(torch.__file__)), sysconfig.get_paths()["stdlib"])


_LIBRARY_DIRS = _library_dirs()


def _is_library_frame(filename: str) -> bool:
    if filename.startswith(
        "<"
    ):  # <frozen importlib._bootstrap> is Python's; <string>, <stdin>, <doctest ...>, a notebook's cells are the user's
        return filename.startswith("<frozen")
    path = os.path.abspath(filename)
    return any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def warn_at_user_code(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost frame outside rematpass,
    torch and the standard library (the outermost frame if every frame is one of those)."""
    frame = sys._getframe(1)
    chosen = frame
    while frame is not None:
        chosen = frame
        if not _is_library_frame(frame.f_code.co_filename):
            break
        frame = frame.f_back
    module_globals = chosen.f_globals
    warnings.warn_explicit(
        message,
        category,
        chosen.f_code.co_filename,
        chosen.f_lineno,
        module=module_globals.get("__name__", "<unknown>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
    )
