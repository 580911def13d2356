"""Several processes through PyTorch's DistributedDataParallel, as launched by `torchrun` or
`accelerate launch` (both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

One process = one rank: each takes its own share of every batch, DDP averages the gradients,
and only rank 0 writes the run directory. Decisions that end training (time budget, early
stopping, Ctrl-C) are agreed across ranks so that all stop at the same step, and so is a user
error met by one rank: every rank says the same sentence and exits together
(`errors_together`). These small agreements travel on a gloo group of CPU tensors, so that on
GPUs they never wait for the device (NCCL carries the gradients). `session()` tears the
process group down on every way out; a process that exits with gloo's threads still running
aborts in C++ ("terminate called without an active exception").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel

from tinylm.device import pick_device
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
_control = None  # the gloo group for agreements when the default group is NCCL


def current(device: str = "auto") -> DistEnv:
    """Start the process group on first use when launched with WORLD_SIZE > 1. `device` is
    --device: auto (a GPU per rank where there are GPUs), cpu, or cuda."""
    global _env, _control
    if _env is not None:
        return _env
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _env = DistEnv()
        return _env
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(
            f"--device {device} does not work with several processes; give auto, cpu or cuda (each rank takes the GPU of its LOCAL_RANK)."
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if pick_device("cuda" if device == "cuda" else device).type == "cuda":
        torch.cuda.set_device(local)
        device_, backend = torch.device("cuda", local), "nccl"
    else:
        device_, backend = torch.device("cpu"), "gloo"
    if not td.is_initialized():
        td.init_process_group(backend)
    _control = td.new_group(backend="gloo") if backend != "gloo" else None
    _env = DistEnv(td.get_rank(), td.get_world_size(), local, device_)
    return _env


def wrap(model: torch.nn.Module, env: DistEnv):
    """DDP around the model (None for one process). Its buffers are constants (rotary tables,
    masks), so they are not broadcast before every forward pass."""
    if env.world_size == 1:
        return None
    ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def agree(seconds: float, stop: bool, count: int, env: DistEnv) -> tuple[float, bool, int]:
    """One exchange per training step, on the CPU: the slowest rank's step time (so that all
    ranks count the same time), whether any rank must stop, and the sum of `count`."""
    if env.world_size == 1:
        return seconds, stop, count
    mine = torch.tensor([seconds, float(stop), float(count)], dtype=torch.float64)
    every = [torch.zeros_like(mine) for _ in range(env.world_size)]
    td.all_gather(every, mine, group=_control)
    t = torch.stack(every)
    return float(t[:, 0].max()), bool(t[:, 1].max() > 0), int(t[:, 2].sum())


def average(value: float, env: DistEnv) -> float:
    """The mean of `value` over the ranks (the training loss of a log line: every rank's)."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    td.all_reduce(t, group=_control)
    return float(t) / env.world_size


def broadcast_float(value: float, env: DistEnv) -> float:
    """Rank 0's value on every rank (validation loss: every rank must take the same decision)."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    td.broadcast(t, src=0, group=_control)
    return float(t)


def gather(obj, env: DistEnv) -> list:
    """Every rank's `obj`, by rank (on every rank)."""
    if env.world_size == 1:
        return [obj]
    out: list = [None] * env.world_size
    td.all_gather_object(out, obj, group=_control)
    return out


def broadcast_object(obj, env: DistEnv):
    """Rank 0's `obj` on every rank (pickled, between the processes of one run)."""
    if env.world_size == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0, group=_control)
    return box[0]


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
        first = next((m for m in gather(error, env) if m), None)
        if first:
            raise UserError(first)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[DistEnv]:
    """The process group for a command, torn down however the command ends.

    On success or an agreed user error the ranks leave in step: a barrier, then destroy. On
    anything else (a second Ctrl-C, a crash) the ranks may be anywhere, so the group is
    destroyed without waiting for the others; torchrun ends the rest.
    """
    in_step = False
    try:
        yield current(device)
        in_step = True
    except UserError:
        in_step = True
        raise
    finally:
        finish(in_step)


def finish(in_step: bool = True) -> None:
    global _env, _control
    if td.is_initialized():
        if in_step:
            td.barrier(group=_control)
        td.destroy_process_group()
    _env = _control = None
