"""What a chunked loss head runs: the loss and its gradients formed chunk by chunk of tokens.

``chunked_linear_cross_entropy`` is what passes.loss_head puts in place of an LM head and its
cross-entropy; AOTAutograd traces it like any other code. ``LogitsOfHidden`` makes logits the
chunked head also returns differentiable again, outside the compiled graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(linear(h, weight, bias), labels)`` with the loss and the gradients formed
    chunk by chunk in the forward. ``h``: ``[tokens, hidden]``; ``labels``: ``[tokens]``."""

    @staticmethod
    def forward(
        ctx,
        h,
        weight,
        bias,
        labels,
        ignore_index,
        reduction,
        label_smoothing,
        upcast,
        chunks,
        softcap,
        returned,
        returned_by_matmul,
    ):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        valid = labels != ignore_index
        count = valid.sum()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h_chunks, grad_w, grad_b = [], None, None
        pieces = list(_split(h, labels, valid, chunks))
        rows = sum(piece[0].shape[0] for piece in pieces)  # padded to whole chunks when dynamic
        logits_out, start = None, 0
        for h_chunk, label_chunk, valid_chunk in pieces:
            logits = F.linear(h_chunk, weight, bias)
            if returned is not None and not returned_by_matmul:  # each chunk writes its rows of them
                stage = _returned_stage(logits, softcap, returned)
                if logits_out is None:
                    logits_out = stage.new_empty((rows, stage.shape[1]))
                write_rows_(logits_out, stage, start)
                start = start + h_chunk.shape[0]
            loss, grad_logits = _chunk(logits, label_chunk, valid_chunk, label_smoothing, upcast, softcap)
            total = total + loss
            if not (need_h or need_w or need_b):
                continue
            grad_logits = grad_logits.to(h.dtype)
            if need_h:
                grad_h_chunks.append(grad_logits @ weight)
            if need_w:  # accumulated in place: an out-of-place sum copies [vocab, hidden] once a chunk
                if grad_w is None:
                    grad_w = (grad_logits.t() @ h_chunk).float()
                else:
                    accumulate_matmul_(grad_w, grad_logits.t(), h_chunk)
            if need_b:
                chunk_sum = grad_logits.float().sum(0)
                grad_b = chunk_sum if grad_b is None else grad_b + chunk_sum
        grad_h = torch.cat(grad_h_chunks)[: h.shape[0]] if need_h else None  # less the padding
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
        loss = loss if upcast else loss.to(h.dtype)
        if returned is None:
            return loss
        # For the user only, without gradients here (LogitsOfHidden, outside the compiled graph,
        # differentiates them if the user's loss reads them). Either written chunk by chunk into
        # one buffer, alive through the chunks, or formed after them by one more head matmul
        # (GPT-2, 2 layers, 4 x 512 tokens: 566 MiB and 478 MiB). Kept from the chunks and
        # concatenated, the chunks' logits were all alive at once in Inductor's schedule (860 MiB).
        if returned_by_matmul:
            logits = _returned_stage(F.linear(h, weight, bias), softcap, returned)
        else:
            logits = logits_out[: h.shape[0]]
        ctx.mark_non_differentiable(logits)
        return loss, logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits=None):
        scale, grad_h, grad_w, grad_b = ctx.saved_tensors
        factor = grad_loss.float() * scale
        grads = [None if g is None else g * factor.to(g.dtype) for g in (grad_h, grad_w, grad_b)]
        return (*grads, None, None, None, None, None, None, None, None, None)


def _split(h, labels, valid, chunks: int):
    """``(h, labels, valid)`` of each chunk of tokens. A static count splits as evenly as it goes;
    a symbolic one (a dynamic batch or sequence) is padded to ``chunks`` equal chunks of ignored
    tokens, since slicing or ``tensor_split`` at symbolic bounds guards on the count and would
    recompile for most new counts (padded, only counts up to ``chunks`` compile again)."""
    tokens = h.shape[0]
    if isinstance(tokens, int):
        return zip(h.tensor_split(chunks), labels.tensor_split(chunks), valid.tensor_split(chunks))
    size = (tokens + chunks - 1) // chunks
    pad = chunks * size - tokens
    return zip(
        F.pad(h, (0, 0, 0, pad)).view(chunks, size, h.shape[1]).unbind(),
        F.pad(labels, (0, pad)).view(chunks, size).unbind(),
        F.pad(valid, (0, pad)).view(chunks, size).unbind(),  # padded tokens are ignored
    )


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


@torch.library.custom_op("rematpass::write_rows_", mutates_args=("out",))
def write_rows_(out: torch.Tensor, rows: torch.Tensor, start: int) -> None:
    """``out[start : start + len(rows)] = rows`` in place: an op of its own for the same reason
    (functionalized, a slice assignment becomes a ``slice_scatter`` that copies all of ``out``)."""
    out.narrow(0, start, rows.shape[0]).copy_(rows)


@write_rows_.register_fake
def _(out, rows, start) -> None:
    return None


def _returned_stage(logits, softcap: float | None, returned: tuple[bool, bool]):
    """The head's output as the graph returned it: soft-capped, upcast, as ``returned`` says."""
    if returned[0]:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float() if returned[1] else logits


def _chunk(logits, labels, valid, label_smoothing: float, upcast: bool, softcap: float | None):
    """One chunk's summed loss and the gradient of that sum by its ``logits`` (the head's output;
    masked rows zero). ``softcap``: the loss reads ``softcap * tanh(logits / softcap)`` (Gemma 2's
    final logit soft-capping, applied in the head's dtype before the upcast, as transformers does)."""
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
    chunks,
    softcap=None,
    returned=None,
    returned_by_matmul=False,
):
    """The loss ``cross_entropy(linear(h, weight, bias)[.float()], labels)`` in ``chunks`` chunks of
    tokens, as equal as they split (with ``softcap``, of ``softcap * tanh(linear(...) / softcap)``).
    With ``returned`` = ``(soft-capped, upcast)``: ``(loss, logits)``, the logits at that stage,
    whole (each chunk writes its rows, or with ``returned_by_matmul`` one more head matmul forms
    them after the chunks), without gradients (see ``LogitsOfHidden``)."""
    return ChunkedLinearCrossEntropy.apply(
        h,
        weight,
        bias,
        labels,
        ignore_index,
        reduction,
        float(label_smoothing),
        upcast,
        int(chunks),
        softcap,
        returned,
        bool(returned_by_matmul),
    )


class LogitsOfHidden(torch.autograd.Function):
    """The logits a chunked head returned, differentiable again: ``logits`` as they are in the
    forward; in the backward, if the user's loss reads them, the gradients of
    ``linear(h, weight, bias + extra_bias)`` (soft-capped, upcast as ``returned`` says) by its
    inputs, the logits recomputed whole (only then). Applied outside the compiled graph, so a
    step that never reads them forms no ``[tokens, vocab]`` gradient: AOTAutograd would give a
    differentiable output a zero-filled one."""

    @staticmethod
    def forward(ctx, logits, h, weight, bias, extra_bias, softcap, returned):
        ctx.save_for_backward(h, weight, bias, extra_bias)
        ctx.softcap, ctx.returned, ctx.shape = softcap, returned, logits.shape
        ctx.set_materialize_grads(False)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 7
        saved = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        h, weight, bias, extra_bias = saved
        with torch.enable_grad():
            logits = F.linear(h, weight, bias)
            if extra_bias is not None:
                logits = logits + extra_bias.reshape(-1)
            logits = _returned_stage(logits, ctx.softcap, ctx.returned)
            wanted = [t for t in saved if t is not None and t.requires_grad]
            found = iter(torch.autograd.grad(logits.reshape(ctx.shape), wanted, grad))
        grads = [next(found) if t is not None and t.requires_grad else None for t in saved]
        return (None, *grads, None, None)


__all__ = [
    "ChunkedLinearCrossEntropy",
    "LogitsOfHidden",
    "accumulate_matmul_",
    "chunked_linear_cross_entropy",
    "write_rows_",
]
