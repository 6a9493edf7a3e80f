"""What a loss head's chunk count costs and what it holds, priced as the cost model prices a
recomputation: a roofline, ``max(FLOPs / flops_per_second, bytes / bytes_per_second)`` per op.

Chunking adds no FLOPs (passes.chunked_cross_entropy forms the gradients in the forward and
recomputes nothing), but each chunk runs the head's three matmuls again on fewer tokens: the
logits (``h_c @ W.T``), the hidden state's gradient (``g_c @ W``) and the weight's gradient,
accumulated in place into an fp32 ``[vocab, hidden]`` buffer (``acc += g_c.T @ h_c``). Each reads
the ``[vocab, hidden]`` weight or reads and writes the accumulator once a chunk, so a chunk count
pays for its extra weight traffic where a chunk is too small for its matmuls to be compute-bound.
What it buys: a chunk holds its ``[chunk_tokens, vocab]`` fp32 tensors (the logits and their
gradient, ``TENSORS_ALIVE``) instead of ``[tokens, vocab]`` ones.

    >>> gpt2 = dict(tokens=2048, vocab=50257, hidden=768, itemsize=4)
    >>> price = price_chunks(**gpt2, chunks=4, flops_per_second=1e11, bytes_per_second=1e10)
    >>> price.chunk_tokens, price.extra_seconds   # 512-token chunks are compute-bound on these rates
    (512, 0.0)
    >>> round(price.extra_bytes / 2**20)        # three more reads of the weight, accumulator read and written
    1767
    >>> price_chunks(**gpt2, chunks=512, flops_per_second=1e11, bytes_per_second=1e10).extra_seconds > 0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The fp32 [tokens, vocab] tensors the head holds at once: the logits (upcast, soft-capped) and
# their gradient; the whole head's log-softmax, saved for the backward, comes on top of these.
TENSORS_ALIVE = 2


@dataclass(frozen=True)
class ChunkPrice:
    """One chunk count for one head: its chunk size, what it moves and costs over the whole head's
    three matmuls (``extra_bytes``, ``extra_seconds``; never negative), and the bytes of the
    ``TENSORS_ALIVE`` fp32 ``[chunk_tokens, vocab]`` tensors it holds at once (``held_bytes``)
    against the whole head's (``whole_held_bytes``)."""

    chunks: int
    chunk_tokens: int
    extra_bytes: int
    extra_seconds: float
    held_bytes: int
    whole_held_bytes: int


def _head_matmuls(tokens: int, vocab: int, hidden: int, itemsize: int) -> list[tuple[int, int]]:
    """(FLOPs, bytes moved) of the head's three matmuls over ``tokens`` tokens."""
    flops = 2 * tokens * vocab * hidden
    weight, acts, logits = vocab * hidden * itemsize, tokens * hidden * itemsize, tokens * vocab * 4
    return [
        (flops, acts + weight + logits),  # logits = h @ W.T
        (flops, logits + weight + acts),  # grad_h = g @ W
        (flops, logits + acts + 2 * vocab * hidden * 4),  # acc += g.T @ h, fp32 accumulator read and written
    ]


def _roofline(matmuls: list[tuple[int, int]], flops_per_second: float, bytes_per_second: float) -> float:
    return sum(max(f / flops_per_second, b / bytes_per_second) for f, b in matmuls)


def price_chunks(
    tokens: int,
    vocab: int,
    hidden: int,
    itemsize: int,
    chunks: int,
    flops_per_second: float,
    bytes_per_second: float,
) -> ChunkPrice:
    """The price of ``chunks`` chunks of ``tokens`` (the last may be shorter) against the whole head."""
    chunks = max(1, min(chunks, max(tokens, 1)))
    size = math.ceil(tokens / chunks)
    sizes = [size] * (chunks - 1) + [tokens - size * (chunks - 1)]
    chunked = [m for t in sizes for m in _head_matmuls(t, vocab, hidden, itemsize)]
    whole = _head_matmuls(tokens, vocab, hidden, itemsize)
    extra_seconds = _roofline(chunked, flops_per_second, bytes_per_second) - _roofline(
        whole, flops_per_second, bytes_per_second
    )
    return ChunkPrice(
        chunks=chunks,
        chunk_tokens=size,
        extra_bytes=sum(b for _, b in chunked) - sum(b for _, b in whole),
        extra_seconds=max(0.0, extra_seconds),
        held_bytes=TENSORS_ALIVE * size * vocab * 4,
        whole_held_bytes=TENSORS_ALIVE * tokens * vocab * 4,
    )


@dataclass(frozen=True)
class ChunkPricing:
    """What the caller's plan lets chunking cost: the machine's rates (the cost model's) and the
    share of the step's estimated time it may add (``allowance``; ``math.inf``: any). The step's
    FLOPs are estimated as 6 x tokens x trainable elements (the forward's 2 and the backward's 4
    per parameter and token)."""

    flops_per_second: float
    bytes_per_second: float
    allowance: float
    trainable_elements: int

    def allowance_seconds(self, tokens: int) -> float:
        if math.isinf(self.allowance):
            return math.inf
        return self.allowance * 6 * tokens * self.trainable_elements / self.flops_per_second

    def price(self, tokens: int, vocab: int, hidden: int, itemsize: int, chunks: int) -> ChunkPrice:
        return price_chunks(tokens, vocab, hidden, itemsize, chunks, self.flops_per_second, self.bytes_per_second)

    def affordable(self, tokens: int, vocab: int, hidden: int, itemsize: int, wanted: int) -> ChunkPrice | None:
        """The most chunks, at most ``wanted`` (and at least 2), whose extra time fits the allowance;
        None when not even 2 do (the head is then best left whole).

        >>> pricing = ChunkPricing(1e11, 1e10, allowance=0.0, trainable_elements=10**8)
        >>> pricing.affordable(2048, 50257, 768, 4, wanted=4).chunks   # compute-bound chunks: free
        4
        >>> price = pricing.affordable(2048, 50257, 768, 4, wanted=128)   # 16-token chunks are not
        >>> price.chunks, price.chunk_tokens   # the most that stay compute-bound on these rates
        (41, 50)
        """
        allowed = self.allowance_seconds(tokens)
        # a roofline sum's rounding is not a cost: a relative slack of 1e-9 of the head's own time
        slack = 1e-9 * _roofline(
            _head_matmuls(tokens, vocab, hidden, itemsize), self.flops_per_second, self.bytes_per_second
        )
        for chunks in range(wanted, 1, -1):
            price = self.price(tokens, vocab, hidden, itemsize, chunks)
            if price.extra_seconds <= allowed + slack:
                return price
        return None
