"""Every model the tests, the benchmark (``rematpass.bench``) and the examples train.

Each ``forward`` returns the scalar loss. Models that differ only in details
(the loss, a bias, where dropout sits) are one class with constructor
arguments; the defaults and presets say who uses which:

- ``ResidualMLP``: the tests' (``loss="sum"``, dim 32) and the benchmark's
  ``mlp`` (``loss="mean_square"``);
- ``ConvBN`` (the tests') and ``SmallCNN`` (the benchmark's ``cnn``): two
  different conv nets with BatchNorm;
- ``GPT`` and its block ``GPTBlock``: the benchmark's ``gpt`` (the defaults);
  ``TinyGPT``, the tests' preset (a head with bias, no dropout on the
  embeddings); the DDP and FSDP2 examples (``dropout=None``: no dropout layers);
- ``SmallTransformer``: the quickstart's ``nn.TransformerEncoder`` model;
- transformers models from configs with random weights (no download, no
  tokenizer): ``gpt2_lm``, ``llama_lm``, ``bert_mlm``, ``t5_lm`` (small configs
  in the tests and the benchmark's small suite, published sizes in its full
  suite), ``vit_classifier`` and ``resnet_classifier`` (the full suite's ViT-B/16
  and ResNet-50), and the wrappers ``CausalLM`` and ``LossOf`` that make their
  forward return the loss.

Parameters are created (so drawn from the RNG) and registered in the same order
as the models these replaced, so a seed gives the same weights and the same plans.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


class _example:
    """``Model.example()`` gives the default-sized model's input, ``model.example()`` this model's.

    The tests call it both ways; on the class, the width comes from class attributes.
    """

    def __init__(self, make):
        self.make = make
        functools.update_wrapper(self, make)

    def __get__(self, model, owner):
        return functools.partial(self.make, owner if model is None else model)


def _dropout(p: float | None) -> nn.Module:
    # None is no dropout at all: nn.Dropout(0.0) still puts an op in the traced graph.
    return nn.Identity() if p is None else nn.Dropout(p)


# ------------------------------------------------------------------ residual MLP


class ResidualMLP(nn.Module):
    """``depth`` pre-LayerNorm GELU MLP blocks with residuals, and a one-output head.

    ``loss``: "sum" sums the head's outputs (the tests'); "mean_square" averages their squares
    (the benchmark's).
    """

    dim = 32  # the default width, for ResidualMLP.example() on the class

    def __init__(self, dim: int = 32, depth: int = 4, loss: str = "sum"):
        super().__init__()
        if loss not in ("sum", "mean_square"):
            raise ValueError(f"loss={loss!r}: 'sum' or 'mean_square'")
        self.dim, self.loss = dim, loss
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        out = self.head(x)
        return out.sum() if self.loss == "sum" else out.pow(2).mean()

    @_example
    def example(model, batch: int = 256) -> torch.Tensor:
        # Enough rows that activations, not weight gradients, set the step's peak (as in training).
        return torch.randn(batch, model.dim)


# ------------------------------------------------------------------ conv nets with BatchNorm


class ConvBN(nn.Module):
    """Three conv-BatchNorm-ReLU layers (biased convolutions) and a max-pool; the loss is a logsumexp."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3))).logsumexp(-1).sum()

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 16, 16)


def _conv_bn(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Six conv-BatchNorm-ReLU layers (no conv bias) in three stages; cross-entropy over ``classes``."""

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


# ------------------------------------------------------------------ GPT-style transformer


class MixerBlock(nn.Module):
    """MLP-Mixer: a token-mixing MLP across patches, then a wide channel-mixing MLP."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # No bias on the token MLP's output: a per-token constant added across all channels meets a
        # LayerNorm over channels on every path, so its gradient is zero up to rounding (noise that
        # a relative gradient check reads as a mismatch).
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens, bias=False)
        )
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """MLP-Mixer on square images: patch embedding, ``depth`` mixer blocks, mean-pooled classifier."""

    def __init__(
        self, image: int = 32, patch: int = 4, dim: int = 128, depth: int = 4, expansion: int = 4, classes: int = 10
    ):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.ModuleList(
            MixerBlock(tokens, dim, tokens * expansion // 2, dim * expansion) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images, labels):
        x = self.patch(images).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(self.norm(x).mean(dim=1)), labels)


class GPTBlock(nn.Module):
    """Pre-LayerNorm block: causal SDPA attention, a GELU MLP, dropout on both residual branches."""

    def __init__(self, dim: int, heads: int, dropout: float | None = 0.0):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = _dropout(dropout)

    def attention(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.drop(self.attention(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """Token and learned position embeddings, ``layers`` GPTBlocks, next-token cross-entropy.

    ``dropout`` None: no dropout layers at all. ``head_bias``: the vocabulary head has a bias.
    ``embedding_dropout``: dropout also on the embeddings (with ``dropout``'s rate).
    """

    def __init__(
        self,
        vocab: int,
        dim: int,
        heads: int,
        layers: int,
        seq: int,
        dropout: float | None = 0.0,
        *,
        head_bias: bool = False,
        embedding_dropout: bool = True,
    ):
        super().__init__()
        self.vocab, self.seq = vocab, seq
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.drop = _dropout(dropout if embedding_dropout else None)
        self.blocks = nn.ModuleList(GPTBlock(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=head_bias)

    def forward(self, idx):
        x = self.drop(self.tok(idx) + self.pos[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, self.vocab), idx[:, 1:].reshape(-1))

    def example(self, batch: int = 2) -> torch.Tensor:
        return torch.randint(0, self.vocab, (batch, self.seq))


class TinyGPT(GPT):
    """The tests' GPT: small by default, a head with bias, dropout in the blocks only."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, heads: int = 4, layers: int = 2, seq: int = 16, dropout: float = 0.0
    ):
        super().__init__(vocab, dim, heads, layers, seq, dropout, head_bias=True, embedding_dropout=False)


class SmallTransformer(nn.Module):
    """``nn.TransformerEncoder`` (pre-norm, GELU, causal mask) as a language model (the quickstart's)."""

    def __init__(self, vocab=256, dim=128, heads=4, layers=2, seq=64, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        x = self.encoder(x, mask=self.mask[: tokens.shape[1], : tokens.shape[1]], is_causal=True)
        logits = self.head(x)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


# ------------------------------------------------------------------ transformers models


class CausalLM(nn.Module):
    """A transformers causal LM whose forward takes the token ids alone and returns the loss (labels = inputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss


class LossOf(nn.Module):
    """``model(**kwargs).loss`` as a module of positional tensors named ``names``, with the
    keyword arguments ``fixed`` on every call (CLIP's ``return_loss=True``)."""

    def __init__(self, model: nn.Module, *names: str, **fixed):
        super().__init__()
        self.model, self.names, self.fixed = model, names, fixed

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors)), **self.fixed).loss


def gpt2_lm(*, vocab: int, dim: int, layers: int, positions: int, heads: int = 4, **config) -> nn.Module:
    """transformers GPT2LMHeadModel, no dropout; ``config``: more GPT2Config fields."""
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=positions,
            n_embd=dim,
            n_layer=layers,
            n_head=heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **config,
        )
    )
    # "GPT2LMHeadModel" matches no name in transformers' LOSS_MAPPING, so the loss property would log
    # a warning_once inside every forward: Dynamo breaks the graph there and fullgraph=True fails.
    lm.loss_type = "ForCausalLM"
    return lm


def llama_lm(
    *, vocab: int, dim: int, hidden: int, layers: int, positions: int, heads: int = 4, kv_heads: int = 2, **config
) -> nn.Module:
    """transformers LlamaForCausalLM (grouped-query attention), no dropout; ``config``: more LlamaConfig fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=positions,
            attention_dropout=0.0,
            **config,
        )
    )


def bert_mlm(*, vocab: int, dim: int, hidden: int, layers: int, positions: int, heads: int = 4, **config) -> nn.Module:
    """transformers BertForMaskedLM, no dropout; ``config``: more BertConfig fields."""
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(
        BertConfig(
            vocab_size=vocab,
            hidden_size=dim,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden,
            max_position_embeddings=positions,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **config,
        )
    )


def t5_lm(*, vocab: int, dim: int, head_dim: int, hidden: int, layers: int, heads: int = 4, **config) -> nn.Module:
    """transformers T5ForConditionalGeneration (``layers`` encoder and decoder layers), no dropout."""
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(
            vocab_size=vocab,
            d_model=dim,
            d_kv=head_dim,
            d_ff=hidden,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            dropout_rate=0.0,
            use_cache=False,
            decoder_start_token_id=0,
            pad_token_id=0,
            **config,
        )
    )


def vit_classifier(*, classes: int = 1000, **config) -> nn.Module:
    """transformers ViTForImageClassification, no dropout; ViTConfig's defaults are ViT-B/16 at 224x224."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(
        ViTConfig(
            num_labels=classes,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            # Left None, the loss sets it on the config inside the first forward: a side effect Dynamo traces.
            problem_type="single_label_classification",
            **config,
        )
    )


def resnet_classifier(*, classes: int = 1000, **config) -> nn.Module:
    """transformers ResNetForImageClassification; ResNetConfig's defaults are ResNet-50."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(
        ResNetConfig(num_labels=classes, problem_type="single_label_classification", **config)
    )
