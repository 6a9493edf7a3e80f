"""The loss head in chunks: no ``[tokens, vocab]`` tensor is ever alive whole.

A language model's last linear (the LM head) and its cross-entropy make the largest tensors of a
training step: the logits, their fp32 upcast, the log-softmax and their gradient, each
``[tokens, vocab]``. No save-or-recompute cut reaches them: either way one of them is alive whole
in the backward. ``chunk_loss_heads`` finds ``cross_entropy(linear(h, W, b)[.float()].view(-1, V),
labels)`` in the graph Dynamo captured (before AOTAutograd traces it) and replaces it with
``chunked_linear_cross_entropy``, an autograd function that walks the tokens in chunks and forms,
per chunk, the loss and the gradients of ``h``, ``W`` and ``b`` in the forward (as Liger's fused
linear cross-entropy does); the backward only scales them by the incoming gradient. A chunk's
logits are about the size of the hidden states (``ceil(vocab / hidden)`` chunks), the head's
FLOPs are those of the unchunked head (nothing is recomputed), and the weight's gradient is
accumulated chunk by chunk. The traced forward then saves ``[tokens, hidden]`` and ``[vocab,
hidden]`` gradients for the backward instead of ``[tokens, vocab]`` values.

Matched: ``F.cross_entropy`` with ``reduction`` mean or sum (a ``/ num_items_in_batch`` after it
stays as it is), any ``ignore_index``, ``label_smoothing``, no class weights; the head with or
without bias, tied or not, with or without an upcast to fp32 between head and loss, over any
leading token dimensions, with or without a row of logit biases added after the linear (BART's
``final_logits_bias``) and Gemma 2's final logit soft-capping (``c * tanh(logits / c)``), both
before the upcast; the logits used by nothing else. Left as they are, with the reason
recorded: a dynamic number of tokens, logits the graph also returns or reads elsewhere, class
weights, a vocabulary no larger than the hidden size.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import pathlib
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

_LINEARS = (torch._C._nn.linear, F.linear)
_PASS_THROUGH_METHODS = ("view", "reshape", "float", "contiguous", "to")


@dataclass(frozen=True)
class LossHeadRewrite:
    """What happened to one cross-entropy of the graph: chunked (into ``chunks`` of ``chunk_tokens``)
    or left as it is, and why."""

    chunked: bool
    reason: str
    tokens: int = 0
    vocab: int = 0
    hidden: int = 0
    chunks: int = 0
    chunk_tokens: int = 0

    def logits_bytes(self) -> int:
        """Bytes of one fp32 ``[tokens, vocab]`` tensor: what each chunked one no longer holds whole."""
        return self.tokens * self.vocab * 4


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(linear(h, weight, bias), labels)`` with the loss and the gradients formed
    chunk by chunk in the forward. ``h``: ``[tokens, hidden]``; ``labels``: ``[tokens]``."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, ignore_index, reduction, label_smoothing, upcast, chunk_tokens, softcap):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        valid = labels != ignore_index
        count = valid.sum()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h_chunks, grad_w, grad_b = [], None, None
        for start in range(0, h.shape[0], chunk_tokens):
            stop = min(start + chunk_tokens, h.shape[0])
            loss, grad_logits = _chunk(
                h[start:stop], weight, bias, labels[start:stop], valid[start:stop], label_smoothing, upcast, softcap
            )
            total = total + loss
            if not (need_h or need_w or need_b):
                continue
            grad_logits = grad_logits.to(h.dtype)
            if need_h:
                grad_h_chunks.append(grad_logits @ weight)
            if need_w:  # accumulated in place: an out-of-place sum copies [vocab, hidden] once a chunk
                if grad_w is None:
                    grad_w = (grad_logits.t() @ h[start:stop]).float()
                else:
                    accumulate_matmul_(grad_w, grad_logits.t(), h[start:stop])
            if need_b:
                chunk_sum = grad_logits.float().sum(0)
                grad_b = chunk_sum if grad_b is None else grad_b + chunk_sum
        grad_h = torch.cat(grad_h_chunks) if need_h else None
        if reduction == "mean":
            loss = total / count  # NaN when every token is ignored, as eager's
            scale = torch.where(count > 0, 1.0 / count.clamp(min=1), 0.0)  # and zero gradients, as eager's
        else:
            loss, scale = total, torch.ones((), dtype=torch.float32, device=h.device)
        ctx.save_for_backward(
            scale,
            grad_h if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
        )
        return loss if upcast else loss.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        scale, grad_h, grad_w, grad_b = ctx.saved_tensors
        factor = grad_loss.float() * scale
        grads = [None if g is None else g * factor.to(g.dtype) for g in (grad_h, grad_w, grad_b)]
        return (*grads, None, None, None, None, None, None, None)


@torch.library.custom_op("rematpass::accumulate_matmul_", mutates_args=("total",))
def accumulate_matmul_(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += a @ b`` in place. An op of its own, so that functionalization hands it to
    Inductor as a mutation it re-inplaces (an ``addmm`` would allocate and copy ``total``)."""
    if total.dtype == a.dtype == b.dtype:
        total.addmm_(a, b)
    else:  # a low-precision head accumulates in fp32
        total.add_(torch.mm(a, b))


@accumulate_matmul_.register_fake
def _(total, a, b) -> None:
    return None


def _chunk(h, weight, bias, labels, valid, label_smoothing: float, upcast: bool, softcap: float | None):
    """One chunk's summed loss and the gradient of that sum by the head's output (masked rows
    zero). ``softcap``: the loss reads ``softcap * tanh(logits / softcap)`` (Gemma 2's final logit
    soft-capping, applied in the head's dtype before the upcast, as transformers does)."""
    logits = F.linear(h, weight, bias)
    capped = None
    if softcap is not None:
        capped = torch.tanh(logits / softcap)
        logits = capped * softcap
    if upcast:
        logits = logits.float()
    scores = logits.float()
    log_norm = torch.logsumexp(scores, dim=-1)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    target_logit = scores.gather(1, safe[:, None]).squeeze(1)
    per_token = log_norm - target_logit
    if label_smoothing:
        smooth = log_norm - scores.mean(dim=-1)
        per_token = (1.0 - label_smoothing) * per_token + label_smoothing * smooth
    loss = (per_token * valid).sum()
    # softmax from the logsumexp, masked, smoothed and through the soft-cap in one pass (Inductor
    # fuses it into one kernel); then the target's -1, a scatter of one value per row
    keep = valid[:, None].to(scores.dtype)
    grad = torch.exp(scores - log_norm[:, None])
    if label_smoothing:
        grad = grad - label_smoothing / logits.shape[-1]
    if capped is not None:  # d(c * tanh(z / c)) / dz = 1 - tanh(z / c)^2
        slope = 1.0 - capped.float().square()
        grad = grad * keep * slope
        target = -(1.0 - label_smoothing) * keep * slope.gather(1, safe[:, None])
    else:
        grad = grad * keep
        target = -(1.0 - label_smoothing) * keep
    return loss, grad.scatter_add(1, safe[:, None], target)


def chunked_linear_cross_entropy(
    h,
    weight,
    bias,
    labels,
    *,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    upcast=False,
    chunk_tokens,
    softcap=None,
):
    """The loss ``cross_entropy(linear(h, weight, bias)[.float()], labels)`` in chunks of tokens
    (with ``softcap``, of ``softcap * tanh(linear(...) / softcap)``)."""
    return ChunkedLinearCrossEntropy.apply(
        h, weight, bias, labels, ignore_index, reduction, float(label_smoothing), upcast, int(chunk_tokens), softcap
    )


# ---------------------------------------------------------------------------- matching


def _value(node: object):
    return node.meta.get("example_value") if isinstance(node, fx.Node) else None


def _argument(node: fx.Node, position: int, name: str, default=None):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


@dataclass(frozen=True)
class _Head:
    """The linear under a loss, and what stands between them."""

    linear: fx.Node | None
    upcast: bool = False
    softcap: float | None = None
    reason: str = ""
    extra_bias: fx.Node | None = None  # a row added to the logits after the linear
    # The nodes from the loss's input down to the linear: the rewrite erases them, and nothing else.
    chain: tuple = ()


def _softcap_of(node: fx.Node) -> tuple[fx.Node, float, tuple] | None:
    """``c * tanh(x / c)`` (Gemma 2's final logit soft-capping, operands either way round):
    ``(x, c, the tanh and division nodes)``."""
    if node.op != "call_function" or node.target not in (operator.mul, torch.mul):
        return None
    factors = list(node.args)
    tanh = next((f for f in factors if isinstance(f, fx.Node) and f.target in (torch.tanh, "tanh")), None)
    cap = next((f for f in factors if isinstance(f, float | int) and not isinstance(f, bool)), None)
    if tanh is None or cap is None or len(tanh.users) != 1:
        return None
    quotient = tanh.args[0]  # torch.tanh(x) and x.tanh() alike
    if not (
        isinstance(quotient, fx.Node)
        and quotient.op == "call_function"
        and quotient.target in (operator.truediv, torch.div)
        and len(quotient.args) == 2
        and quotient.args[1] == cap
        and len(quotient.users) == 1
        and isinstance(quotient.args[0], fx.Node)
    ):
        return None
    return quotient.args[0], float(cap), (tanh, quotient)


def _bias_add_of(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``logits + b`` with ``b`` of one row, ``[vocab]`` or ``[1, vocab]`` (BART's
    ``final_logits_bias``): ``(logits, b)``."""
    if node.op != "call_function" or node.target not in (operator.add, torch.add) or node.kwargs:
        return None
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    values = [_value(a) for a in node.args]
    if any(v is None for v in values):
        return None
    for main, row in ((0, 1), (1, 0)):
        big, small = values[main], values[row]
        if small.dim() <= 2 and small.shape[-1] == big.shape[-1] and small.numel() == big.shape[-1] < big.numel():
            return node.args[main], node.args[row]
    return None


def _head_of(logits: fx.Node) -> _Head:
    """The linear that made ``logits`` through views, reshapes, an upcast, a row of logit biases
    and a soft-cap, or why not. Each must sit where transformers puts it: the bias added and the
    soft-cap applied in the head's dtype, before the upcast."""
    node, upcast, softcap, extra_bias = logits, False, None, None
    chain: list[fx.Node] = []
    while not (node.op == "call_function" and node.target in _LINEARS):
        chain.append(node)
        if len(node.users) != 1:
            return _Head(None, reason="the logits are used by more than the loss (returned, or a second loss term)")
        capped = _softcap_of(node) if softcap is None and extra_bias is None else None
        if capped is not None:
            node, softcap, between = capped
            chain += between
            continue
        added = _bias_add_of(node) if extra_bias is None else None
        if added is not None:
            node, extra_bias = added
            continue
        if node.op != "call_method" or node.target not in _PASS_THROUGH_METHODS:
            return _Head(None, reason=f"the logits come from {node.op} {node.target}, not a linear head")
        if node.target in ("float", "to"):
            if softcap is not None or extra_bias is not None:
                return _Head(
                    None, reason="an upcast before the soft-cap or the logit bias (only after them is chunked)"
                )
            value = _value(node)
            if value is None or value.dtype != torch.float32:
                return _Head(None, reason="a conversion other than an fp32 upcast between head and loss")
            upcast = True
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return _Head(None, reason="the logits are not a graph value")
    if len(node.users) != 1:
        return _Head(None, reason="the logits are used by more than the loss (returned, or a second loss term)")
    return _Head(node, upcast, softcap, extra_bias=extra_bias, chain=(*chain, node))


# Each chunk is unrolled into the compiled graph, and smaller chunks make smaller, slower matmuls.
# Measured (benchmarks/loss_head.py, GPT-2's vocabulary, 2 layers, 4 x 512 tokens, CPU): 4 chunks
# peaked as low as 8 (0.34x of torch.compile's peak; the step's largest tensor is then elsewhere)
# at 0.99x of torch.compile's step time, against 1.06x for 8 chunks.
MAX_AUTO_CHUNKS = 4


def chunk_count(tokens: int, vocab: int, hidden: int, forced: int | None) -> int:
    """How many chunks: ``forced`` when given, else enough that a chunk's logits are about the
    size of the hidden states, ``ceil(vocab / hidden)`` (Liger's rule), at most ``MAX_AUTO_CHUNKS``;
    never more than one per token."""
    chunks = forced if forced is not None else min(math.ceil(vocab / max(hidden, 1)), MAX_AUTO_CHUNKS)
    return max(1, min(chunks, tokens))


def chunk_loss_heads(
    gm: fx.GraphModule, forced_chunks: int | None = None, *, dry_run: bool = False
) -> list[LossHeadRewrite]:
    """Rewrite every matched head + cross-entropy of ``gm`` (a Dynamo graph) in place; returns
    what happened to each cross-entropy. ``forced_chunks``: the knob's count (None: automatic);
    ``dry_run``: say what would be chunked, change nothing."""
    outcomes = []
    for loss in list(gm.graph.find_nodes(op="call_function", target=F.cross_entropy)):
        outcomes.append(_rewrite(gm, loss, forced_chunks, dry_run))
    if any(o.chunked for o in outcomes):
        gm.recompile()
    return outcomes


def _rewrite(gm: fx.GraphModule, loss: fx.Node, forced_chunks: int | None, dry_run: bool) -> LossHeadRewrite:
    logits, labels = _argument(loss, 0, "input"), _argument(loss, 1, "target")
    if _argument(loss, 2, "weight") is not None:
        return LossHeadRewrite(False, "class weights are not chunked")
    if _argument(loss, 3, "size_average") is not None or _argument(loss, 5, "reduce") is not None:
        return LossHeadRewrite(False, "the deprecated size_average / reduce arguments")
    reduction = _argument(loss, 6, "reduction", "mean")
    ignore_index = _argument(loss, 4, "ignore_index", -100)
    smoothing = _argument(loss, 7, "label_smoothing", 0.0)
    if reduction not in ("mean", "sum") or not isinstance(ignore_index, int) or not isinstance(smoothing, float | int):
        return LossHeadRewrite(False, f"reduction={reduction!r} or a non-constant argument")
    if not isinstance(logits, fx.Node) or not isinstance(labels, fx.Node):
        return LossHeadRewrite(False, "the logits or labels are not graph values")
    found = _head_of(logits)
    if found.linear is None:
        return LossHeadRewrite(False, found.reason)
    head, upcast = found.linear, found.upcast
    h, weight = _argument(head, 0, "input"), _argument(head, 1, "weight")
    bias = _argument(head, 2, "bias")
    h_value, w_value, logits_value = _value(h), _value(weight), _value(logits)
    if h_value is None or w_value is None or logits_value is None or logits_value.dim() != 2:
        return LossHeadRewrite(False, "the head's shapes are unknown, or the loss does not read [tokens, vocab]")
    shape = (*h_value.shape, *w_value.shape)
    if not all(isinstance(s, int) for s in shape):
        return LossHeadRewrite(False, "a dynamic number of tokens or a dynamic vocabulary")
    vocab, hidden = w_value.shape
    tokens = math.prod(h_value.shape[:-1])
    if vocab <= hidden:
        return LossHeadRewrite(False, "the vocabulary is no larger than the hidden size: nothing to gain")
    chunks = chunk_count(tokens, vocab, hidden, forced_chunks)
    chunk_tokens = math.ceil(tokens / chunks)
    if dry_run:
        return LossHeadRewrite(
            True, "would chunk", tokens, vocab, hidden, math.ceil(tokens / chunk_tokens), chunk_tokens
        )
    with gm.graph.inserting_before(loss):
        flat_h = gm.graph.call_method("reshape", (h, -1, hidden))
        flat_labels = gm.graph.call_method("reshape", (labels, -1))
        if found.extra_bias is not None:
            row = gm.graph.call_method("reshape", (found.extra_bias, -1))
            bias = row if bias is None else gm.graph.call_function(operator.add, (bias, row))
        chunked = gm.graph.call_function(
            chunked_linear_cross_entropy,
            (flat_h, weight, bias, flat_labels),
            {
                "ignore_index": ignore_index,
                "reduction": reduction,
                "label_smoothing": float(smoothing),
                "upcast": upcast,
                "chunk_tokens": chunk_tokens,
                "softcap": found.softcap,
            },
        )
    chunked.meta.update({k: v for k, v in loss.meta.items() if k != "example_value"})
    # AOTAutograd's cache bypasses a graph that calls a Python function it does not know, unless
    # the call carries a hash of what it runs (as torch.fx.wrap's do): then it is in the key.
    chunked.meta.update(is_wrapped=True, user_cache_hash=_source_hash())
    loss.replace_all_uses_with(chunked)
    gm.graph.erase_node(loss)
    # Only the head's own nodes go: a general dead-code pass would also drop in-place ops whose
    # results nobody reads (T5 masks its decoder ids with masked_fill_).
    for node in found.chain:
        if not node.users:
            gm.graph.erase_node(node)
    return LossHeadRewrite(True, "chunked", tokens, vocab, hidden, math.ceil(tokens / chunk_tokens), chunk_tokens)


@functools.cache
def _source_hash() -> str:
    return hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()


__all__ = ["ChunkedLinearCrossEntropy", "LossHeadRewrite", "chunk_loss_heads", "chunked_linear_cross_entropy"]
