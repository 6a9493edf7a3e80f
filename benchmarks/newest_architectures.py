"""A new user's first try: causal LMs rematpass was never tuned for, on whatever torch and
transformers pip gives today, against eager and ``torch.compile``.

    python benchmarks/newest_architectures.py                       # smollm3 qwen3 gemma3 olmo2
    python benchmarks/newest_architectures.py --models qwen3 --budgets 0.3 0.0

Each model (transformers, a tiny config, random weights, no downloads) is called as Hugging Face's
Trainer calls it, with labels, and trained one step eagerly, under ``torch.compile`` and under
``backend="remat"`` (the default plan and each ``--budgets`` value). Printed per variant: the
loss, the worst gradient's largest difference from eager's (relative to that gradient's largest
entry), the first call (compile + one step, cold within this process: later variants find the
kernels earlier ones built, so these are not compile-time ratios), the compiles per graph, the
exact CPU peak of a second step (rematpass.measure) and what happened to the loss head. This is a
program that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import transformers

import rematpass
from rematpass.measure import peak_memory

VOCAB, BATCH, SEQ = 4096, 4, 128


def build(name: str) -> torch.nn.Module:
    common = dict(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    t = transformers
    if name == "qwen3":
        return t.Qwen3ForCausalLM(t.Qwen3Config(**common, head_dim=32))
    if name == "gemma3":  # with Gemma's final logit soft-capping
        return t.Gemma3ForCausalLM(t.Gemma3TextConfig(**common, head_dim=32, final_logit_softcapping=30.0))
    if name == "olmo2":
        return t.Olmo2ForCausalLM(t.Olmo2Config(**common))
    if name == "smollm3":
        return t.SmolLM3ForCausalLM(t.SmolLM3Config(**common))
    raise KeyError(name)


MODELS = ("smollm3", "qwen3", "gemma3", "olmo2")


def step(model, ids) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def worst_gradient_error(got: dict, expected: dict) -> float:
    return max((g - expected[n]).abs().max().item() / (expected[n].abs().max().item() + 1e-12) for n, g in got.items())


def run(name: str, budgets: list[float]) -> list[str]:
    torch.manual_seed(0)
    base = build(name).train()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    eager_loss, eager_grads = step(copy.deepcopy(base), ids)
    rows, baseline = [], None
    for options in (None, {}, *({"memory_budget": b} for b in budgets)):
        torch._dynamo.reset()
        rematpass.clear_reports()
        model = copy.deepcopy(base)
        compiled = torch.compile(model) if options is None else torch.compile(model, backend="remat", options=options)
        started = time.perf_counter()
        loss, grads = step(compiled, ids)
        first_call = time.perf_counter() - started

        def again():
            model.zero_grad(set_to_none=True)
            step(compiled, ids)

        peak = peak_memory(again)
        baseline = baseline or peak
        reports = rematpass.recent_reports()
        heads = [h for r in reports for h in r.loss_heads]
        head = ", ".join(f"{h.chunks} chunks" if h.chunked else f"whole ({h.reason})" for h in heads) or "-"
        variant = "torch.compile" if options is None else f"remat {options or 'default'}"
        rows.append(
            f"| {name} | {variant} | {loss.item():.5f} (eager {eager_loss.item():.5f}) "
            f"| {worst_gradient_error(grads, eager_grads):.1e} | {first_call:.1f} s "
            f"| {','.join(str(r.compiles) for r in reports) or '-'} "
            f"| {peak / 2**20:.2f} MiB ({peak / baseline:.2f}x) | {head} |"
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.3])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {BATCH} x {SEQ} tokens")
    print("| model | variant | loss | worst gradient error | first call | compiles per graph | peak | loss head |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        print("\n".join(run(name, args.budgets)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
