"""Models rematpass was never tuned for, through the benchmark's harness.

    python benchmarks/heldout.py                        # mistral, bloom, vit; inductor, remat-fastest, remat, remat@0.3, remat@0.0
    python benchmarks/heldout.py --models bloom --variants inductor remat

Small transformers configs (random weights, no downloads) of architectures outside the suite:
Mistral (grouped-query attention, SiLU MLP, RMSNorm), BLOOM (ALiBi attention, GELU), ViT (image
patches, a classification loss), Whisper (speech encoder-decoder), CLIP (vision-text contrastive
loss), wav2vec 2.0 (convolutional speech features, a CTC loss) and the causal LMs of
benchmarks/newest_architectures.py (SmolLM3, Qwen3, Gemma 3, OLMo 2); ``--models`` chooses. Each is trained one step per variant in interleaved rounds and
printed as the suite's table: measured against predicted peak, step time against
``torch.compile``'s default, gradients against eager.
"""

from __future__ import annotations

import argparse
import functools

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


def whisper() -> models.BenchModel:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=1024, num_mel_bins=80, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, max_source_positions=200,
        max_target_positions=128, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, attn_implementation="sdpa",
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    return models.BenchModel(
        "whisper", "transformers Whisper (speech seq2seq), 2+2 layers, dim 128, 80 mel x 400 frames, 64 labels, batch 4",
        zoo.LossOf(model, "input_features", "labels"),
        (torch.randn(4, 80, 400), torch.randint(3, 1024, (4, 64))),
        list(model.model.encoder.layers) + list(model.model.decoder.layers),
    )  # fmt: skip


def clip() -> models.BenchModel:
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=1024, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
    vision = dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, image_size=64,
        patch_size=8,
    )  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    model = CLIPModel(config)
    return models.BenchModel(
        "clip", "transformers CLIP (vision-text), 2+2 layers, dim 128, 32 tokens and 64x64 images, batch 16",
        zoo.LossOf(model, "input_ids", "pixel_values", return_loss=True),
        (torch.randint(0, 1024, (16, 32)), torch.randn(16, 3, 64, 64)),
        list(model.text_model.encoder.layers) + list(model.vision_model.encoder.layers),
    )  # fmt: skip


def wav2vec2() -> models.BenchModel:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=32, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        conv_dim=(64, 64, 64), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, ctc_loss_reduction="mean", pad_token_id=0,
    )  # fmt: skip
    model = Wav2Vec2ForCTC(config)
    return models.BenchModel(
        "wav2vec2", "transformers wav2vec 2.0 (speech, CTC), 2 layers, dim 128, 16,000 samples, 20 labels, batch 4",
        zoo.LossOf(model, "input_values", "labels"),
        (torch.randn(4, 16000), torch.randint(1, 32, (4, 20))),
        list(model.wav2vec2.encoder.layers),
    )  # fmt: skip


def newest(name: str) -> models.BenchModel:
    """One of benchmarks/newest_architectures.py's causal LMs (SmolLM3, Qwen3, Gemma 3, OLMo 2)."""
    from newest_architectures import BATCH, SEQ, VOCAB, build

    lm = build(name)
    return models.BenchModel(
        name, f"transformers {name}, 2 layers, dim 128, vocabulary {VOCAB}, batch {BATCH} x {SEQ}",
        zoo.CausalLM(lm), (torch.randint(0, VOCAB, (BATCH, SEQ)),), list(lm.model.layers),
    )  # fmt: skip


BUILDERS = {"mistral": mistral, "bloom": bloom, "vit": vit, "whisper": whisper, "clip": clip, "wav2vec2": wav2vec2}
BUILDERS.update({name: functools.partial(newest, name) for name in ("smollm3", "qwen3", "gemma3", "olmo2")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mistral", "bloom", "vit"], choices=list(BUILDERS))
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
