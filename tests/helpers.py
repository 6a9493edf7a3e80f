"""Ways to run a model through the remat partitioner, and to compare with eager."""

from __future__ import annotations

import copy

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import rematpass


def seeded_random(size, seed, mode, *, align_dtype=None):
    """``prims.inductor_random`` as Inductor's kernels define it: a function of its seed.

    The prim's eager implementation ignores the seed and draws from the global
    generator, which would redraw dropout masks in an eager backward.
    """
    generator = torch.Generator(device=seed.device).manual_seed(int(seed))
    return getattr(torch, mode)(list(size), generator=generator, device=seed.device, dtype=torch.float32)


def _eager_compiler(gm, example_inputs):
    for node in gm.graph.nodes:
        if node.target is torch.ops.prims.inductor_random.default:
            node.target = seeded_random
    gm.recompile()
    return make_boxed_func(gm.forward)


def freeing_compiler(gm, example_inputs):
    """Like ``_eager_compiler``, but frees each input at its last use, as Inductor's code does."""
    _eager_compiler(gm, example_inputs)
    gm.graph.set_codegen(torch.fx.graph._BoxedCodeGen())
    gm.recompile()

    def run(args):
        return gm.forward(args)

    run._boxed_call = True
    return run


def cheap_backend(compiler=None, **knobs):
    """AOTAutograd with Inductor's decompositions and joint passes, our partitioner, and eager fw/bw.

    The graph the partitioner sees is the one Inductor would hand it (dropout
    becomes inductor_seeds / inductor_random), without the C++ compile.
    """
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.virtualized import V

    partitioner = rematpass.RematPartitioner(rematpass.config.resolve({"strict": True, **knobs}))

    def partition(gm, joint_inputs, **kwargs):
        # Through Inductor's own hook (not partition_fn's override, new in torch 2.13), so the
        # helper runs on every torch the package supports.
        with (
            V.set_fake_mode(detect_fake_mode(joint_inputs)),
            torch._inductor.config.patch(custom_partitioner_fn=partitioner),
        ):
            return partition_fn(gm, joint_inputs, **kwargs)

    return aot_autograd(
        fw_compiler=compiler or _eager_compiler,
        bw_compiler=compiler or _eager_compiler,
        partition_fn=partition,
        decompositions=select_decomp_table(),
    )


def train_step(model, inputs, seed: int = 0):
    """Loss and gradients (by parameter name) of one step."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = model(*inputs)
    loss.backward()
    grads = {
        n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
    }
    return loss.detach(), grads


def compiled_step(model, inputs, backend, seed: int = 0, **compile_kwargs):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, **compile_kwargs)
    return train_step(compiled, inputs, seed)


def assert_close_grads(expected, actual, rtol=1e-4, atol=1e-5):
    loss_e, grads_e = expected
    loss_a, grads_a = actual
    torch.testing.assert_close(loss_a, loss_e, rtol=rtol, atol=atol)
    assert grads_e.keys() == grads_a.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_a[name], grads_e[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def clone(model):
    return copy.deepcopy(model)


def capture_joint_graph(model, inputs, **compile_kwargs) -> dict:
    """The joint graph, partitioner kwargs and fake mode as Inductor hands them to a partitioner.

    Decomposed with Inductor's table and after its joint passes; the graph is a
    deep copy taken before PyTorch's partitioner (which finishes the step) runs.
    """
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.virtualized import V

    from rematpass.passes import torch_internals as ti

    captured = {}

    def spy(gm, joint_inputs, **kwargs):
        captured.update(joint=copy.deepcopy(gm), kwargs=dict(kwargs), fake=detect_fake_mode(joint_inputs))
        return ti.torch_min_cut_partition(gm, joint_inputs, **kwargs)

    def partition(gm, joint_inputs, **kwargs):
        with V.set_fake_mode(detect_fake_mode(joint_inputs)):
            return partition_fn(gm, joint_inputs, partitioner_fn_override=spy, **kwargs)

    backend = aot_autograd(
        fw_compiler=_eager_compiler,
        bw_compiler=_eager_compiler,
        partition_fn=partition,
        decompositions=select_decomp_table(),
    )
    compiled_step(model, inputs, backend, **compile_kwargs)
    return captured


def standard_joint_graphs() -> list[dict]:
    """Captured joint graphs of the residual MLP, the conv net with BatchNorm and a GPT with dropout."""
    from rematpass.zoo import ConvBN, ResidualMLP, TinyGPT

    torch.manual_seed(0)
    gpt = TinyGPT(layers=2, dropout=0.1)
    return [
        capture_joint_graph(ResidualMLP(depth=3), (ResidualMLP.example(),)),
        capture_joint_graph(ConvBN(), (ConvBN.example(),)),
        capture_joint_graph(gpt, (gpt.example(),)),
    ]


def analysed(captured: dict):
    """A captured joint graph prepared, classified, summarised and priced as the partitioner does
    (``rematpass.priced_graph``), with the default knobs.

    Returns a namespace: gm, roles, summary, table (the cost table), kwargs, fake (the fake mode).
    """
    from types import SimpleNamespace

    from torch._inductor.virtualized import V

    from rematpass.priced_graph import price_joint_graph

    kwargs = captured["kwargs"]
    with V.set_fake_mode(captured["fake"]):
        a = price_joint_graph(
            copy.deepcopy(captured["joint"]),
            num_fwd_outputs=kwargs["num_fwd_outputs"],
            static_lifetime_input_indices=kwargs["static_lifetime_input_indices"],
        )
    return SimpleNamespace(
        gm=a.gm, roles=a.roles, summary=a.summary, table=a.costs, kwargs=kwargs, fake=captured["fake"]
    )


def count_partitions(monkeypatch) -> list:
    """A list that gets, for each partition rematpass's partitioner runs, the aim it planned for
    (None: the knobs' own plan)."""
    import rematpass.partitioner as partitioner

    partitions = []
    original = partitioner.RematPartitioner.partition

    def counting(self, *args, **kwargs):
        partitions.append(self.aim_peak_bytes)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(partitioner.RematPartitioner, "partition", counting)
    return partitions


def kept_attempt(report):
    """The attempt of a budget's check that ``report``'s plan is (rematpass.verify.kept_index)."""
    from rematpass.verify import budget_cap, kept_index

    return report.verification[kept_index(report.verification, budget_cap(report))]
