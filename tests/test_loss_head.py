"""The loss head in chunks (passes.loss_head): exactly the unchunked loss and gradients, on the
heads people train, and left whole, with the reason, where the pattern does not hold."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_grads, cheap_backend, train_step

import rematpass
from rematpass import zoo
from rematpass.passes.chunk_price import ChunkPricing
from rematpass.passes.loss_head import chunk_loss_heads, chunked_linear_cross_entropy, with_returned_logits
from rematpass.zoo import LossOf

VOCAB, HIDDEN = 200, 16


def chunking_backend(outcomes: list, chunks=None, by_matmul=False, pricing=None, **knobs):
    """What the remat backend does to a Dynamo graph before Inductor, then the tests' cheap backend."""
    inner = cheap_backend(**knobs)

    def backend(gm, example_inputs):
        rewrites = chunk_loss_heads(gm, chunks, returned_by_matmul=lambda head: by_matmul, pricing=pricing)
        outcomes.extend(rewrites)
        return with_returned_logits(inner(gm, example_inputs), rewrites)

    return backend


class Head(torch.nn.Module):
    def __init__(
        self, bias=True, upcast=False, smoothing=0.0, reduction="mean", also_return_logits=False, softcap=None
    ):
        super().__init__()
        self.body, self.head = torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Linear(HIDDEN, VOCAB, bias=bias)
        self.upcast, self.smoothing, self.reduction = upcast, smoothing, reduction
        self.also_return_logits, self.softcap = also_return_logits, softcap

    def forward(self, x, labels):
        logits = self.head(torch.tanh(self.body(x)))
        if self.softcap is not None:  # Gemma 2's final logit soft-capping
            logits = torch.tanh(logits / self.softcap) * self.softcap
        scored = logits.float() if self.upcast else logits
        loss = F.cross_entropy(
            scored.view(-1, VOCAB),
            labels.view(-1),
            label_smoothing=self.smoothing,
            reduction=self.reduction,
        )
        return (loss, logits) if self.also_return_logits else loss


def _batch(ignored=slice(0, 5)):
    torch.manual_seed(1)
    x, labels = torch.randn(2, 24, HIDDEN), torch.randint(0, VOCAB, (2, 24))
    labels[0, ignored] = -100
    return x, labels


def _compiled_step(model, inputs, backend):
    torch._dynamo.reset()
    return train_step(torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True), inputs)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("upcast", [False, True], ids=["same_dtype", "fp32_upcast"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "label_smoothing"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_head_equals_the_unchunked_one(bias, upcast, smoothing, reduction):
    torch.manual_seed(0)
    model = Head(bias, upcast, smoothing, reduction)
    outcomes = []
    got = _compiled_step(model, _batch(), chunking_backend(outcomes, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
    (head,) = outcomes
    assert head.chunked and head.chunks == 4 and head.tokens == 48 and head.chunk_tokens == 12, head


@pytest.mark.parametrize("upcast", [False, True], ids=["same_dtype", "fp32_upcast"])
def test_a_soft_capped_head_is_chunked_to_the_unchunked_gradients(upcast):
    torch.manual_seed(0)
    model = Head(upcast=upcast, softcap=0.5)  # a small cap, so that tanh saturates and the chain rule shows
    outcomes = []
    got = _compiled_step(model, _batch(), chunking_backend(outcomes, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
    assert [h.chunked for h in outcomes] == [True], outcomes


def test_chunks_whose_tokens_are_all_ignored_give_what_eager_gives():
    torch.manual_seed(0)
    model = Head()
    batch = _batch(ignored=slice(None))  # the first row: the first two of four 12-token chunks
    outcomes = []
    loss, grads = _compiled_step(model, batch, chunking_backend(outcomes, chunks=4, strict=True))
    assert outcomes[0].chunks == 4 and outcomes[0].chunk_tokens == 12
    assert_close_grads(train_step(copy.deepcopy(model), batch), (loss, grads))


def test_a_batch_with_every_token_ignored_gives_what_eager_gives():
    torch.manual_seed(0)
    model = Head()
    batch = _batch(ignored=slice(None))
    batch[1][:] = -100
    loss, grads = _compiled_step(model, batch, chunking_backend([], strict=True))
    expected_loss, expected = train_step(copy.deepcopy(model), batch)
    assert torch.isnan(loss) and torch.isnan(expected_loss)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad)


@pytest.mark.parametrize("softcap", [None, 3.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("upcast", [False, True], ids=["same_dtype", "fp32_upcast"])
@pytest.mark.parametrize("by_matmul", [False, True], ids=["written_by_chunks", "by_matmul"])
def test_logits_the_graph_also_returns_are_chunked_and_returned_as_eager_returns_them(softcap, upcast, by_matmul):
    """As a transformers model called with labels returns them: the same values, and, when the
    user's loss reads them too, the same gradients; no [tokens, vocab] gradient otherwise."""
    torch.manual_seed(0)
    model = Head(upcast=upcast, also_return_logits=True, softcap=softcap)
    outcomes = []
    backend = chunking_backend(outcomes, by_matmul=by_matmul, strict=True)
    compiled = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True)
    torch._dynamo.reset()
    for reads_logits in (False, True):
        results = []
        for candidate in (copy.deepcopy(model), compiled):
            candidate.zero_grad(set_to_none=True)
            loss, logits = candidate(*_batch())
            (loss + 0.01 * logits.float().square().mean() if reads_logits else loss).backward()
            grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in candidate.named_parameters()}
            results.append((loss.detach(), logits.detach(), grads))
        (want_loss, want_logits, want_grads), (loss, logits, grads) = results
        torch.testing.assert_close(loss, want_loss)
        torch.testing.assert_close(logits, want_logits)
        assert logits.shape == (2, 24, VOCAB) and logits.requires_grad is False  # detached above
        assert_close_grads((want_loss, want_grads), (loss, grads))
    (head,) = outcomes
    assert head.chunked and head.returned is not None and head.returned.outputs == (1,), head
    assert head.returned.by_matmul is by_matmul


def test_returned_logits_cost_a_head_matmul_only_when_a_budget_asks_for_memory():
    """The default plan writes returned logits chunk by chunk unless one more head matmul costs
    no more than time_tolerance of the step (6 x tokens x trainable elements); a budget buys it."""
    from rematpass.backend import _returned_by_matmul
    from rematpass.budget import DefaultPlan, Fraction, PeakCap
    from rematpass.passes.loss_head import LossHeadRewrite

    head = LossHeadRewrite(True, "chunked", tokens=2048, vocab=50257, hidden=768, chunks=4, chunk_tokens=512)
    gpt2_small = 124_439_808

    def priced(allowance):  # as the backend prices a plan of that time_tolerance (a byte cap: any)
        return ChunkPricing(1e11, 1e10, allowance=allowance, trainable_elements=gpt2_small)

    assert not _returned_by_matmul(DefaultPlan(0.01), priced(0.01), head)  # 158 GFLOP of a 1.5 TFLOP step
    assert _returned_by_matmul(DefaultPlan(0.2), priced(0.2), head)
    assert _returned_by_matmul(Fraction(0.5, 0.01), priced(0.01), head)
    assert _returned_by_matmul(PeakCap(10**9), priced(math.inf), head)


def test_logits_read_by_another_term_of_the_graph_leave_the_head_whole():
    class Twice(Head):
        def forward(self, x, labels):
            logits = self.head(torch.tanh(self.body(x)))
            loss = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1))
            return loss, logits.amax(-1)

    outcomes = []
    torch._dynamo.reset()
    loss, _ = torch.compile(Twice(), backend=chunking_backend(outcomes), fullgraph=True)(*_batch())
    loss.backward()
    (head,) = outcomes
    assert not head.chunked and "read by more than the loss" in head.reason, head


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="F.linear_cross_entropy is new in torch 2.13")
def test_pytorchs_linear_cross_entropy_on_its_reference_path_is_chunked():
    """``F.linear_cross_entropy(h, W, y)`` with ``options=None`` (as ``nn.LinearCrossEntropyLoss()``
    builds it) is traced as a linear and a cross-entropy: the head is chunked like any other."""

    class Reference(Head):
        def forward(self, x, labels):
            h = torch.tanh(self.body(x)).view(-1, HIDDEN)
            return F.linear_cross_entropy(h, self.head.weight, labels.view(-1), linear_bias=self.head.bias)

    torch.manual_seed(0)
    model = Reference()
    outcomes = []
    got = _compiled_step(model, _batch(), chunking_backend(outcomes, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
    assert [h.chunked for h in outcomes] == [True], outcomes


def test_a_custom_loss_term_on_the_logits_leaves_the_head_whole():
    class ZLoss(Head):
        def forward(self, x, labels):
            logits = self.head(torch.tanh(self.body(x)))
            flat = logits.view(-1, VOCAB)
            return F.cross_entropy(flat, labels.view(-1)) + 1e-4 * torch.logsumexp(flat, -1).pow(2).mean()

    torch.manual_seed(0)
    model = ZLoss()
    outcomes = []
    got = _compiled_step(model, _batch(), chunking_backend(outcomes, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
    (head,) = outcomes
    assert not head.chunked and "more than the loss" in head.reason, head


def test_a_dynamic_number_of_tokens_is_chunked_once_for_every_count():
    """One graph for every sequence length (padded to the same number of chunks with ignored
    tokens: 26 tokens in 8 chunks of 4), eager's loss and gradients each time; a count no larger
    than the number of chunks (6 tokens) compiles once more, still chunked."""
    torch.manual_seed(0)
    model = Head()
    outcomes = []
    compiled = torch.compile(copy.deepcopy(model), backend=chunking_backend(outcomes, chunks=8), fullgraph=True)
    torch._dynamo.reset()
    for length, compiles in ((24, 1), (13, 1), (3, 2)):
        x, labels = _batch()
        x, labels = x[:, :length].contiguous(), labels[:, :length].contiguous()
        torch._dynamo.mark_dynamic(x, 1)
        torch._dynamo.mark_dynamic(labels, 1)
        assert_close_grads(train_step(copy.deepcopy(model), (x, labels)), train_step(compiled, (x, labels)))
        assert len(outcomes) == compiles, (length, outcomes)
    assert all(h.chunked and h.dynamic_tokens and h.chunks == 8 for h in outcomes), outcomes
    assert outcomes[0].tokens == 48, outcomes


def test_returned_logits_of_a_dynamic_number_of_tokens_are_eager_logits():
    """Each chunk writes its rows of the returned logits (the padding's rows are cut off): eager's
    logits and gradients for two lengths served by one graph."""
    torch.manual_seed(0)
    model = Head(also_return_logits=True)
    outcomes = []
    compiled = torch.compile(copy.deepcopy(model), backend=chunking_backend(outcomes, chunks=8), fullgraph=True)
    torch._dynamo.reset()
    for length in (24, 13):
        x, labels = _batch()
        x, labels = x[:, :length].contiguous(), labels[:, :length].contiguous()
        torch._dynamo.mark_dynamic(x, 1)
        torch._dynamo.mark_dynamic(labels, 1)
        results = []
        for candidate in (copy.deepcopy(model), compiled):
            candidate.zero_grad(set_to_none=True)
            loss, logits = candidate(x, labels)
            loss.backward()
            grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in candidate.named_parameters()}
            results.append((loss.detach(), logits.detach(), grads))
        (want_loss, want_logits, want_grads), (loss, logits, grads) = results
        assert logits.shape == (2, length, VOCAB)
        torch.testing.assert_close(logits, want_logits)
        assert_close_grads((want_loss, want_grads), (loss, grads))
    (head,) = outcomes
    assert head.chunked and head.dynamic_tokens and head.returned is not None, head


def _transformers(config: str, model: str, **settings):
    """A tiny transformers model from a config, random weights."""

    def build():
        import transformers

        ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        return getattr(transformers, model)(getattr(transformers, config)(vocab_size=VOCAB, **ids, **settings))

    return build


_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_ENCODER = dict(_DECODER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ARCHITECTURES = {
    # causal LMs: the label shift, ignore_index, the fp32 upcast, tied or untied heads
    "gpt2_tied": lambda: zoo.gpt2_lm(vocab=VOCAB, dim=32, layers=1, positions=64, use_cache=False),
    "llama_untied": lambda: zoo.llama_lm(vocab=VOCAB, dim=32, hidden=64, layers=1, positions=64, use_cache=False),
    "mistral": _transformers("MistralConfig", "MistralForCausalLM", **_DECODER, num_key_value_heads=1),
    "qwen2": _transformers("Qwen2Config", "Qwen2ForCausalLM", **_DECODER, num_key_value_heads=1),
    "gemma2_soft_capped": _transformers(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        **_DECODER,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=0.5,
        attn_implementation="eager",
    ),  # fmt: skip
    "opt": _transformers(
        "OPTConfig",
        "OPTForCausalLM",
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        dropout=0.0,
    ),  # fmt: skip
    "gpt_neox": _transformers("GPTNeoXConfig", "GPTNeoXForCausalLM", **_DECODER),
    "bloom": _transformers("BloomConfig", "BloomForCausalLM", hidden_size=32, n_layer=1, n_head=2),
    "phi": _transformers("PhiConfig", "PhiForCausalLM", **_DECODER, resid_pdrop=0.0, embd_pdrop=0.0),
    "falcon": _transformers(
        "FalconConfig",
        "FalconForCausalLM",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),  # fmt: skip
    # masked LMs: most labels ignored
    "bert_masked_lm": lambda: zoo.bert_mlm(vocab=VOCAB, dim=32, hidden=64, layers=1, positions=64),
    "roberta_masked_lm": _transformers(
        "RobertaConfig", "RobertaForMaskedLM", **_ENCODER, max_position_embeddings=80
    ),  # fmt: skip
    "distilbert_masked_lm": _transformers(
        "DistilBertConfig",
        "DistilBertForMaskedLM",
        dim=32,
        hidden_dim=64,
        n_layers=1,
        n_heads=2,
        dropout=0.0,
        attention_dropout=0.0,
    ),  # fmt: skip
    # seq2seq: T5's scaled tied embedding (and its in-place masking of the decoder ids), BART's final_logits_bias
    "t5": _transformers(
        "T5Config",
        "T5ForConditionalGeneration",
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    ),  # fmt: skip
    "bart": _transformers(
        "BartConfig",
        "BartForConditionalGeneration",
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        decoder_start_token_id=2,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_transformers_heads_are_chunked_and_train_to_eager_gradients(name):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = LossOf(ARCHITECTURES[name](), "input_ids", "labels")
    ids = torch.randint(3, VOCAB, (2, 16))
    labels = ids.clone()
    labels[:, ::3] = -100  # a masked LM scores few positions
    outcomes = []
    got = _compiled_step(model, (ids, labels), chunking_backend(outcomes, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), (ids, labels)), got)
    assert [h.chunked for h in outcomes] == [True], outcomes


def test_loss_chunks_is_a_validated_knob():
    assert rematpass.config.resolve({"loss_chunks": "4"}).loss_chunks == 4
    assert rematpass.config.resolve({}).loss_chunks == "auto"
    with pytest.raises(rematpass.KnobError, match="loss_chunks"):
        rematpass.config.resolve({"loss_chunks": -1})


def test_a_forced_chunk_count_is_used():
    torch.manual_seed(0)
    model = Head()
    outcomes = []
    got = _compiled_step(model, _batch(), chunking_backend(outcomes, chunks=3, strict=True))
    assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
    assert outcomes[0].chunks == 3 and outcomes[0].chunk_tokens == 16


def test_an_automatic_chunk_count_is_lowered_to_what_the_plan_lets_it_cost():
    # rates on which every chunk's matmuls wait on memory: each chunk more reads the weight again
    flops, moved = 1e15, 1e6
    price = ChunkPricing(flops, moved, allowance=0.0, trainable_elements=1).price
    tokens = 48  # _batch's 2 x 24

    def chunked_within(extra_seconds):
        pricing = ChunkPricing(flops, moved, allowance=extra_seconds * flops / (6 * tokens), trainable_elements=1)
        outcomes = []
        got = _compiled_step(Head(), _batch(), chunking_backend(outcomes, pricing=pricing, strict=True))
        return outcomes[0], got

    torch.manual_seed(0)
    expected = train_step(Head(), _batch())
    assert price(tokens, VOCAB, HIDDEN, 4, 3).extra_seconds < price(tokens, VOCAB, HIDDEN, 4, 4).extra_seconds
    for extra, chunks in ((math.inf, 4), (price(tokens, VOCAB, HIDDEN, 4, 3).extra_seconds, 3)):
        torch.manual_seed(0)
        head, got = chunked_within(extra)
        assert (head.chunks, head.price.chunks) == (chunks, chunks), head
        assert_close_grads(expected, got)
    torch.manual_seed(0)
    head, got = chunked_within(0.0)
    assert not head.chunked and "chunking costs more than the plan allows" in head.reason, head
    assert_close_grads(expected, got)


def test_the_backend_prices_chunks_at_the_cost_models_rates_and_the_budgets_allowance():
    from rematpass.backend import _chunk_pricing

    inputs = [torch.randn(2, 3)]
    default = _chunk_pricing(inputs, rematpass.config.resolve({"bytes_per_second": 5e9, "flops_per_second": 2e11}), 7)
    assert (default.flops_per_second, default.bytes_per_second, default.allowance) == (2e11, 5e9, 0.01)
    assert _chunk_pricing(inputs, rematpass.config.resolve({"memory_budget": 0.3}), 7).allowance == 0.01
    assert _chunk_pricing(inputs, rematpass.config.resolve({"memory_budget": "1MiB"}), 7).allowance == math.inf


@pytest.mark.inductor
def test_the_backend_chunks_where_the_plan_affords_it_and_says_why(tmp_path):
    from rematpass.inspect import cli

    torch.manual_seed(0)
    model = Head()
    # This head is so small that its 12-token chunks wait on memory at the default CPU rates: the
    # default plan's 1% of the step cannot pay for them. On a machine with 1000x the bandwidth it can.
    cases = (
        ({"time_tolerance": 0.0}, "time_tolerance=0 asks for the fastest plan"),
        ({}, "chunking costs more than the plan allows"),
        ({"memory_budget": 0.3, "bytes_per_second": 1e13, "dump_dir": str(tmp_path)}, "chunked"),
    )
    for options, reason in cases:
        torch._dynamo.reset()
        rematpass.clear_reports()
        got = train_step(torch.compile(copy.deepcopy(model), backend="remat", options=options), _batch())
        assert_close_grads(train_step(copy.deepcopy(model), _batch()), got)
        (head,) = rematpass.recent_reports()[-1].loss_heads
        assert head.chunked is (reason == "chunked") and reason in head.reason, head
    shown = "\n".join(cli.summary_lines(cli.load_plan(cli.find_graphs(tmp_path)[0])))
    assert "loss head: chunked, 4 chunks of 12 tokens" in shown, shown


def test_the_report_says_how_returned_logits_are_formed():
    from rematpass.inspect.report import loss_head_line

    head = {"chunked": True, "tokens": 2048, "vocab": 50257, "hidden": 768, "chunks": 4, "chunk_tokens": 512}
    assert "is alive whole; same FLOPs" in loss_head_line(head)
    written = loss_head_line({**head, "returned": {"outputs": [1], "by_matmul": False}})
    assert "written chunk by chunk into the output (no FLOPs added" in written, written
    by_matmul = loss_head_line({**head, "returned": {"outputs": [1], "by_matmul": True}})
    assert "by one more head matmul (158.09 GFLOP)" in by_matmul, by_matmul
    price = ChunkPricing(1e11, 1e10, 0.01, 10**8).price(2048, 50257, 768, 4, 4)
    priced = loss_head_line({**head, "price": dataclasses.asdict(price)})  # as the dump writes it
    held = "a chunk holds 2 fp32 [512, 50257] tensors at once, 196.3 MiB where the whole head holds 785.3 MiB"
    assert f"{held}: at most 588.9 MiB off the peak" in priced, priced


@pytest.mark.parametrize("returns_logits", [False, True], ids=["loss", "loss_and_logits"])
def test_a_chunked_graph_stays_cacheable(returns_logits):
    """AOTAutograd's cache must not bypass the rewritten graph: a budget's second run would then
    trace and plan everything again."""
    from torch._functorch._aot_autograd.autograd_cache import check_node_safe

    graphs = []

    def keep(gm, example_inputs):
        chunk_loss_heads(gm, None)
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(Head(also_return_logits=returns_logits), backend=keep, fullgraph=True)(*_batch())
    (gm,) = graphs
    assert any(n.target is chunked_linear_cross_entropy for n in gm.graph.nodes)
    for node in gm.graph.nodes:
        check_node_safe(node)  # raises BypassAOTAutogradCache on what the cache cannot key


def test_a_bf16_head_under_autocast_accumulates_its_weight_gradient_in_fp32():
    """bf16 autocast: the head runs in bf16, the loss upcasts; the chunked weight gradient is
    summed in fp32 (rematpass::accumulate_matmul_ with mixed dtypes), so it is no further from
    an fp32 reference than the unchunked bf16 head's."""
    torch.manual_seed(0)
    model = Head(upcast=True)
    inputs = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outcomes = []
        chunked = _compiled_step(model, inputs, chunking_backend(outcomes, strict=True))
        whole = train_step(copy.deepcopy(model), inputs)
    reference = train_step(copy.deepcopy(model), inputs)  # fp32
    assert [h.chunked for h in outcomes] == [True]
    for name, exact in reference[1].items():
        error_chunked = (chunked[1][name].float() - exact).abs().max()
        error_whole = (whole[1][name].float() - exact).abs().max()
        assert error_chunked <= 2 * error_whole + 1e-6, (name, error_chunked, error_whole)


@pytest.mark.parametrize("name", ["gpt2_tied", "gemma2_soft_capped", "bert_masked_lm", "bart"])
def test_transformers_models_called_as_the_trainer_calls_them_return_eager_logits(name):
    """The model itself compiled and called with labels: it returns its logits with the loss."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    ids = torch.randint(3, VOCAB, (2, 16))
    labels = ids.clone()
    labels[:, ::3] = -100
    outcomes = []
    compiled = torch.compile(copy.deepcopy(model), backend=chunking_backend(outcomes, strict=True))
    torch._dynamo.reset()
    results = []
    for candidate in (model, compiled):
        torch.manual_seed(0)
        out = candidate(input_ids=ids, labels=labels)
        out.loss.backward()
        grads = {n.removeprefix("_orig_mod."): p.grad for n, p in candidate.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.logits.detach(), grads))
    (want_loss, want_logits, want_grads), (loss, logits, grads) = results
    torch.testing.assert_close(logits, want_logits)
    assert_close_grads((want_loss, want_grads), (loss, grads))
    assert [(h.chunked, h.returned is not None) for h in outcomes] == [(True, True)], outcomes
