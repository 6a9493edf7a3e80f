"""Several processes: DDP, FSDP2 and functional collectives through the remat partitioner.

Two CPU processes talk over gloo on the loopback interface. The workers compile
with helpers.cheap_backend (the graph Inductor would hand the partitioner, no
C++ compile), so the whole file runs in about a minute. Every scenario runs in
one pair of spawned workers (process start-up is most of the cost); each
scenario's result is written to a file and checked by its own test here, against
one eager process on the whole global batch.

The examples (examples/ddp_train.py, examples/fsdp2_train.py) are run through
torchrun at the end, with the same cheap backend registered under a name.
"""

from __future__ import annotations

import datetime
import gc
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from helpers import assert_close_grads, cheap_backend, clone, train_step

import rematpass
from rematpass.zoo import TinyGPT

WORLD = 2
PER_RANK = 2  # sequences per rank
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
    ),
    pytest.mark.distributed,
    pytest.mark.slow,  # spawning the workers is most of a minute
]


# ----------------------------------------------------------------------------------------------
# Models and data, built the same way in the workers and in the single-process reference.


def gpt() -> TinyGPT:
    """~2.4 MB of parameters: more than two of DDP's 1 MiB buckets, so optimize_ddp splits the graph."""
    torch.manual_seed(0)
    return TinyGPT(dim=128, layers=3)


def global_batch() -> torch.Tensor:
    return torch.randint(0, 64, (WORLD * PER_RANK, 16), generator=torch.Generator().manual_seed(1))


def shard(batch: torch.Tensor, rank: int) -> torch.Tensor:
    return batch[rank * PER_RANK : (rank + 1) * PER_RANK]


COLLECTIVE_OPS = ("_c10d_functional.all_reduce", "_c10d_functional.wait_tensor")


class AllReduceInGraph(nn.Module):
    """A functional all-reduce inside the compiled graph, whose result the backward needs.

    The all-reduce's input (``x.repeat``) is 16x smaller to recompute from than its
    output is to save, so a partitioner free to recompute it would, to save memory.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(128, 8) * 0.1)

    def forward(self, x):
        from torch.distributed import _functional_collectives as funcol

        y = funcol.all_reduce(x.repeat(1, 16), "sum", dist.group.WORLD)
        return torch.tanh(y @ self.w).sum()


# ----------------------------------------------------------------------------------------------
# Scenarios: run in each worker, return what the parent checks.


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if hasattr(grad, "full_tensor"):  # FSDP2: a DTensor shard
            grad = grad.full_tensor()
        out[name.removeprefix("module.").removeprefix("_orig_mod.")] = grad.detach().clone()
    return out


def _ddp(rank: int, optimize_ddp: bool) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch._dynamo.config.optimize_ddp = optimize_ddp
    model = gpt()
    ddp = DDP(model, bucket_cap_mb=1)  # Dynamo's DDPOptimizer rejects buckets under 1 MiB
    compiled = torch.compile(ddp, backend=cheap_backend(memory_budget=0.3))
    loss = compiled(shard(global_batch(), rank))
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}


class Unsupported(Exception):
    """This torch build cannot run the scenario at all, even eagerly: the test is skipped with the reason."""


def _fsdp2(rank: int) -> dict:
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        eager = gpt()
        fully_shard(eager, mesh=mesh)
        eager(shard(global_batch(), rank)).backward()
    except Exception as exc:
        raise Unsupported(f"FSDP2 does not run eagerly on CPU with gloo here: {type(exc).__name__}: {exc}") from exc
    model = gpt()
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
        block.compile(backend=cheap_backend(memory_budget=0.3))
    fully_shard(model, mesh=mesh)
    loss = model(shard(global_batch(), rank))
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}


def _collective(rank: int) -> dict:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(10 + rank))
    model = AllReduceInGraph()
    expected = train_step(clone(model), (x,))
    # Push as hard as a user can: the least-memory budget, and a policy asking to recompute the collectives.
    backend = cheap_backend(memory_budget=0.0, always_recompute=list(COLLECTIVE_OPS))
    compiled = torch.compile(clone(model), backend=backend, fullgraph=True)
    got = train_step(compiled, (x,))
    decisions = [(n.name, n.op, n.decision, n.reason) for r in rematpass.recent_reports() for n in r.nodes]
    return {"expected": expected, "got": got, "decisions": decisions}


SCENARIOS = {
    "ddp_split": lambda rank: _ddp(rank, optimize_ddp=True),
    "ddp_one_graph": lambda rank: _ddp(rank, optimize_ddp=False),
    "fsdp2": _fsdp2,
    "collective": _collective,
}


def _worker(rank: int, store: str, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch._inductor.config.force_disable_caches = True
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for name, scenario in SCENARIOS.items():
            torch._dynamo.reset()
            rematpass.clear_reports()
            started = time.perf_counter()
            try:
                result = scenario(rank)
                result["error"] = None
            except Unsupported as exc:
                result = {"error": None, "unsupported": str(exc)}
            except Exception:
                result = {"error": traceback.format_exc()}
            result["num_graphs"] = len(rematpass.recent_reports())
            result["saved_bytes"] = [r.saved_bytes for r in rematpass.recent_reports()]
            result["seconds"] = time.perf_counter() - started
            torch.save(result, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
            del result
            dist.barrier()
    finally:
        # Models, DDP reducers and compiled code go before the process group: a reducer that
        # outlives the group destroys it with the GIL held, which can deadlock gloo (see
        # examples/ddp_train.py, shut_down_distributed).
        torch._dynamo.reset()
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[dict]]:
    """Run every scenario on two spawned workers; {scenario: [rank 0 result, rank 1 result]}."""
    out = tmp_path_factory.mktemp("dist")
    context = mp.start_processes(
        _worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    expected = [out / f"{name}.rank{rank}.pt" for name in SCENARIOS for rank in range(WORLD)]
    deadline, all_written = time.monotonic() + 240, None
    try:
        while not context.join(timeout=2):
            now = time.monotonic()
            if all_written is None and all(f.exists() for f in expected):
                all_written = now
            if all_written is not None and now > all_written + 30:
                # Every result is in; a worker stuck tearing gloo down is PyTorch's bug, not ours.
                warnings.warn(
                    "a distributed worker hung at shutdown after writing its results; killed it", stacklevel=2
                )
                break
            if now > deadline:
                pytest.fail("distributed workers did not finish in 240 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    found = {}
    for name in SCENARIOS:
        files = [out / f"{name}.rank{rank}.pt" for rank in range(WORLD)]
        found[name] = [torch.load(f, weights_only=False) if f.exists() else {"error": "no result"} for f in files]
    return found


def _ok(results, name):
    for rank, result in enumerate(results[name]):
        assert result["error"] is None, f"rank {rank}:\n{result['error']}"
        if result.get("unsupported"):
            pytest.skip(result["unsupported"])
    return results[name]


def _eager_on_global_batch():
    return train_step(gpt(), (global_batch(),))


# ----------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", ["ddp_split", "ddp_one_graph", "fsdp2"])
def test_gradients_equal_single_process_eager(results, name):
    expected_loss, expected_grads = _eager_on_global_batch()
    per_rank = _ok(results, name)
    # Equal shards and a mean loss: the ranks' mean loss is the global batch's loss,
    # and the averaged gradients are its gradients.
    mean_loss = torch.stack([r["loss"] for r in per_rank]).mean()
    for rank, result in enumerate(per_rank):
        assert_close_grads((expected_loss, expected_grads), (mean_loss, result["grads"]))
        assert result["num_graphs"] >= 1, f"rank {rank}: the remat partitioner never ran"


def test_optimize_ddp_splits_the_graph_and_each_piece_is_planned(results):
    split = _ok(results, "ddp_split")
    whole = _ok(results, "ddp_one_graph")
    for rank in range(WORLD):
        assert whole[rank]["num_graphs"] == 1, "optimize_ddp=False should give one graph"
        assert split[rank]["num_graphs"] > 1, "optimize_ddp=True should split the graph at bucket boundaries"
    assert split[0]["num_graphs"] == split[1]["num_graphs"]


def test_collectives_are_never_recomputed(results):
    for rank, result in enumerate(_ok(results, "collective")):
        assert_close_grads(result["expected"], result["got"])
        collectives = [d for d in result["decisions"] if d[1].startswith("_c10d_functional.")]
        ops = {op for _, op, _, _ in collectives}
        assert set(COLLECTIVE_OPS) <= ops, (
            f"rank {rank}: no functional collective reached the partitioner: {sorted(ops)}"
        )
        recomputed = [d for d in collectives if d[2] == "recomputed"]
        assert not recomputed, f"rank {rank}: collectives recomputed in the backward: {recomputed}"
        saved = [d for d in collectives if d[2] == "saved"]
        assert saved, f"rank {rank}: the all-reduce's result should be saved: {collectives}"
        assert all("must save" in d[3] for d in saved), saved


# ----------------------------------------------------------------------------------------------
# The examples, through torchrun.

LAUNCHER = """\
import runpy, sys
sys.path.insert(0, {tests!r})
import torch
from helpers import cheap_backend

def remat_cheap(gm, example_inputs, options=None):
    return cheap_backend(**(options or {{}}))(gm, example_inputs)

torch._dynamo.register_backend(remat_cheap, name="remat_cheap")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _torchrun(tmp_path, example: str, *args: str) -> str:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS)))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", TORCHINDUCTOR_FORCE_DISABLE_CACHES="1", OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        str(launcher),
        str(ROOT / "examples" / example),
        "--layers",
        "2",
        "--seq",
        "32",
        "--batch",
        "2",
        "--steps",
        "2",
        "--check",
        "--backend",
        "remat_cheap",
        *args,
    ]
    # A session of its own, so that a timeout kills torchrun's workers too, not just torchrun.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun {example} did not finish in 180 s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-6000:]
    assert output.count("gradients equal single-process eager") == WORLD, output[-6000:]
    return output


def test_ddp_example_under_torchrun(tmp_path):
    stdout = _torchrun(tmp_path, "ddp_train.py", "--budget", "0.3")
    assert "step 1: loss" in stdout
    assert "DDP split the model at bucket boundaries" in stdout, stdout


def test_fsdp2_example_under_torchrun(tmp_path):
    stdout = _torchrun(tmp_path, "fsdp2_train.py", "--budget", "0.3")
    assert "step 1: loss" in stdout
    assert "rematpass planned" in stdout and "rematpass planned 0" not in stdout, stdout
