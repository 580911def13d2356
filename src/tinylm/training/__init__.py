"""Training as a package: the run's lifecycle (lifecycle.py: plan, create, resume), the loop
(loop.py) and what the user sees while it runs (progress.py). `run` ties them together; the
Python API (`tinylm.train`) and the command line call it."""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Callable

from tinylm import distributed as dist
from tinylm.models import build_model
from tinylm.runs import RunDir
from tinylm.training.lifecycle import (
    Plan,
    create,
    default_out,
    files_for_ranks,
    plan,
    rank_copy,
    reload,
    reopen,
)
from tinylm.training.loop import TrainState, fit

__all__ = ["Plan", "TrainState", "default_out", "fit", "plan", "run"]


def run(
    p: Plan,
    *,
    device: str = "auto",
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
) -> tuple[RunDir, dict]:
    """Prepare the data, create (or reopen) the run directory, and fit; return the run and a
    summary. Under several processes, rank 0 prepares (tokenizer, token cache, run directory)
    while the others wait, then sends them what it recorded, which they reload from a private
    copy: only rank 0 reads or writes the run directory, so another machine needs none."""
    env = dist.current(device)
    with dist.errors_together(env):  # rank 0 prepares; the others wait, or fail with it
        if env.is_main:
            run_dir, data = reopen(p) if p.resume else create(p)
    if env.world_size > 1:
        files = dist.broadcast_object(files_for_ranks(run_dir) if env.is_main else None, env)
        with dist.errors_together(env):
            if not env.is_main:
                run_dir = rank_copy(files)
                data = reload(run_dir, p)
        del files
    model = build_model(p.cfg.model, data.tokenizer)  # its weights come from the checkpoint
    if env.is_main and show_progress:
        if data.preparation:
            print(f"Data: {data.describe()}.", file=sys.stderr)
        if env.world_size > 1:  # on several machines, where the run goes is worth saying
            print(f"Rank 0 writes {p.out} on {socket.gethostname()}.", file=sys.stderr)
    try:
        summary = fit(
            run_dir,
            p.cfg.train,
            model,
            data,
            device=device,
            should_stop=should_stop,
            show_progress=show_progress,
        )
    finally:
        if not env.is_main:
            shutil.rmtree(run_dir.path, ignore_errors=True)
    summary["preparation"] = data.preparation
    return (run_dir if env.is_main else RunDir(p.out)), summary
