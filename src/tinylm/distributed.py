"""Several processes through PyTorch's DistributedDataParallel, as launched by `torchrun` or
`accelerate launch` (both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

One process = one rank: each takes its own batches, DDP averages the gradients, and only rank 0
writes the run directory. Decisions that end training (time budget, early stopping, Ctrl-C)
are agreed across ranks so that all stop at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_env: DistEnv | None = None


def current() -> DistEnv:
    """Start the process group on first use when launched with WORLD_SIZE > 1."""
    global _env
    if _env is not None:
        return _env
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _env = DistEnv()
        return _env
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not td.is_initialized():
        td.init_process_group(backend)
    _env = DistEnv(td.get_rank(), td.get_world_size(), local, device)
    return _env


def wrap(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    if env.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def max_over_ranks(value: float, env: DistEnv) -> float:
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return float(t)


def any_rank(flag: bool, env: DistEnv) -> bool:
    return max_over_ranks(1.0 if flag else 0.0, env) > 0


def broadcast_float(value: float, env: DistEnv) -> float:
    """Rank 0's value on every rank (validation loss: every rank must take the same decision)."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    td.broadcast(t, src=0)
    return float(t)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        td.barrier()


def finish() -> None:
    if td.is_initialized():
        td.barrier()
        td.destroy_process_group()
