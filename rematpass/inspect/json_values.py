"""Values as JSON takes them, for the dump files (plan.json, frontier.json)."""

from __future__ import annotations

from typing import Any

import numpy as np

# The version of the dump files' layout; readers check it (rematpass.inspect.cli).
SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
