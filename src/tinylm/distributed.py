"""Several processes through PyTorch's DistributedDataParallel, as launched by `torchrun` or
`accelerate launch` (both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

One process = one rank: each takes its own batches, DDP averages the gradients, and only rank 0
writes the run directory. Decisions that end training (time budget, early stopping, Ctrl-C)
are agreed across ranks so that all stop at the same step, and so is a user error met by one
rank: every rank says the same sentence and exits together (`errors_together`). `session()`
tears the process group down on every way out; a process that exits with gloo's threads still
running aborts in C++ ("terminate called without an active exception").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as td

from tinylm.errors import UserError


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


@contextlib.contextmanager
def errors_together(env: DistEnv) -> Iterator[None]:
    """Every rank enters the block (some may do nothing in it); a UserError raised on any rank
    is raised on all of them as they leave it, with the first failing rank's message. The
    ranks wait for each other here, so this is also a barrier."""
    error = None
    try:
        yield
    except UserError as e:
        if env.world_size == 1:
            raise
        error = str(e)
    if env.world_size > 1:
        messages: list[str | None] = [None] * env.world_size
        td.all_gather_object(messages, error)
        first = next((m for m in messages if m), None)
        if first:
            raise UserError(first)


@contextlib.contextmanager
def session() -> Iterator[DistEnv]:
    """The process group for a command, torn down however the command ends.

    On success or an agreed user error the ranks leave in step: a barrier, then destroy. On
    anything else (a second Ctrl-C, a crash) the ranks may be anywhere, so the group is
    destroyed without waiting for the others; torchrun ends the rest.
    """
    in_step = False
    try:
        yield current()
        in_step = True
    except UserError:
        in_step = True
        raise
    finally:
        finish(in_step)


def finish(in_step: bool = True) -> None:
    global _env
    if td.is_initialized():
        if in_step:
            td.barrier()
        td.destroy_process_group()
    _env = None
