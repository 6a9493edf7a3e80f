"""Models rematpass was never tuned for, through the benchmark's harness.

    python benchmarks/heldout.py                        # mistral, bloom, vit; inductor, remat-fastest, remat, remat@0.3, remat@0.0
    python benchmarks/heldout.py --models bloom --variants inductor remat

Small transformers configs (random weights, no downloads) of architectures outside the suite:
Mistral (grouped-query attention, SiLU MLP, RMSNorm), BLOOM (ALiBi attention, GELU) and ViT (image
patches, a classification loss). Each is trained one step per variant in interleaved rounds and
printed as the suite's table: measured against predicted peak, step time against
``torch.compile``'s default, gradients against eager.
"""

from __future__ import annotations

import argparse

import torch

from rematpass import inductor_hooks, zoo
from rematpass.bench import models, suite
from rematpass.bench.output import table, targets


def mistral() -> models.BenchModel:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa", sliding_window=None,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    lm = MistralForCausalLM(config)
    return models.BenchModel(
        "mistral", "transformers Mistral, 4 layers, dim 128, 4 heads / 2 KV heads, batch 8 x 128",
        zoo.CausalLM(lm), (torch.randint(0, 1024, (8, 128)),), list(lm.model.layers),
    )  # fmt: skip


def bloom() -> models.BenchModel:
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(
        vocab_size=1024, hidden_size=128, n_layer=4, n_head=4, hidden_dropout=0.0, attention_dropout=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    lm = BloomForCausalLM(config)
    lm.loss_type = "ForCausalLM"  # else transformers warns inside forward and Dynamo breaks the graph there
    return models.BenchModel(
        "bloom", "transformers BLOOM (ALiBi), 4 layers, dim 128, 4 heads, batch 8 x 128",
        zoo.CausalLM(lm), (torch.randint(0, 1024, (8, 128)),), list(lm.transformer.h),
    )  # fmt: skip


def vit() -> models.BenchModel:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, image_size=64,
        patch_size=8, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa", problem_type="single_label_classification",
    )  # fmt: skip
    model = ViTForImageClassification(config)
    return models.BenchModel(
        "vit", "transformers ViT, 4 layers, dim 128, 64x64 images in 8x8 patches, batch 16",
        zoo.LossOf(model, "pixel_values", "labels"),
        (torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))), list(model.vit.layers),
    )  # fmt: skip


BUILDERS = {"mistral": mistral, "bloom": bloom, "vit": vit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument(
        "--variants", nargs="+", default=["inductor", "remat-fastest", "remat", "remat@0.3", "remat@0.0"]
    )
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    inductor_hooks.inductor_caches_disabled()
    variants = [suite.parse_variant(v) for v in args.variants]
    for name in args.models:
        torch.manual_seed(0)
        bench = BUILDERS[name]()
        print(f"== {name}: {bench.description}", flush=True)
        result = suite.run_model(
            bench, variants, device="cpu", steps=args.steps, seed=0, say=lambda s: print(s, flush=True)
        )
        print("\n".join([table(result), *targets(result)]) + "\n", flush=True)


if __name__ == "__main__":
    main()
