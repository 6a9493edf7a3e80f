"""rematpass: a cost-priced min-cut rematerialisation partitioner for torch.compile.

    >>> import torch
    >>> model = torch.compile(torch.nn.Linear(4, 4), backend="remat")

See README.md for the knobs and how to read a plan.
"""

from . import config
from .config import KnobError, Knobs
from .inspect.cli import record_measured_peak
from .inspect.report import PartitionReport, clear_reports, recent_reports
from .partitioner import RematPartitioner
from .user_warnings import RematBudgetWarning, RematFallbackWarning

__version__ = "0.1.0"

__all__ = [
    "Knobs",
    "KnobError",
    "PartitionReport",
    "RematBudgetWarning",
    "RematFallbackWarning",
    "RematPartitioner",
    "clear_reports",
    "config",
    "recent_reports",
    "record_measured_peak",
]
