"""The models ``python -m rematpass.bench`` trains, and how each is checkpointed.

Each entry of ``SUITE`` builds a ``BenchModel``: the module (its ``forward``
returns the scalar loss), one input batch, the modules that count as a "block"
for the checkpoint variant, and whether the model has dropout. ``size``
scales widths and the batch (``size=4`` on a GPU, say); ``size=1`` compiles
in well under a minute per variant on two CPU cores.

The two transformers models are built from configs with random weights: no
download, no tokenizer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


# ------------------------------------------------------------------ residual MLP


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x).pow(2).mean()


def _mlp(size: float, depth: int = 12, dim: int = 128, batch: int = 256) -> BenchModel:
    dim, batch = _scaled(dim, size), _scaled(batch, size)
    model = ResidualMLP(dim, depth)
    return BenchModel(
        "mlp", f"{depth}-layer residual MLP (pre-LayerNorm, GELU, dim {dim}, hidden {4 * dim}), batch {batch}",
        model, (torch.randn(batch, dim),), list(model.blocks),
    )


def _tiny_mlp(size: float) -> BenchModel:
    bench = _mlp(size, depth=4, dim=64, batch=128)
    bench.name = "tiny-mlp"
    bench.description = "4-layer " + bench.description.split("-layer ", 1)[1] + " (for the smoke test)"
    return bench


# ------------------------------------------------------------------ CNN with BatchNorm


def _conv_bn(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, width: int, classes: int = 10):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        blocks, cin = [], 3
        for stage, cout in enumerate(widths):
            blocks += [_conv_bn(cin, cout), _conv_bn(cout, cout)]
            if stage < len(widths) - 1:
                blocks.append(nn.MaxPool2d(2))
            cin = cout
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x, labels):
        return F.cross_entropy(self.head(self.body(x).mean(dim=(2, 3))), labels)


def _cnn(size: float) -> BenchModel:
    width, batch = _scaled(16, size), _scaled(32, size)
    model = SmallCNN(width)
    blocks = [m for m in model.body if not isinstance(m, nn.MaxPool2d)]
    return BenchModel(
        "cnn", f"6 conv-BatchNorm-ReLU layers in 3 stages (width {width}..{4 * width}), 32x32 images, batch {batch}",
        model, (torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))), blocks,
    )


# ------------------------------------------------------------------ GPT-style transformer


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def attention(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.drop(self.attention(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, seq: int, dropout: float):
        super().__init__()
        self.vocab = vocab
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.drop(self.tok(idx) + self.pos[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, self.vocab), idx[:, 1:].reshape(-1))


def _gpt(size: float) -> BenchModel:
    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 512, 4
    model = GPT(vocab, dim, heads=4, layers=layers, seq=seq, dropout=0.1)
    return BenchModel(
        "gpt", f"{layers}-layer GPT-style transformer (dim {dim}, 4 heads, dropout 0.1, SDPA), batch {batch} x {seq} tokens",
        model, (torch.randint(0, vocab, (batch, seq)),), list(model.blocks), dropout=True,
    )


# ------------------------------------------------------------------ transformers models


class CausalLM(nn.Module):
    """A transformers causal LM whose forward returns the loss (labels = inputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss


def _gpt2(size: float) -> BenchModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 1024, 4
    config = GPT2Config(
        vocab_size=vocab, n_positions=seq, n_embd=dim, n_layer=layers, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=0, eos_token_id=0,
    )
    lm = GPT2LMHeadModel(config)
    lm.loss_type = "ForCausalLM"  # else transformers logs a warning inside forward, and Dynamo breaks the graph there
    return BenchModel(
        "gpt2", f"transformers GPT2LMHeadModel, {layers} layers, dim {dim}, 4 heads, no dropout, SDPA, batch {batch} x {seq}",
        CausalLM(lm), (torch.randint(0, vocab, (batch, seq)),), list(lm.transformer.h),
    )


def _llama(size: float) -> BenchModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    dim, batch, seq, vocab, layers = _scaled(128, size, 32), _scaled(8, size, 1), 128, 1024, 4
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=_scaled(dim * 8 / 3, 1.0, 16), num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq, attn_implementation="sdpa",
        bos_token_id=0, eos_token_id=0,
    )
    lm = LlamaForCausalLM(config)
    return BenchModel(
        "llama", f"transformers LlamaForCausalLM, {layers} layers, dim {dim}, 4 heads / 2 KV heads, SDPA, batch {batch} x {seq}",
        CausalLM(lm), (torch.randint(0, vocab, (batch, seq)),), list(lm.model.layers),
    )


SUITE: dict[str, Callable[[float], BenchModel]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "gpt": _gpt,
    "gpt2": _gpt2,
    "llama": _llama,
}
EXTRA: dict[str, Callable[[float], BenchModel]] = {"tiny-mlp": _tiny_mlp}
DEFAULT_MODELS = list(SUITE)


def build(name: str, size: float = 1.0, seed: int = 0) -> BenchModel:
    """The model ``name`` at ``size``, with weights and inputs drawn from ``seed``."""
    makers = {**SUITE, **EXTRA}
    if name not in makers:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(makers)}")
    torch.manual_seed(seed)
    return makers[name](size)


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
