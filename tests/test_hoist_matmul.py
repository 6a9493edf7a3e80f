"""passes.hoist_matmul: a late addmm is split so its matmul runs where its operands are ready."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from rematpass.measure import peak_memory
from rematpass.passes.hoist_matmul import hoist_late_matmuls

aten = torch.ops.aten


def _traced(fn, *args):
    return make_fx(fn, tracing_mode="fake")(*args)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def late_bias(x, w, y):
    big = x.relu()
    total = big.sum()
    bias = (y * 2).sin()  # ready only after big's last other reader
    return torch.addmm(bias, big.t(), w), total


ARGS = (torch.randn(256, 64), torch.randn(256, 16), torch.randn(64, 16))


def test_late_addmm_becomes_early_mm_and_late_add():
    gm = _traced(late_bias, *ARGS)
    assert hoist_late_matmuls(gm.graph) == 1
    gm.recompile()
    order = _targets(gm)
    assert aten.addmm.default not in order
    # where big would die without the addmm: after its last other reader, before the bias exists
    assert order.index(aten.sum.default) < order.index(aten.mm.default) < order.index(aten.sin.default)
    assert order.index(aten.add.Tensor) > order.index(aten.sin.default)
    for got, expected in zip(gm(*ARGS), late_bias(*ARGS)):
        torch.testing.assert_close(got, expected)


def test_dynamic_shapes_are_priced_at_their_hints():
    gm = make_fx(late_bias, tracing_mode="symbolic")(*ARGS)
    assert any(
        isinstance(s, torch.SymInt) for n in gm.graph.nodes if n.op == "placeholder" for s in n.meta["val"].shape
    )
    assert hoist_late_matmuls(gm.graph) == 1
    gm.recompile()
    for got, expected in zip(gm(*ARGS), late_bias(*ARGS)):
        torch.testing.assert_close(got, expected)


def test_addmm_left_alone_when_nothing_is_freed_earlier():
    def bias_first(x, w, y):
        bias = (y * 2).sin()
        big = x.relu()
        return torch.addmm(bias, big.t(), w), big.sum()

    def operand_read_later(x, w, y):
        big = x.relu()
        bias = (y * 2).sin()
        return torch.addmm(bias, big.t(), w), big.sum()  # big's sum runs after the addmm

    def product_bigger_than_operands(x, w, y):
        small = x.relu()
        bias = (y * 2).sin()
        return (torch.addmm(bias, small, w),)

    cases = [
        (bias_first, ARGS),
        (operand_read_later, ARGS),
        (product_bigger_than_operands, (torch.randn(256, 4), torch.randn(4, 256), torch.randn(256, 256))),
    ]
    for fn, args in cases:
        gm = _traced(fn, *args)
        assert hoist_late_matmuls(gm.graph) == 0, fn.__name__
        assert aten.addmm.default in _targets(gm), fn.__name__


class TiedLM(nn.Module):
    """Output projection tied to the embedding: its weight gradient is added to the embedding's, last."""

    def __init__(self, vocab: int = 512, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.vocab = vocab

    def forward(self, idx):
        h = self.embed(idx)
        h = h + self.mix(h)
        logits = F.linear(h, self.embed.weight)
        return F.cross_entropy(logits.reshape(-1, self.vocab), idx.reshape(-1))


@pytest.mark.inductor
@pytest.mark.slow
def test_tied_embedding_backward_frees_the_logits_gradient_early(monkeypatch):
    """Real Inductor: without the pass the logits gradient lives until the embedding gradient (the end)."""
    import rematpass.backend as backend

    torch.manual_seed(0)
    idx = torch.randint(0, 512, (8, 64))
    peaks, grads = {}, {}
    for hoist in (True, False):
        if not hoist:
            monkeypatch.setattr(backend.HoistLateMatmuls, "__call__", lambda self, graph: None)
        torch._dynamo.reset()
        model = TiedLM()
        torch.manual_seed(0)
        model.load_state_dict(TiedLM().state_dict())
        # the head whole: chunked (the default), no logits gradient is formed whole to be freed
        step = torch.compile(model, backend="remat", options={"strict": True, "loss_chunks": 0})
        step(idx).backward()
        grads[hoist] = model.embed.weight.grad.clone()
        peaks[hoist] = peak_memory(lambda: step(idx).backward())
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-6)
    logits_grad_bytes = 8 * 64 * 512 * 4
    assert peaks[True] <= peaks[False] - logits_grad_bytes // 4, peaks
