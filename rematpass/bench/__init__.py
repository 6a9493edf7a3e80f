"""``python -m rematpass.bench``: the benchmark suite, its models, measurements and tables."""

from .suite import SCHEMA, Run, Variant, main, parse_variant, run_model

__all__ = ["SCHEMA", "Run", "Variant", "main", "parse_variant", "run_model"]
