"""``python -m rematpass.bench``: the benchmark suite, its models, measurements and tables."""

from .suite import SCHEMA, Run, main
from .variants import parse_variant

__all__ = ["SCHEMA", "Run", "main", "parse_variant"]
