"""Hugging Face transformers models, built from small configs (random weights, no downloads).

Each model trains one step through the remat partitioner (on the graph Inductor
would hand it, see helpers.cheap_backend) at the default plan and at
memory_budget=0.3, and its loss and gradients must equal eager's. Dropout is
off in every config so that eager is a fair reference (dropout mask replay has
its own tests in test_correctness.py and test_inductor_e2e.py).

docs/transformers.md lists the pitfalls these tests step around.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from helpers import assert_close_grads, cheap_backend, clone, compiled_step, train_step

import rematpass
from rematpass import zoo
from rematpass.inspect.report import CHECKPOINT_POLICY
from rematpass.zoo import LossOf

transformers = pytest.importorskip("transformers")

VOCAB = 128
# Enough tokens that activations, not parameters and their gradients, dominate the step's
# memory: a budget then has something to trade, whether it counts saved bytes or the peak.
BATCH, SEQ = 4, 64


def gpt2(layers: int = 2, **config):
    return zoo.gpt2_lm(vocab=VOCAB, dim=32, layers=layers, positions=128, use_cache=False, **config)


def llama(**config):
    return zoo.llama_lm(vocab=VOCAB, dim=32, hidden=64, layers=2, positions=128, use_cache=False, **config)


def bert(**config):
    return zoo.bert_mlm(vocab=VOCAB, dim=32, hidden=64, layers=2, positions=128, **config)


def t5(**config):
    return zoo.t5_lm(vocab=VOCAB, dim=32, head_dim=8, hidden=64, layers=2, **config)


def tokens(seq: int = SEQ) -> torch.Tensor:
    return torch.randint(1, VOCAB, (BATCH, seq))


def causal_lm(make, **config):
    """A decoder trained on next-token prediction: labels are the inputs."""
    ids = tokens()
    return LossOf(make(**config), "input_ids", "labels"), (ids, ids)


def masked_lm(**config):
    ids = tokens()
    labels = ids.clone()
    labels[:, ::2] = -100  # only every other position is scored
    attention_mask = torch.ones_like(ids)
    attention_mask[1, -3:] = 0  # the second sequence is padded
    return LossOf(bert(**config), "input_ids", "attention_mask", "labels"), (ids, attention_mask, labels)


def seq2seq(**config):
    """T5: encoder reads the source, decoder is teacher-forced on the labels (shifted inside T5)."""
    return LossOf(t5(**config), "input_ids", "labels"), (tokens(), tokens(SEQ // 2))


MODELS = {
    "gpt2": lambda: causal_lm(gpt2),
    "llama": lambda: causal_lm(llama),
    "bert": masked_lm,
    "t5": seq2seq,
}


def _knobs(budget):
    return {} if budget is None else {"memory_budget": budget}


@pytest.mark.parametrize("budget", [None, 0.3], ids=["default", "budget0.3"])
@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_match_eager(name, budget):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    expected = train_step(clone(model), inputs)
    got = compiled_step(clone(model), inputs, cheap_backend(**_knobs(budget)), fullgraph=True)
    assert_close_grads(expected, got)

    reports = rematpass.recent_reports()
    assert len(reports) == 1, f"expected one graph for the whole model, got {len(reports)}"
    report = reports[0]
    assert report.saved_nodes(), "nothing saved for the backward: the partitioner saw no real graph"
    if budget is not None:
        assert report.default_saved_bytes is not None
        assert report.saved_bytes < report.default_saved_bytes, (
            f"memory_budget={budget} saved {report.saved_bytes} bytes, the default plan {report.default_saved_bytes}"
        )
        assert report.recomputed_nodes()


def test_llama_eager_attention_with_padding_mask():
    """attn_implementation="eager" (explicit softmax, not SDPA) and a padded batch."""
    torch.manual_seed(0)
    model = LossOf(llama(attn_implementation="eager"), "input_ids", "attention_mask", "labels")
    ids = tokens()
    attention_mask = torch.ones_like(ids)
    attention_mask[0, -4:] = 0
    labels = ids.masked_fill(attention_mask == 0, -100)
    inputs = (ids, attention_mask, labels)
    got = compiled_step(clone(model), inputs, cheap_backend(memory_budget=0.3), fullgraph=True)
    assert_close_grads(train_step(clone(model), inputs), got)
    ops = {n.op for n in rematpass.recent_reports()[-1].nodes}
    assert "aten.bmm" in ops and not any("scaled_dot_product" in op for op in ops), "SDPA was used"


@pytest.mark.slow
def test_llama_varying_sequence_length_compiles_once():
    torch.manual_seed(0)
    model = LossOf(llama(), "input_ids", "labels")
    reference = clone(model)
    compiled = torch.compile(clone(model), backend=cheap_backend(memory_budget=0.3), fullgraph=True)
    for seq in (16, 24, 12):
        ids = tokens(seq)
        torch._dynamo.mark_dynamic(ids, 1)
        assert_close_grads(train_step(reference, (ids, ids)), train_step(compiled, (ids, ids)))
    assert len(rematpass.recent_reports()) == 1, "a dynamic sequence length should not recompile"


# LlamaAttention carries transformers' @use_kernelized_func. When that decorator hands the class to the
# `kernels` package (a required dependency since transformers 5.25; on 5.24 only when the optional
# package is installed and USE_HUB_KERNELS is not off), every attention forward runs kernels' wrapper,
# which sets and resets the module-global CompileableContextVar `_ACTIVE_KERNEL_FUNCS`. While Dynamo
# traces, that is an attribute write on an object from outside the checkpoint region, which Dynamo
# refuses inside torch.utils.checkpoint. Checked against the wrapper itself rather than a version
# number, so that the condition holds on 5.24 with `kernels` installed too.
def _runs_a_kernels_wrapper(function) -> bool:
    while function is not None:  # through every functools.wraps layer (transformers adds its own)
        if function.__globals__["__name__"].startswith("kernels."):
            return True
        function = getattr(function, "__wrapped__", None)
    return False


ATTENTION_RUNS_KERNELS_WRAPPER = _runs_a_kernels_wrapper(
    pytest.importorskip("transformers.models.llama.modeling_llama").LlamaAttention.forward
)
UNSAFE_SIDE_EFFECT_IN_CHECKPOINT = pytest.mark.xfail(
    ATTENTION_RUNS_KERNELS_WRAPPER,
    raises=torch._dynamo.exc.Unsupported,
    strict=True,
    reason=(
        "Dynamo: HOP: Unsafe side effect (torch.utils.checkpoint.checkpoint): Mutating a variable from outside "
        "the scope of this HOP is not supported (the `kernels` package's CompileableContextVar, set around "
        "LlamaAttention.forward: transformers >= 5.25, or 5.24 with `kernels` installed)"
    ),
)


def _hf_gradient_checkpointing_model():
    model = llama()
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LossOf(model, "input_ids", "labels")


def _assert_planned_as_one_graph_with_checkpoint_regions():
    reports = rematpass.recent_reports()
    assert len(reports) == 1, f"expected one graph for the whole model, got {len(reports)}"
    honoured = [n for n in reports[0].nodes if n.reason_kind == CHECKPOINT_POLICY]
    assert honoured, "no checkpoint region reached the partitioner as recompute tags"


@UNSAFE_SIDE_EFFECT_IN_CHECKPOINT
def test_hf_gradient_checkpointing_trains_to_eager_gradients():
    """HF activation checkpointing under torch.compile(fullgraph=True): its checkpoint regions reach the
    partitioner as recompute tags. What a user gets (strict=False, the default) must train right, whether
    rematpass plans the graph or falls back to PyTorch's partitioner (with a warning)."""
    torch.manual_seed(0)
    model = _hf_gradient_checkpointing_model()
    ids = tokens()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled_step(clone(model), (ids, ids), cheap_backend(strict=False), fullgraph=True)
    assert_close_grads(train_step(clone(model), (ids, ids)), got)
    fallbacks = [w for w in caught if issubclass(w.category, rematpass.RematFallbackWarning)]
    assert rematpass.recent_reports() or fallbacks, "the remat partitioner was never called"


@UNSAFE_SIDE_EFFECT_IN_CHECKPOINT
def test_hf_gradient_checkpointing_is_planned_by_rematpass():
    torch.manual_seed(0)
    model = _hf_gradient_checkpointing_model()
    ids = tokens()
    got = compiled_step(clone(model), (ids, ids), cheap_backend(strict=True), fullgraph=True)
    assert_close_grads(train_step(clone(model), (ids, ids)), got)
    _assert_planned_as_one_graph_with_checkpoint_regions()


def test_hf_gradient_checkpointing_without_fullgraph_trains_to_eager_gradients():
    """What a user gets without fullgraph=True. Where Dynamo refuses the checkpoint region, it gives up on
    each checkpointed layer: the layers run eagerly under PyTorch's own checkpoint and only the code
    between them (embedding, final norm, head and loss) is compiled and planned by rematpass."""
    torch.manual_seed(0)
    model = _hf_gradient_checkpointing_model()
    ids = tokens()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled_step(clone(model), (ids, ids), cheap_backend(strict=False))
    assert_close_grads(train_step(clone(model), (ids, ids)), got)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, rematpass.RematFallbackWarning)]
    assert not fallbacks, fallbacks
    reports = rematpass.recent_reports()
    assert reports, "the remat partitioner was never called"
    planned_ops = {n.op for report in reports for n in report.nodes}
    attention_planned = any("scaled_dot_product" in op for op in planned_ops)
    if ATTENTION_RUNS_KERNELS_WRAPPER:
        assert not attention_planned, "a checkpointed layer was compiled: update docs/transformers.md"
        assert len(reports) > 1, "expected the model split at its checkpointed layers"
    else:
        assert attention_planned and len(reports) == 1, f"{len(reports)} graphs, ops {sorted(planned_ops)}"


def test_hf_gradient_checkpointing_with_forward_side_effects_skipped_is_one_planned_graph():
    """Dynamo's escape hatch: with skip_fwd_side_effects_in_bwd_under_checkpoint the recompute in the
    backward does not replay the forward's Python side effects. kernels' wrapper sets its variable and
    resets it within the same forward, so there is nothing to replay: the model is one graph again and
    rematpass plans it, checkpoint regions included."""
    torch.manual_seed(0)
    model = _hf_gradient_checkpointing_model()
    ids = tokens()
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        got = compiled_step(clone(model), (ids, ids), cheap_backend(strict=True), fullgraph=True)
    assert_close_grads(train_step(clone(model), (ids, ids)), got)
    _assert_planned_as_one_graph_with_checkpoint_regions()


@pytest.mark.inductor
@pytest.mark.slow
def test_gpt2_through_inductor():
    """The real backend="remat" (Inductor's C++ codegen) on a 1-layer GPT-2."""
    torch.manual_seed(0)
    model = LossOf(gpt2(layers=1), "input_ids", "labels")
    ids = tokens()
    started = time.perf_counter()
    got = compiled_step(
        clone(model), (ids, ids), "remat", fullgraph=True, options={"memory_budget": 0.3, "strict": True}
    )
    assert_close_grads(train_step(clone(model), (ids, ids)), got)
    (report,) = rematpass.recent_reports()
    assert [head.chunked for head in report.loss_heads] == [True], report.loss_heads  # passes.loss_head
    print(f"backend='remat' compile + step: {time.perf_counter() - started:.1f} s")
