"""The loss head in chunks against the whole head: peak memory and step time, one process.

    python benchmarks/loss_head.py                          # GPT-2 small's vocabulary, 2 layers, 4 x 512 tokens
    python benchmarks/loss_head.py --layers 12 --rounds 5   # GPT-2 small itself
    python benchmarks/loss_head.py --return-logits          # the model returns its logits too, as Trainer calls it
    python benchmarks/loss_head.py --return-logits --budgets 0.99   # a budget forms them by a second matmul
    python benchmarks/loss_head.py --pytorch                # and PyTorch's auto_chunker, F.linear_cross_entropy

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
import torch.nn.functional as F

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
    parser.add_argument(
        "--pytorch",
        action="store_true",
        help="also PyTorch's own ways: Inductor's auto_chunker, and the head + loss swapped by hand for "
        "F.linear_cross_entropy(options=LinearCrossEntropyOptions()) under torch.compile and remat",
    )
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    variants.update(
        {f"remat, loss_chunks={k}": {"backend": "remat", "options": {"loss_chunks": k}} for k in args.chunks}
    )
    variants.update(
        {f"remat, memory_budget={b:g}": {"backend": "remat", "options": {"memory_budget": b}} for b in args.budgets}
    )
    if args.pytorch and not args.return_logits:
        variants.update(PYTORCH_VARIANTS)
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
        kwargs = dict(kwargs)
        inductor_config = kwargs.pop("inductor_config", {})
        module = SwappedForLinearCrossEntropy(lm) if kwargs.pop("swap", False) else copy.deepcopy(base)
        model = torch.compile(module, **kwargs)

        def step(model=model, inductor_config=inductor_config):
            for p in model.parameters():
                p.grad = None
            # every call: the next variant's dynamo.reset makes this one compile again in round 1
            with torch._inductor.config.patch(inductor_config):
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


class SwappedForLinearCrossEntropy(torch.nn.Module):
    """GPT-2's head and loss swapped by hand for PyTorch's chunked ``F.linear_cross_entropy``
    (``options=LinearCrossEntropyOptions()``: its own chunking; Dynamo runs that op eagerly)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = copy.deepcopy(lm)

    def forward(self, ids, labels):
        hidden = self.lm.transformer(input_ids=ids).last_hidden_state[:, :-1]
        return F.linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            self.lm.lm_head.weight,
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            options=torch.nn.LinearCrossEntropyOptions(),
        )


PYTORCH_VARIANTS = {
    "torch.compile, Inductor's auto_chunker": {"inductor_config": {"auto_chunker.enable": True}},
    "torch.compile, F.linear_cross_entropy(options) by hand": {"swap": True},
    "remat, F.linear_cross_entropy(options) by hand": {"backend": "remat", "swap": True},
}


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
