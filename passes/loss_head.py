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
hidden]`` gradients for the backward instead of ``[tokens, vocab]`` values. How many chunks:
``chunk_count``'s rule, lowered to what the caller's ``pricing`` lets the chunks' extra weight
traffic cost (passes.chunk_price).

Matched: ``F.cross_entropy`` with ``reduction`` mean or sum (a ``/ num_items_in_batch`` after it
stays as it is), any ``ignore_index``, ``label_smoothing``, no class weights; the head with or
without bias, tied or not, with or without an upcast to fp32 between head and loss, over any
leading token dimensions, with or without a row of logit biases added after the linear (BART's
``final_logits_bias``) and Gemma 2's final logit soft-capping (``c * tanh(logits / c)``), both
before the upcast; a static or dynamic number of tokens. The logits may also be returned, as a
transformers model called with labels returns them: the forward then also forms them for the
user, whole and without gradients (each chunk writes its rows of them, or, as the caller's
``returned_by_matmul`` decides, one more head matmul forms them after the chunks: less memory,
more FLOPs), and ``with_returned_logits`` makes
them differentiable outside the compiled graph (``chunked_cross_entropy.LogitsOfHidden``), so
nothing of ``[tokens, vocab]`` size is kept for the backward or formed in it unless the user's
loss reads them. Left as they are, with the reason
recorded: logits read by anything else (a second loss term), class weights, a dynamic vocabulary
or hidden size, a vocabulary no larger than the hidden size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import operator
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from . import chunked_cross_entropy
from .chunk_price import ChunkPrice, ChunkPricing
from .chunked_cross_entropy import LogitsOfHidden, chunked_linear_cross_entropy
from .liveness import hinted_size

_LINEARS = (torch._C._nn.linear, F.linear)
_PASS_THROUGH_METHODS = ("view", "reshape", "float", "contiguous", "to")


@dataclass(frozen=True)
class ReturnedLogits:
    """Logits a chunked head also returns: where they are among the graph's outputs, where the
    head's weight and biases are among its inputs, and what they went through (``stage``:
    soft-capped, upcast). The rewritten graph returns the head's flat input after its outputs."""

    outputs: tuple[int, ...]
    weight: int
    bias: int | None
    extra_bias: int | None
    softcap: float | None
    stage: tuple[bool, bool]
    # True: formed whole after the chunks by one more head matmul (least memory); False: each chunk
    # writes its rows into the output (no FLOPs added, but the output is alive through the chunks)
    by_matmul: bool = False


@dataclass(frozen=True)
class LossHeadRewrite:
    """What happened to one cross-entropy of the graph: chunked (into ``chunks`` of at most
    ``chunk_tokens``) or left as it is, and why. ``tokens`` is the example's count (the count the
    graph was captured with when ``dynamic_tokens``: chunks then split whatever count comes)."""

    chunked: bool
    reason: str
    tokens: int = 0
    vocab: int = 0
    hidden: int = 0
    chunks: int = 0
    chunk_tokens: int = 0
    dynamic_tokens: bool = False
    returned: ReturnedLogits | None = None  # the logits are also a graph output
    price: ChunkPrice | None = None  # what the chunk count costs and holds (passes.chunk_price)

    def logits_bytes(self) -> int:
        """Bytes of one fp32 ``[tokens, vocab]`` tensor: what each chunked one no longer holds whole."""
        return self.tokens * self.vocab * 4

    def head_matmul_flops(self) -> int:
        """FLOPs of one ``[tokens, hidden] x [hidden, vocab]`` head matmul."""
        return 2 * self.tokens * self.hidden * self.vocab


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
    returned: fx.Node | None = None  # the one of them the graph also returns
    stage: tuple[bool, bool] = (False, False)  # what the returned one went through: soft-capped, upcast


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


def _head_of(logits: fx.Node, loss: fx.Node) -> _Head:
    """The linear that made ``logits`` through views, reshapes, an upcast, a row of logit biases
    and a soft-cap, or why not. Each must sit where transformers puts it: the bias added and the
    soft-cap applied in the head's dtype, before the upcast. One of these values may also be a
    graph output (the logits a model returns with its loss)."""
    node, below = logits, loss
    upcast, softcap, extra_bias, returned, stage = False, None, None, None, [False, False]
    chain: list[fx.Node] = []
    while True:
        others = [user for user in node.users if user is not below]
        if others:
            if returned is not None or not all(user.op == "output" for user in others):
                return _Head(None, reason="the logits are read by more than the loss and the graph's outputs")
            if extra_bias is not None:
                return _Head(None, reason="the logits returned are those before the logit bias the loss reads")
            returned = node
        if node.op == "call_function" and node.target in _LINEARS:
            break
        chain.append(node)
        capped = _softcap_of(node) if softcap is None and extra_bias is None else None
        if capped is not None:
            node, softcap, between = capped
            chain += between
            below = between[-1]  # the division reads the logits
            stage[0] = returned is not None
            continue
        added = _bias_add_of(node) if extra_bias is None else None
        if added is not None:
            below = node
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
            stage[1] = returned is not None
        below, node = node, node.args[0]
        if not isinstance(node, fx.Node):
            return _Head(None, reason="the logits are not a graph value")
    return _Head(
        node, upcast, softcap, extra_bias=extra_bias, chain=(*chain, node), returned=returned, stage=tuple(stage)
    )


# Each chunk is unrolled into the compiled graph, and smaller chunks make smaller, slower matmuls.
# Measured (benchmarks/loss_head.py, GPT-2's vocabulary, 2 layers, 4 x 512 tokens, CPU): 4 chunks
# of 512 tokens peaked as low as 8 of 256 (0.34x of torch.compile's peak; the step's largest
# tensor is then elsewhere) at 0.99x of torch.compile's step time, against 1.06x for 8 chunks. So
# chunks of at least 512 tokens, and at least 4 of them: more tokens, more chunks of that size.
MIN_AUTO_CHUNKS = 4
MIN_AUTO_CHUNK_TOKENS = 512


def chunk_count(tokens: int, vocab: int, hidden: int, forced: int | None, *, dynamic: bool = False) -> int:
    """How many chunks: ``forced`` when given, else ``ceil(tokens / MIN_AUTO_CHUNK_TOKENS)`` but at
    least ``MIN_AUTO_CHUNKS``, and never more than ``ceil(vocab / hidden)`` (Liger's rule: then a
    chunk's logits are about the size of the hidden states); never more than one per token when
    the count is static (a ``dynamic`` one is split by its count at capture, ``tokens``)."""
    if forced is not None:
        chunks = forced
    else:
        wanted = max(MIN_AUTO_CHUNKS, math.ceil(tokens / MIN_AUTO_CHUNK_TOKENS))
        chunks = min(wanted, math.ceil(vocab / max(hidden, 1)))
    return max(1, chunks if dynamic else min(chunks, tokens))


def chunk_loss_heads(
    gm: fx.GraphModule,
    forced_chunks: int | None = None,
    *,
    dry_run: bool = False,
    returned_by_matmul: Callable[[LossHeadRewrite], bool] | None = None,
    pricing: ChunkPricing | None = None,
) -> list[LossHeadRewrite]:
    """Rewrite every matched head + cross-entropy of ``gm`` (a Dynamo graph) in place; returns
    what happened to each cross-entropy. ``forced_chunks``: the knob's count (None: automatic);
    ``dry_run``: say what would be chunked, change nothing; ``returned_by_matmul(head)``: whether
    logits the head also returns are formed by one more head matmul (less memory, more FLOPs)
    rather than written by the chunks (the default); ``pricing``: what the plan lets chunking
    cost (an automatic count is lowered to fit it, and every count is priced for the report)."""
    outcomes = []
    for loss in list(gm.graph.find_nodes(op="call_function", target=F.cross_entropy)):
        outcomes.append(_rewrite(gm, loss, forced_chunks, dry_run, returned_by_matmul, pricing))
    if any(o.chunked for o in outcomes):
        gm.recompile()
    return outcomes


def _rewrite(
    gm: fx.GraphModule, loss: fx.Node, forced_chunks: int | None, dry_run: bool, by_matmul, pricing
) -> LossHeadRewrite:
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
    found = _head_of(logits, loss)
    if found.linear is None:
        return LossHeadRewrite(False, found.reason)
    head, upcast = found.linear, found.upcast
    h, weight = _argument(head, 0, "input"), _argument(head, 1, "weight")
    bias = _argument(head, 2, "bias")
    h_value, w_value, logits_value = _value(h), _value(weight), _value(logits)
    if h_value is None or w_value is None or logits_value is None or logits_value.dim() != 2:
        return LossHeadRewrite(False, "the head's shapes are unknown, or the loss does not read [tokens, vocab]")
    if not all(isinstance(s, int) for s in (*w_value.shape, h_value.shape[-1])):
        return LossHeadRewrite(False, "a dynamic vocabulary or hidden size")
    vocab, hidden = w_value.shape
    dynamic = not all(isinstance(s, int) for s in h_value.shape)
    tokens = math.prod(hinted_size(s) for s in h_value.shape[:-1])
    if vocab <= hidden:
        return LossHeadRewrite(False, "the vocabulary is no larger than the hidden size: nothing to gain")
    # A symbolic count is split into the same number of chunks whatever it comes to (some may be
    # empty); a static one never into more chunks than tokens.
    chunks = chunk_count(tokens, vocab, hidden, forced_chunks, dynamic=dynamic)
    price = None
    if pricing is not None:
        priced = (tokens, vocab, hidden, w_value.element_size())
        price = pricing.price(*priced, chunks) if forced_chunks is not None else pricing.affordable(*priced, chunks)
        if price is None:
            two = pricing.price(*priced, 2)
            return LossHeadRewrite(
                False,
                f"chunking costs more than the plan allows: 2 chunks add an estimated {two.extra_seconds:.3g} s "
                f"over an allowance of {pricing.allowance_seconds(tokens):.3g} s (time_tolerance)",
            )
        if price.chunks < min(chunks, tokens):  # lowered to fit the allowance
            chunks = price.chunks
    outcome = LossHeadRewrite(
        True, "chunked", tokens, vocab, hidden, chunks, math.ceil(tokens / chunks), dynamic_tokens=dynamic, price=price
    )
    returned = None
    if found.returned is not None:
        returned = _returned_logits(gm, found, weight, bias)
        if isinstance(returned, str):
            return LossHeadRewrite(False, returned)
        outcome = dataclasses.replace(outcome, returned=returned)
        if by_matmul is not None and by_matmul(outcome):
            returned = dataclasses.replace(returned, by_matmul=True)
            outcome = dataclasses.replace(outcome, returned=returned)
    if dry_run:
        return dataclasses.replace(outcome, reason="would chunk")
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
                "chunks": chunks,
                "softcap": found.softcap,
                "returned": None if returned is None else returned.stage,
                "returned_by_matmul": returned is not None and returned.by_matmul,
            },
        )
        if returned is not None:
            chunked_loss = gm.graph.call_function(operator.getitem, (chunked, 0))
            flat_logits = gm.graph.call_function(operator.getitem, (chunked, 1))
            # AOTAutograd's cache keys a method call only on a node it knows to be a tensor (a
            # graph without it is traced and planned again on every run)
            flat_logits.meta["example_value"] = _value(found.returned).detach().reshape(-1, vocab)
            shaped = _shaped_like(gm, flat_logits, found.returned, h, vocab)
            shaped.meta["example_value"] = _value(found.returned)
            _return_instead(gm, found.returned, shaped, flat_h)
    chunked.meta.update({k: v for k, v in loss.meta.items() if k != "example_value"})
    # AOTAutograd's cache bypasses a graph that calls a Python function it does not know, unless
    # the call carries a hash of what it runs (as torch.fx.wrap's do): then it is in the key.
    chunked.meta.update(is_wrapped=True, user_cache_hash=_source_hash())
    loss.replace_all_uses_with(chunked if returned is None else chunked_loss)
    gm.graph.erase_node(loss)
    # Only the head's own nodes go: a general dead-code pass would also drop in-place ops whose
    # results nobody reads (T5 masks its decoder ids with masked_fill_).
    for node in found.chain:
        if not node.users:
            gm.graph.erase_node(node)
    return outcome


def _returned_logits(gm: fx.GraphModule, found: _Head, weight, bias) -> ReturnedLogits | str:
    """Where the returned logits and the head's parameters are, or why they cannot be returned."""
    inputs = {node: i for i, node in enumerate(gm.graph.find_nodes(op="placeholder"))}
    weight, bias, extra_bias = (_unconverted(p) for p in (weight, bias, found.extra_bias))
    if any(p is not None and p not in inputs for p in (weight, bias, extra_bias)):
        return "the logits are returned and the head's weight or biases are not graph inputs"
    (output,) = gm.graph.find_nodes(op="output")
    outputs = output.args[0]
    where = tuple(i for i, value in enumerate(outputs) if value is found.returned) if isinstance(outputs, tuple) else ()
    value = _value(found.returned)
    if not where or value is None or value.dim() not in (2, _value(_argument(found.linear, 0, "input")).dim()):
        return "the logits are returned in a form not chunked (nested in the outputs, or reshaped)"
    return ReturnedLogits(
        where,
        inputs[weight],
        None if bias is None else inputs[bias],
        None if extra_bias is None else inputs[extra_bias],
        found.softcap,
        found.stage,
    )


def _unconverted(node):
    """``node`` through conversions that return their input itself (BART's
    ``final_logits_bias.to(logits.device)``): the graph input it is at run time, when it is one."""
    while (
        isinstance(node, fx.Node)
        and node.op == "call_method"
        and node.target in ("to", "contiguous")
        and isinstance(node.args[0], fx.Node)
        and _same_tensor(_value(node), _value(node.args[0]))
    ):
        node = node.args[0]
    return node


def _same_tensor(a, b) -> bool:
    """Whether a conversion from ``b`` to ``a`` returns ``b`` itself: same dtype, device, layout."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return False
    return a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and a.stride() == b.stride()


def _shaped_like(gm: fx.GraphModule, flat_logits: fx.Node, returned: fx.Node, h: fx.Node, vocab: int) -> fx.Node:
    """``flat_logits`` ``[tokens, vocab]`` in the returned logits' shape: flat, or ``h``'s leading
    dimensions (symbolic ones read from ``h`` at run time)."""
    if _value(returned).dim() == 2:
        return flat_logits
    leading = gm.graph.call_function(operator.getitem, (gm.graph.call_method("size", (h,)), slice(None, -1)))
    shape = gm.graph.call_function(operator.add, (leading, (vocab,)))
    return gm.graph.call_method("view", (flat_logits, shape))


def _return_instead(gm: fx.GraphModule, returned: fx.Node, logits: fx.Node, hidden: fx.Node) -> None:
    """The graph returns ``logits`` where it returned ``returned``, and ``hidden`` after its outputs."""
    (output,) = gm.graph.find_nodes(op="output")
    outputs = tuple(logits if value is returned else value for value in output.args[0])
    output.args = ((*outputs, hidden),)


def with_returned_logits(compiled, rewrites) -> object:
    """``compiled`` (what compiles a graph ``chunk_loss_heads`` rewrote) returning the graph's own
    outputs: each chunked head's returned logits made differentiable (``LogitsOfHidden``) from the
    head's input the rewritten graph returns after them. ``compiled`` as it is if none returns."""
    specs = [r.returned for r in rewrites if r.chunked and r.returned is not None]
    if not specs:
        return compiled

    def run(*args):  # called as the graph's forward is: one argument per placeholder
        params = [[None if i is None else args[i] for i in (s.weight, s.bias, s.extra_bias)] for s in specs]
        outputs = compiled(*args)
        ours, hiddens = list(outputs[: len(outputs) - len(specs)]), outputs[len(outputs) - len(specs) :]
        for spec, hidden, (weight, bias, extra_bias) in zip(specs, hiddens, params, strict=True):
            for i in spec.outputs:
                ours[i] = LogitsOfHidden.apply(ours[i], hidden, weight, bias, extra_bias, spec.softcap, spec.stage)
        return type(outputs)(ours) if isinstance(outputs, tuple) else ours

    return run


@functools.cache
def _source_hash() -> str:
    """What a chunked head runs, for AOTAutograd's cache key."""
    digest = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    digest.update(pathlib.Path(chunked_cross_entropy.__file__).read_bytes())
    return digest.hexdigest()


__all__ = [
    "LossHeadRewrite",
    "ReturnedLogits",
    "chunk_loss_heads",
    "chunked_linear_cross_entropy",
    "with_returned_logits",
]
