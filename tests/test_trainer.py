"""Hugging Face's Trainer training a model compiled with rematpass (CPU, random weights, no downloads).

The route docs/transformers.md documents: compile the model in place, then build the Trainer,

    model.compile(backend="remat")  # options={...} for the knobs
    trainer = Trainer(model=model, args=TrainingArguments(...), ...)

Each run trains a tiny Llama a few steps on an in-memory dataset; its logged losses and final
weights must equal those of the same Trainer run without compiling. The routes that do not
work are pinned too, so that a transformers or accelerate release that changes them shows up
here (and the documentation gets updated).
"""

from __future__ import annotations

import time

import pytest
import torch
from helpers import cheap_backend

import rematpass
from rematpass import zoo

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

VOCAB, SEQ = 128, 32
BATCH, STEPS = 4, 3


def tiny_llama():
    torch.manual_seed(0)
    return zoo.llama_lm(vocab=VOCAB, dim=32, hidden=64, layers=1, positions=SEQ, use_cache=False)


def token_dataset() -> list[dict[str, torch.Tensor]]:
    """Next-token prediction rows (labels are the inputs; the model shifts them), one batch per step."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(BATCH * STEPS):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def trainer_for(model, output_dir, **arguments) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **arguments,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=token_dataset())


def train(model, output_dir, **arguments):
    """The loss logged at every step, and the weights after the last one."""
    trainer = trainer_for(model, output_dir, **arguments)
    trainer.train()
    losses = torch.tensor([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    weights = {
        name.removeprefix("_orig_mod."): p.detach().clone()  # torch.compile's wrapper prefixes the names
        for name, p in trainer.model.named_parameters()
    }
    return losses, weights


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    return train(tiny_llama(), tmp_path_factory.mktemp("eager"))


def assert_trained_like(expected, actual, rtol=1e-4, atol=1e-5):
    (losses_e, weights_e), (losses_a, weights_a) = expected, actual
    assert len(losses_e) == STEPS, f"{len(losses_e)} losses logged for {STEPS} steps"
    torch.testing.assert_close(losses_a, losses_e, rtol=rtol, atol=atol)
    assert weights_a.keys() == weights_e.keys()
    for name in weights_e:
        torch.testing.assert_close(weights_a[name], weights_e[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _compiled_in_place(backend, **compile_kwargs):
    model = tiny_llama()
    model.compile(backend=backend, **compile_kwargs)
    return model, {}


def _wrapped_keeping_columns(backend, **compile_kwargs):
    # A wrapper's forward(*args, **kwargs) hides the model's signature from the Trainer, which would
    # drop every column of the dataset (test_wrapped_model_loses_its_columns).
    return torch.compile(tiny_llama(), backend=backend, **compile_kwargs), {"remove_unused_columns": False}


@pytest.mark.parametrize("route", [_compiled_in_place, _wrapped_keeping_columns], ids=["in_place", "wrapped"])
def test_trainer_trains_a_compiled_model_like_eager(route, eager_run, tmp_path):
    model, arguments = route(cheap_backend())
    assert_trained_like(eager_run, train(model, tmp_path, **arguments))
    reports = rematpass.recent_reports()
    assert len(reports) == 1, f"expected one graph compiled once for every step, got {len(reports)}"
    assert reports[0].saved_nodes(), "nothing saved for the backward: the partitioner saw no real graph"


@pytest.mark.inductor
@pytest.mark.slow
def test_trainer_with_the_remat_backend(eager_run, tmp_path):
    """The documented line with the real backend="remat" (Inductor's C++ codegen); knobs go through options."""
    started = time.perf_counter()
    # loss_chunks forced: at dim 32 the cost model prices chunks over the default 1% of the step
    # (each chunk's matmuls wait on memory), and the chunked head inside the Trainer is what is tested
    model, _ = _compiled_in_place("remat", options={"strict": True, "loss_chunks": 4})
    assert_trained_like(eager_run, train(model, tmp_path))
    reports = rematpass.recent_reports()
    assert len(reports) == 1, f"expected one graph compiled once for every step, got {len(reports)}"
    assert reports[0].knobs.strict, "the options given to model.compile did not reach the backend"
    # The Trainer calls the model with labels, so the graph returns the logits with the loss.
    (head,) = reports[0].loss_heads
    assert head.chunked and head.chunks == 4 and head.returned is not None, head
    print(f"Trainer, backend='remat': {time.perf_counter() - started:.1f} s")


def test_torch_compile_backend_argument_is_refused_by_accelerate(tmp_path):
    """accelerate's TorchDynamoPlugin turns the name into its DynamoBackend enum, which lists only the
    backends it knows: a registered backend such as "remat" never reaches torch.compile."""
    with pytest.raises(ValueError, match="'REMAT' is not a valid DynamoBackend"):
        trainer_for(tiny_llama(), tmp_path, torch_compile=True, torch_compile_backend="remat")


def test_wrapped_model_loses_its_columns(tmp_path):
    """The Trainer keeps the dataset's columns that the model's forward names; the forward of
    torch.compile's wrapper names none of them."""
    model = torch.compile(tiny_llama(), backend=cheap_backend())
    with pytest.raises(ValueError, match="The batch received was empty"):
        trainer_for(model, tmp_path).train()
