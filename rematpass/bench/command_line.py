"""The command line of ``python -m rematpass.bench`` (rematpass.bench.suite): its flags, checked."""

from __future__ import annotations

import argparse

import torch

from . import models as bench_models
from .partition_records import HOST_MEMORY_METHODS
from .variants import DEFAULT_VARIANTS, FULL_VARIANTS, Variant, parse_variant


def parse_args(argv: list[str] | None, doc: str) -> tuple[argparse.Namespace, list[Variant]]:
    """The command line, checked, with the models and variants filled in for the chosen --size.
    ``doc``: the suite's docstring, its first paragraph the description and the rest the epilog."""
    parser = argparse.ArgumentParser(
        prog="python -m rematpass.bench",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_suite_args(parser)
    _add_run_args(parser)
    args = parser.parse_args(argv)
    full = args.size == bench_models.FULL
    args.models = args.models or bench_models.default_models(args.size)
    wrong = [m for m in args.models if (m in bench_models.FULL_SUITE) != full]
    if wrong:
        parser.error(f"{' '.join(wrong)}: --size full runs exactly {' '.join(bench_models.FULL_SUITE)}")
    if args.batch is not None and (not full or args.batch < 1):
        parser.error("--batch is a positive batch for --size full")
    if args.seq is not None and (not full or args.seq < 1):
        parser.error("--seq is a positive sequence length for --size full")
    variants = args.variants or [parse_variant(v) for v in (FULL_VARIANTS if full else DEFAULT_VARIANTS)]
    if len({v.name for v in variants}) != len(variants):
        parser.error("a variant is named twice")
    return args, variants


def _add_suite_args(parser: argparse.ArgumentParser) -> None:
    """What runs: --models, --variants and their sizes."""
    names = list(bench_models.SUITE) + list(bench_models.EXTRA) + list(bench_models.FULL_SUITE)
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=names,
        metavar="MODEL",
        help=f"models to run (default: the suite, {' '.join(bench_models.DEFAULT_MODELS)}; also: "
        f"{' '.join(bench_models.EXTRA)}; with --size full: {' '.join(bench_models.FULL_SUITE)})",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=parse_variant,
        default=None,
        metavar="VARIANT",
        help=f"variants to run (default: {' '.join(DEFAULT_VARIANTS)}; with --size full: {' '.join(FULL_VARIANTS)})",
    )
    parser.add_argument(
        "--size",
        type=bench_models.parse_size,
        default=1.0,
        help="scale widths and batch sizes by this factor (default 1: tiny, for 2 CPU cores), or 'full': "
        "the full-size suite at published sizes",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch of the --size full models (default: per model and device)"
    )
    parser.add_argument(
        "--seq",
        type=int,
        default=None,
        help="tokens per sequence of the --size full language models (default: per model and device)",
    )


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """How it runs and is measured, and where the results go."""
    parser.add_argument(
        "--partition-memory",
        choices=HOST_MEMORY_METHODS,
        default="rss",
        help="how to measure the partitioner's peak host memory (default rss: free, a lower bound; "
        "tracemalloc: exact for Python and numpy, but slows the partition call it times)",
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="interleaved timing rounds, one step per variant each (default 10)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    parser.add_argument(
        "--out", default="bench-results", help="folder for results.json and pareto.png (default bench-results)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads before anything compiles (default: torch's choice); on a "
        "shared or loaded machine --threads 1 gives far steadier step times",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up compile (compile times of the "
        "first variant then include loading the compiler toolchain)",
    )
