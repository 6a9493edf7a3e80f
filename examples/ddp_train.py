"""Train a small GPT-style model with DistributedDataParallel and torch.compile(backend="remat").

    torchrun --nproc-per-node 2 examples/ddp_train.py
    torchrun --nproc-per-node 2 examples/ddp_train.py --budget 0.3 --no-optimize-ddp --check

Runs on CPU with the gloo backend (loopback) or, where CUDA is there, one GPU a
process with NCCL. Each rank trains on its shard of one global batch.

torch.compile sees the DDP-wrapped model. With ``torch._dynamo.config.optimize_ddp``
on (the default), Dynamo splits the graph at DDP's gradient-bucket boundaries so
that each bucket's all-reduce can start while the rest of the backward runs; every
piece is a separate graph, and rematpass plans each one (rank 0 prints one line a
graph). DDP's all-reduces run in autograd hooks outside the compiled graphs, so
the plan never touches them.

``--check`` compares the first step's gradients, on every rank, with a
single-process eager replica trained on the whole global batch and exits with
status 1 if they differ.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import rematpass
from rematpass.zoo import GPT

VOCAB = 256


def build_model(args) -> GPT:
    """The examples' GPT (rematpass.zoo): no dropout layers, a vocabulary head with bias."""
    return GPT(
        VOCAB,
        args.dim,
        heads=4,
        layers=args.layers,
        seq=args.seq,
        dropout=None,
        head_bias=True,
        embedding_dropout=False,
    )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--budget", type=float, default=None, help="rematpass memory_budget (default: its fastest plan)"
    )
    parser.add_argument("--backend", default="remat", help='torch.compile backend ("inductor" to compare)')
    parser.add_argument(
        "--bucket-cap-mb",
        type=float,
        default=1.0,
        help="DDP bucket size; Dynamo's DDPOptimizer rejects sizes under 1 MiB",
    )
    parser.add_argument("--no-optimize-ddp", action="store_true", help="one graph, no split at bucket boundaries")
    parser.add_argument("--check", action="store_true", help="compare step-1 gradients with single-process eager")
    return parser.parse_args()


def init_distributed() -> torch.device:
    """One process a CPU (gloo) or a GPU (NCCL); torchrun sets RANK, WORLD_SIZE and the rendezvous."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def shut_down_distributed() -> None:
    """Destroy the process group only after the models that use it are gone.

    DDP's reducer holds the process group. If the reducer is the group's last
    owner, the group is destroyed inside the reducer's destructor with the GIL
    held, and a gloo worker thread that needs the GIL to free a finished
    all-reduce's tensors deadlocks it (PyTorch issue 56297; seen now and then on
    the development machine). So train() returns first, compiled code is dropped, and the
    group goes last.
    """
    torch._dynamo.reset()  # compiled code can hold on to the model
    gc.collect()  # modules with hooks sit in reference cycles
    dist.barrier()
    dist.destroy_process_group()


def main():
    args = parse_args()
    device = init_distributed()
    train(args, device)  # returns with the model and its DDP/FSDP state freed
    shut_down_distributed()


def train(args, device):
    rank, world = dist.get_rank(), dist.get_world_size()
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    torch._dynamo.config.optimize_ddp = not args.no_optimize_ddp

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(args).to(device)
    replica = copy.deepcopy(model) if args.check else None
    ddp = DDP(model, bucket_cap_mb=args.bucket_cap_mb)
    options = {} if args.budget is None else {"memory_budget": args.budget}
    compiled = torch.compile(ddp, backend=args.backend, **({"options": options} if options else {}))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)

    data = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        global_batch = torch.randint(0, VOCAB, (world * args.batch, args.seq), generator=data).to(device)
        shard = global_batch[rank * args.batch : (rank + 1) * args.batch]
        optimizer.zero_grad(set_to_none=True)
        loss = compiled(shard)
        loss.backward()  # DDP averages the gradients over the ranks
        if step == 0 and replica is not None:
            check_against_eager(model, replica, global_batch, rank)
        optimizer.step()
        summed = loss.detach().clone()
        dist.all_reduce(summed)
        if rank == 0:
            print(f"step {step}: loss {summed.item() / world:.4f}", flush=True)

    if rank == 0:
        reports = rematpass.recent_reports()
        print(
            f"rank 0: rematpass planned {len(reports)} graph(s)"
            + (" (DDP split the model at bucket boundaries)" if len(reports) > 1 else "")
        )
        for report in reports:
            print("  " + report.one_line())


def check_against_eager(model, replica, global_batch, rank):
    """The averaged DDP gradients equal one eager process's gradients on the whole global batch."""
    replica(global_batch).backward()
    expected = dict(replica.named_parameters())
    worst = 0.0
    for name, param in model.named_parameters():
        ref = expected[name].grad
        torch.testing.assert_close(param.grad, ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"rank {rank} {name}: {m}")
        worst = max(worst, ((param.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
    print(f"rank {rank}: step-1 gradients equal single-process eager (max relative difference {worst:.2e})", flush=True)


if __name__ == "__main__":
    main()
