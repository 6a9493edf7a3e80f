"""Train a small GPT-style model with FSDP2 (fully_shard) and torch.compile(backend="remat").

    torchrun --nproc-per-node 2 examples/fsdp2_train.py
    torchrun --nproc-per-node 2 examples/fsdp2_train.py --budget 0.3 --check

Runs on CPU with the gloo backend (loopback) or, where CUDA is there, one GPU a
process with NCCL. Each rank trains on its shard of one global batch.

The pattern is FSDP2's own: ``fully_shard`` every transformer block, compile
every block, then ``fully_shard`` the root. FSDP2's all-gathers and
reduce-scatters run in its module hooks, outside the compiled graphs, so each
block's graph holds only that block's compute and rematpass plans it like any
other graph (rank 0 prints one line a graph; blocks of the same shape share one
compiled graph). Parameters are DTensors
sharded over the ranks; ``--check`` gathers the first step's gradients
(``full_tensor()``), compares them with a single-process eager replica trained
on the whole global batch and exits with status 1 if they differ.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import rematpass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Shared with the DDP example: the model and the process-group set-up.
from ddp_train import VOCAB, build_model, init_distributed, shut_down_distributed  # noqa: E402


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
    parser.add_argument("--check", action="store_true", help="compare step-1 gradients with single-process eager")
    return parser.parse_args()


def main():
    args = parse_args()
    device = init_distributed()
    train(args, device)  # returns with the model and its DDP/FSDP state freed
    shut_down_distributed()


def train(args, device):
    rank, world = dist.get_rank(), dist.get_world_size()
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    mesh = init_device_mesh(device.type, (world,))

    torch.manual_seed(0)  # the same initial weights on every rank: each keeps its shard
    model = build_model(args).to(device)
    replica = copy.deepcopy(model) if args.check else None
    options = {} if args.budget is None else {"memory_budget": args.budget}
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
        block.compile(backend=args.backend, **({"options": options} if options else {}))
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    data = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        global_batch = torch.randint(0, VOCAB, (world * args.batch, args.seq), generator=data).to(device)
        shard = global_batch[rank * args.batch : (rank + 1) * args.batch]
        optimizer.zero_grad(set_to_none=True)
        loss = model(shard)
        loss.backward()  # FSDP2 reduce-scatters the averaged gradients to their shards
        if step == 0 and replica is not None:
            check_against_eager(model, replica, global_batch, rank)
        optimizer.step()
        summed = loss.detach().clone()
        dist.all_reduce(summed)
        if rank == 0:
            print(f"step {step}: loss {summed.item() / world:.4f}", flush=True)

    if rank == 0:
        reports = rematpass.recent_reports()
        print(f"rank 0: rematpass planned {len(reports)} graph(s)")
        for report in reports:
            print("  " + report.one_line())


def check_against_eager(model, replica, global_batch, rank):
    """The gathered FSDP2 gradients equal one eager process's gradients on the whole global batch."""
    replica(global_batch).backward()
    expected = dict(replica.named_parameters())
    # full_tensor() is a collective: gather every gradient before any rank can fail a comparison.
    grads = {name: param.grad.full_tensor() for name, param in model.named_parameters()}
    worst = 0.0
    for name, grad in grads.items():
        ref = expected[name].grad
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"rank {rank} {name}: {m}")
        worst = max(worst, ((grad - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
    print(f"rank {rank}: step-1 gradients equal single-process eager (max relative difference {worst:.2e})", flush=True)


if __name__ == "__main__":
    main()
