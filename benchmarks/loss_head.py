"""The loss head in chunks against the whole head: peak memory and step time, one process.

    python benchmarks/loss_head.py                          # GPT-2 small's vocabulary, 2 layers, 4 x 512 tokens
    python benchmarks/loss_head.py --layers 12 --rounds 5   # GPT-2 small itself
    python benchmarks/loss_head.py --return-logits          # the model returns its logits too, as Trainer calls it
    python benchmarks/loss_head.py --return-logits --budgets 0.99   # a budget forms them by a second matmul

Variants: ``torch.compile`` (Inductor's partitioner), ``remat`` with the head whole
(``loss_chunks=0``) and ``remat``'s default plan (the head in chunks, passes.loss_head);
``--chunks`` adds forced counts, ``--budgets`` ``memory_budget`` values. ``--return-logits`` compiles the transformers model itself and
calls it with labels, as Hugging Face's Trainer does: it returns the logits with the loss, and
the step drops them before the backward. Peaks are exact (the CPU allocator's
peak during a step, rematpass.measure); step times are medians of interleaved rounds after one
warm-up step each, as ratios against ``torch.compile`` in the same process. This is a program
that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import rematpass
from rematpass import zoo
from rematpass.measure import peak_memory
from rematpass.zoo import LossOf

VARIANTS = {
    "torch.compile": {},
    "remat, loss_chunks=0 (head whole)": {"backend": "remat", "options": {"loss_chunks": 0}},
    "remat (default: loss_chunks='auto')": {"backend": "remat"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", type=int, nargs="*", default=[], help="also remat with loss_chunks forced to these")
    parser.add_argument("--budgets", type=float, nargs="*", default=[], help="also remat with these memory_budget")
    parser.add_argument("--return-logits", action="store_true", help="the model returns its logits with the loss")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    variants.update(
        {f"remat, loss_chunks={k}": {"backend": "remat", "options": {"loss_chunks": k}} for k in args.chunks}
    )
    variants.update(
        {f"remat, memory_budget={b:g}": {"backend": "remat", "options": {"memory_budget": b}} for b in args.budgets}
    )
    torch.set_num_threads(args.threads)
    torch._inductor.config.force_disable_caches = True  # every variant's partitioner must run
    torch.manual_seed(0)
    config = {"vocab": args.vocab, "dim": 768, "layers": args.layers, "positions": 1024, "heads": 12}
    lm = zoo.gpt2_lm(**config, use_cache=False)
    base = lm if args.return_logits else LossOf(lm, "input_ids", "labels")
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    steps, rows = {}, {}
    for name, kwargs in variants.items():
        torch._dynamo.reset()
        rematpass.clear_reports()
        model = torch.compile(copy.deepcopy(base), **kwargs)

        def step(model=model):
            for p in model.parameters():
                p.grad = None
            if args.return_logits:  # as Trainer's compute_loss: the outputs go before the backward
                model(input_ids=ids, labels=ids).loss.backward()
            else:
                model(ids, ids).backward()

        started = time.perf_counter()
        step()
        first_call = time.perf_counter() - started
        heads = [h for r in rematpass.recent_reports() for h in r.loss_heads]
        rows[name] = {"first_call": first_call, "peak": peak_memory(step), "heads": heads, "times": []}
        steps[name] = step
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            rows[name]["times"].append(time.perf_counter() - started)
    base_peak, base_time = rows["torch.compile"]["peak"], statistics.median(rows["torch.compile"]["times"])
    print(
        f"GPT-2 ({args.layers} layers, vocab {args.vocab}), {args.batch} x {args.seq} tokens, CPU, "
        f"{args.threads} thread(s), {args.rounds} interleaved rounds"
        + (", the logits returned with the loss" if args.return_logits else "")
    )
    print("| variant | peak | vs torch.compile | step (median) | vs torch.compile | first call | loss head |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        median = statistics.median(row["times"])
        head = "; ".join(_head(h) for h in row["heads"]) or "-"
        print(
            f"| {name} | {row['peak'] / 2**20:.1f} MiB | {row['peak'] / base_peak:.2f}x | {median:.2f} s "
            f"| {median / base_time:.2f}x | {row['first_call']:.1f} s | {head} |"
        )
    return 0


def _head(head) -> str:
    """How a head was compiled: "4 chunks", "4 chunks, logits written by the chunks", "whole (why)"."""
    if not head.chunked:
        return f"whole ({head.reason})"
    if head.returned is None:
        return f"{head.chunks} chunks"
    return f"{head.chunks} chunks, logits " + (
        "by a second matmul" if head.returned.by_matmul else "written by the chunks"
    )


if __name__ == "__main__":
    raise SystemExit(main())
