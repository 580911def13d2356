"""Training as a package: the run's lifecycle (lifecycle.py: plan, create, resume), the loop
(loop.py) and what the user sees while it runs (progress.py). `run` ties them together; the
Python API (`tinylm.train`) and the command line call it."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tinylm import distributed as dist
from tinylm.models import build_model
from tinylm.runs import RunDir
from tinylm.training.lifecycle import Plan, create, default_out, plan, reload, reopen
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
    while the others wait, then reload what it recorded."""
    env = dist.current(device)
    with dist.errors_together(env):  # rank 0 prepares; the others wait, or fail with it
        if env.is_main:
            run_dir, data = reopen(p) if p.resume else create(p)
    with dist.errors_together(env):
        if not env.is_main:
            run_dir = RunDir.open(p.out)
            data = reload(run_dir, p)
    model = build_model(p.cfg.model, data.tokenizer)  # its weights come from the checkpoint
    if data.preparation and env.is_main and show_progress:
        print(f"Data: {data.describe()}.", file=sys.stderr)
    summary = fit(
        run_dir,
        p.cfg.train,
        model,
        data,
        device=device,
        should_stop=should_stop,
        show_progress=show_progress,
    )
    summary["preparation"] = data.preparation
    return run_dir, summary
