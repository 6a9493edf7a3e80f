"""End to end through real Inductor (C++ codegen on CPU): slow, so few and small."""

import pytest
import torch
from helpers import assert_close_grads, clone, compiled_step, train_step

import rematpass
from rematpass.zoo import ConvBN, ResidualMLP, TinyGPT


@pytest.mark.inductor
@pytest.mark.slow
def test_gpt_matches_eager_at_half_budget():
    torch.manual_seed(0)
    model = TinyGPT(layers=1)
    x = model.example()
    got = compiled_step(clone(model), (x,), "remat", options={"memory_budget": 0.5, "strict": True})
    assert_close_grads(train_step(clone(model), (x,)), got)
    assert len(rematpass.recent_reports()) == 1


@pytest.mark.inductor
@pytest.mark.slow
def test_dropout_mask_is_replayed_not_redrawn():
    torch.manual_seed(0)
    model = TinyGPT(layers=1, dropout=0.3)
    x = model.example()
    reference = compiled_step(clone(model), (x,), "remat", seed=7, options={"memory_budget": 1.0, "strict": True})
    squeezed = compiled_step(clone(model), (x,), "remat", seed=7, options={"memory_budget": 0.0, "strict": True})
    assert_close_grads(reference, squeezed, rtol=1e-5, atol=1e-6)
    assert squeezed[0] != train_step(clone(model).eval(), (x,))[0], "dropout was not active"


@pytest.mark.inductor
@pytest.mark.slow
def test_convbn_default_plan_and_running_stats():
    torch.manual_seed(0)
    model = ConvBN()
    x = model.example()
    eager_model, compiled_model = clone(model), clone(model)
    expected = train_step(eager_model, (x,))
    got = compiled_step(compiled_model, (x,), "remat", options={"strict": True})
    assert_close_grads(expected, got)
    for (name, a), (_, b) in zip(eager_model.named_buffers(), compiled_model.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_option_fails_at_compile_time_naming_the_knob():
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="remat", options={"memroy_budget": 0.5})
    with pytest.raises(Exception, match="memroy_budget.*memory_budget"):
        compiled(torch.randn(2, 4))


@pytest.mark.inductor
@pytest.mark.slow
def test_same_knobs_hit_the_cache_changed_knobs_recompile(tmp_path, monkeypatch):
    import rematpass.partitioner as partitioner

    calls = []
    original = partitioner.RematPartitioner.partition

    def counting(self, *args, **kwargs):
        calls.append(self.knobs.memory_budget)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(partitioner.RematPartitioner, "partition", counting)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = ResidualMLP(depth=1)
    x = model.example()
    with (
        torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True),
        torch._functorch.config.patch(enable_autograd_cache=True),
    ):
        # verify_peak=False: a verified budget bypasses the caches (tests/test_budget_promise.py)
        first = compiled_step(clone(model), (x,), "remat", options={"memory_budget": 0.5, "verify_peak": False})
        compiled_step(clone(model), (x,), "remat", options={"memory_budget": 0.5, "verify_peak": False})
        assert calls == [0.5], "the same knobs should reuse the cached plan"
        changed = compiled_step(clone(model), (x,), "remat", options={"memory_budget": 0.1, "verify_peak": False})
        assert calls == [0.5, 0.1], "a changed knob must partition again"
    assert_close_grads(first, changed)
