"""Which models ``python -m rematpass.bench`` trains, at what size, and how each is checkpointed.

The model classes live in ``rematpass.zoo`` (the tests and examples train them
too). Each entry of ``SUITE`` builds a ``BenchModel``: the module (its ``forward``
returns the scalar loss), one input batch, the modules that count as a "block"
for the checkpoint variant, and whether the model has dropout. ``size``
scales widths and the batch (``size=4`` on a GPU, say); ``size=1`` compiles
in well under a minute per variant on two CPU cores.

``FULL_SUITE`` (``--size full``) holds models at their published sizes: GPT-2
small, an 8-layer Llama-style model with grouped-query attention, ViT-B/16 and
ResNet-50, with a batch per device (``FULL_SHAPES``).

The transformers models are built from configs with random weights: no
download, no tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import zoo


@dataclass
class BenchModel:
    name: str
    description: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    blocks: list[nn.Module] = field(repr=False)
    dropout: bool = False

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def _scaled(width: int, size: float, multiple: int = 8) -> int:
    return max(multiple, int(round(width * size / multiple)) * multiple)


def _mlp(size: float, depth: int = 12, dim: int = 128, batch: int = 256) -> BenchModel:
    dim, batch = _scaled(dim, size), _scaled(batch, size)
    model = zoo.ResidualMLP(dim, depth, loss="mean_square")
    return BenchModel(
        "mlp",
        f"{depth}-layer residual MLP (pre-LayerNorm, GELU, dim {dim}, hidden {4 * dim}), batch {batch}",
        model,
        (torch.randn(batch, dim),),
        list(model.blocks),
    )


def _tiny_mlp(size: float) -> BenchModel:
    bench = _mlp(size, depth=4, dim=64, batch=128)
    bench.name = "tiny-mlp"
    bench.description = "4-layer " + bench.description.split("-layer ", 1)[1] + " (for the smoke test)"
    return bench


def _cnn(size: float) -> BenchModel:
    width, batch = _scaled(16, size), _scaled(32, size)
    model = zoo.SmallCNN(width)
    blocks = [m for m in model.body if not isinstance(m, nn.MaxPool2d)]
    return BenchModel(
        "cnn",
        f"6 conv-BatchNorm-ReLU layers in 3 stages (width {width}..{4 * width}), 32x32 images, batch {batch}",
        model,
        (torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))),
        blocks,
    )


def _gpt(size: float) -> BenchModel:
    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 512, 4
    model = zoo.GPT(vocab, dim, heads=4, layers=layers, seq=seq, dropout=0.1)
    return BenchModel(
        "gpt",
        f"{layers}-layer GPT-style transformer (dim {dim}, 4 heads, dropout 0.1, SDPA), batch {batch} x {seq} tokens",
        model,
        (torch.randint(0, vocab, (batch, seq)),),
        list(model.blocks),
        dropout=True,
    )


def _gpt2(size: float) -> BenchModel:
    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 1024, 4
    lm = zoo.gpt2_lm(
        vocab=vocab,
        dim=dim,
        layers=layers,
        positions=seq,
        heads=4,
        attn_implementation="sdpa",
        bos_token_id=0,
        eos_token_id=0,
    )
    return BenchModel(
        "gpt2",
        f"transformers GPT2LMHeadModel, {layers} layers, dim {dim}, 4 heads, no dropout, SDPA, batch {batch} x {seq}",
        zoo.CausalLM(lm),
        (torch.randint(0, vocab, (batch, seq)),),
        list(lm.transformer.h),
    )


def _llama(size: float) -> BenchModel:
    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 1024, 4
    lm = zoo.llama_lm(
        vocab=vocab,
        dim=dim,
        hidden=_scaled(dim * 8 / 3, 1.0, 16),
        layers=layers,
        positions=seq,
        heads=4,
        kv_heads=2,
        attn_implementation="sdpa",
        bos_token_id=0,
        eos_token_id=0,
    )
    return BenchModel(
        "llama",
        f"transformers LlamaForCausalLM, {layers} layers, dim {dim}, 4 heads / 2 KV heads, SDPA, batch {batch} x {seq}",
        zoo.CausalLM(lm),
        (torch.randint(0, vocab, (batch, seq)),),
        list(lm.model.layers),
    )


def _mixer(size: float) -> BenchModel:
    dim, batch, depth = _scaled(128, size), _scaled(32, size), 4
    model = zoo.Mixer(image=32, patch=4, dim=dim, depth=depth, expansion=4)
    return BenchModel(
        "mixer",
        f"{depth}-block MLP-Mixer (64 patches of 32x32 images, dim {dim}, channel MLP {4 * dim}), batch {batch}",
        model,
        (torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))),
        list(model.blocks),
    )


SUITE: dict[str, Callable[[float], BenchModel]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "mixer": _mixer,
    "gpt": _gpt,
    "gpt2": _gpt2,
    "llama": _llama,
}
EXTRA: dict[str, Callable[[float], BenchModel]] = {"tiny-mlp": _tiny_mlp}
DEFAULT_MODELS = list(SUITE)


# ------------------------------------------------------------------ the full-size suite (--size full)


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int | None = None  # tokens per sequence, for the language models


# (CPU, CUDA). The CPU shapes keep a training step in seconds on one thread of a 2-core AMD EPYC
# (ViT-B/16 and ResNet-50 about 5 to 9 s, the language models about 15 to 20 s) while the
# activations, not the gradients, set the peak: at 4 x 512 tokens GPT-2 small's saved activations
# (about 1.1 GiB) outweigh its 475 MiB of gradients; at 2 x 256 every plan peaked at the same
# figure, set by the gradients the backward returns at once. CUDA shapes are ordinary training
# shapes. --batch and --seq override either.
FULL_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "gpt2-small": (Shape(4, 512), Shape(8, 1024)),
    "llama-8l": (Shape(4, 512), Shape(8, 1024)),
    "vit-b16": (Shape(4), Shape(64)),
    "resnet50": (Shape(16), Shape(64)),
}


# transformers' GPT2Config defaults, spelled out because gpt2_lm takes them as its arguments.
GPT2_SMALL = {"vocab": 50257, "dim": 768, "layers": 12, "positions": 1024, "heads": 12}


def _gpt2_small(shape: Shape) -> BenchModel:
    lm = zoo.gpt2_lm(attn_implementation="sdpa", **GPT2_SMALL)
    return BenchModel(
        "gpt2-small",
        f"transformers GPT2LMHeadModel at GPT-2 small (12 layers, dim 768, 12 heads, vocab 50257), no dropout, "
        f"SDPA, batch {shape.batch} x {shape.seq}",
        zoo.CausalLM(lm),
        (torch.randint(0, GPT2_SMALL["vocab"], (shape.batch, shape.seq)),),
        list(lm.transformer.h),
    )


def _llama_8l(shape: Shape) -> BenchModel:
    vocab = 32000
    lm = zoo.llama_lm(
        vocab=vocab,
        dim=1024,
        hidden=2816,
        layers=8,
        positions=2048,
        heads=16,
        kv_heads=4,
        attn_implementation="sdpa",
        bos_token_id=0,
        eos_token_id=0,
    )
    return BenchModel(
        "llama-8l",
        "transformers LlamaForCausalLM, 8 layers, dim 1024, 16 heads / 4 KV heads, SwiGLU 2816, vocab 32000, "
        f"SDPA, batch {shape.batch} x {shape.seq}",
        zoo.CausalLM(lm),
        (torch.randint(0, vocab, (shape.batch, shape.seq)),),
        list(lm.model.layers),
    )


def _vit_b16(shape: Shape) -> BenchModel:
    model = zoo.vit_classifier(attn_implementation="sdpa")
    return BenchModel(
        "vit-b16",
        "transformers ViTForImageClassification at ViT-B/16 (12 layers, dim 768, 12 heads), 224x224 images, "
        f"1000 classes, no dropout, SDPA, batch {shape.batch}",
        zoo.LossOf(model, "pixel_values", "labels"),
        (torch.randn(shape.batch, 3, 224, 224), torch.randint(0, 1000, (shape.batch,))),
        list(model.vit.layers),
    )


def _resnet50(shape: Shape) -> BenchModel:
    model = zoo.resnet_classifier()
    return BenchModel(
        "resnet50",
        f"transformers ResNetForImageClassification at ResNet-50 (bottleneck stages 3-4-6-3), 224x224 images, "
        f"1000 classes, batch {shape.batch}",
        zoo.LossOf(model, "pixel_values", "labels"),
        (torch.randn(shape.batch, 3, 224, 224), torch.randint(0, 1000, (shape.batch,))),
        [layer for stage in model.resnet.encoder.stages for layer in stage.layers],
    )


FULL_SUITE: dict[str, Callable[[Shape], BenchModel]] = {
    "gpt2-small": _gpt2_small,
    "llama-8l": _llama_8l,
    "vit-b16": _vit_b16,
    "resnet50": _resnet50,
}
FULL = "full"


def parse_size(text: str) -> float | str:
    """``--size``: a scale factor for the small suite, or the word ``full`` for the full-size suite."""
    if text == FULL:
        return FULL
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: a positive number or {FULL!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: must be positive")
    return value


def default_models(size: float | str) -> list[str]:
    return list(FULL_SUITE) if size == FULL else DEFAULT_MODELS


def full_shape(name: str, device: str = "cpu", batch: int | None = None, seq: int | None = None) -> Shape:
    shape = FULL_SHAPES[name][1 if device.startswith("cuda") else 0]
    if batch is not None:
        shape = dataclasses.replace(shape, batch=batch)
    if seq is not None and shape.seq is not None:  # only the language models have a sequence
        shape = dataclasses.replace(shape, seq=seq)
    return shape


def build(
    name: str,
    size: float | str = 1.0,
    seed: int = 0,
    *,
    device: str = "cpu",
    batch: int | None = None,
    seq: int | None = None,
) -> BenchModel:
    """The model ``name`` at ``size`` (``"full"``: the full-size suite, shaped for ``device``), with weights
    and inputs drawn from ``seed``. ``batch`` and ``seq`` override a full-size model's batch and (language
    models) tokens per sequence."""
    small = {**SUITE, **EXTRA}
    if size == FULL:
        if name not in FULL_SUITE:
            raise KeyError(f"--size full runs {', '.join(FULL_SUITE)}, not {name!r}")
        torch.manual_seed(seed)
        return FULL_SUITE[name](full_shape(name, device, batch, seq))
    if name not in small:
        where = " (a full-size model: use --size full)" if name in FULL_SUITE else f"; choose from {', '.join(small)}"
        raise KeyError(f"unknown model {name!r}{where}")
    torch.manual_seed(seed)
    return small[name](size)


# ------------------------------------------------------------------ the checkpoint variant


def _checkpointed_forward(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: list[nn.Module], on_inputs: Callable[[tuple], None] | None = None) -> None:
    """Wrap each block's forward in ``torch.utils.checkpoint(use_reentrant=False)``.

    ``on_inputs`` sees each block's positional inputs: the checkpoint keeps
    them alive for the backward, so the benchmark counts them as saved.
    """
    for block in blocks:
        forward = block.forward
        if on_inputs is None:
            block.forward = functools.partial(_checkpointed_forward, forward)
        else:

            def wrapped(*args, _forward=forward, **kwargs):
                on_inputs(args + tuple(kwargs.values()))
                return _checkpointed_forward(_forward, *args, **kwargs)

            block.forward = wrapped
