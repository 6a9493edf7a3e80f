"""What the remat backend hands Inductor: our partitioner, our joint and post-grad passes, the buffer-reuse knob."""

import pytest
import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

import rematpass.backend as backend
from rematpass.partitioner import RematPartitioner


@pytest.fixture
def inductor_patches(monkeypatch):
    """Calls the backend with compile_fx replaced by a recorder of its config patches."""
    import torch._inductor.compile_fx as compile_fx_module

    seen = []

    def recording_compile_fx(gm, example_inputs, config_patches=None, **kwargs):
        seen.append(config_patches)
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", recording_compile_fx)

    def run(options=None):
        gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
        backend.remat(gm, [torch.randn(1, 2)], options=options)
        return seen[-1]

    return run


def test_partitioner_pass_and_buffer_reuse_reach_inductor(inductor_patches):
    patches = inductor_patches()
    assert isinstance(patches["custom_partitioner_fn"], RematPartitioner)
    assert isinstance(patches["joint_custom_post_pass"], backend.GatherMaxPoolBackward)
    assert isinstance(patches["post_grad_custom_post_pass"], backend.HoistLateMatmuls)
    assert patches["allow_buffer_reuse"] is False
    assert inductor_patches({"buffer_reuse": True})["allow_buffer_reuse"] is True


@pytest.mark.parametrize(
    "slot,ours",
    [
        ("post_grad_custom_post_pass", backend.HoistLateMatmuls),
        ("joint_custom_post_pass", backend.GatherMaxPoolBackward),
    ],
)
def test_a_users_pass_still_runs_before_ours(inductor_patches, slot, ours):
    def users_pass(graph):
        pass

    # config.patch, not monkeypatch: undoing a monkeypatch deletes the entry, and Inductor's
    # config module then hides it for the rest of the process.
    with torch._inductor.config.patch({slot: users_pass}):
        installed = inductor_patches()[slot]
    # One callable, not a list: torch releases before pytorch#184108 call the slot's value.
    assert callable(installed) and not isinstance(installed, (list, tuple))
    assert installed.passes[0] is users_pass and isinstance(installed.passes[1], ours)
    ran = []
    with torch._inductor.config.patch({slot: lambda graph: ran.append("user")}):
        installed = inductor_patches()[slot]
    installed(torch.fx.Graph())
    assert ran == ["user"]
    assert installed.uuid() is None  # a plain function has no uuid: Inductor must not cache


def test_our_passes_are_cacheable_alone_and_after_a_cacheable_user_pass(inductor_patches):
    assert backend.HoistLateMatmuls().uuid() and backend.GatherMaxPoolBackward().uuid()

    class UsersPass(CustomGraphPass):
        def __call__(self, graph):
            pass

        def uuid(self):
            return "users-pass-v1"

    with torch._inductor.config.patch(post_grad_custom_post_pass=UsersPass()):
        assert inductor_patches()["post_grad_custom_post_pass"].uuid()


@pytest.mark.parametrize("budget", [0.5, 10**9], ids=["fraction", "cap"])
def test_a_graph_without_a_backward_compiles_once_under_a_budget(monkeypatch, budget):
    """No backward, no plan to check: under a budget such a graph took three compiles, one with
    Inductor's caches off, on every run (wav2vec 2.0's feature-mask graphs)."""
    compiles = []

    def eager(gm, example_inputs, patches):
        compiles.append(patches.get("force_disable_caches", False))
        return gm.forward

    monkeypatch.setattr(backend, "compile_with_inductor", eager)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="remat", options={"memory_budget": budget})
    with torch.no_grad():
        compiled(torch.randn(4, 8))
    assert compiles == [False]
