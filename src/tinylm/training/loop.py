"""The training loop: one loop for every model and every data set.

`fit` reads top to bottom like nanoGPT's train.py: set the learning rate, take the step's
batch, accumulate its gradients over micro-batches, clip, step the optimizer (optim.py), count,
log, validate and save a checkpoint every `eval_every` steps, stop on the budget, early
stopping or Ctrl-C. What each of those does in detail lives in the helpers below it, which
share one `Training` (the run, its model, optimizer, data, counters and log). Ctrl-C stops
after the current step and saves a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch

from tinylm import checkpoints
from tinylm import distributed as dist
from tinylm.config import TrainConfig
from tinylm.data.batching import IGNORE, micro_batches
from tinylm.device import (
    autocast,
    autocast_dtype,
    compile_unavailable,
    deterministic_compiled_kernels,
    pick_device,
    to_device,
    use_tensor_cores,
)
from tinylm.optim import learning_rate, make_optimizer
from tinylm.plots import plot_losses
from tinylm.runs import RunDir
from tinylm.training.progress import Progress, StopRequest, Window


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint."""

    step: int = 0
    elapsed: float = 0.0  # seconds spent in training steps (validation excluded)
    tokens: int = 0  # targets seen (all ranks)
    best_val: float = math.inf
    bad_evals: int = 0
    last_eval_step: int = -1


@dataclass
class Training:
    """Everything the loop's helpers share."""

    run: RunDir
    cfg: TrainConfig
    model: torch.nn.Module
    step_model: torch.nn.Module  # what a step calls: the model, under DDP and/or compiled
    ddp: torch.nn.Module | None
    optimizer: object
    data: object  # lifecycle.RunData
    state: TrainState
    log: Progress
    device: torch.device
    dtype: torch.dtype | None  # autocast's
    env: dist.DistEnv


def fit(
    run: RunDir,
    cfg: TrainConfig,
    model: torch.nn.Module,
    data,
    *,
    device: str = "auto",
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
) -> dict:
    """Train `model` from the run's checkpoint to the end of its budget; return a summary.

    `should_stop` is polled after every step (tests use it to simulate Ctrl-C).
    """
    t = start(run, cfg, model, data, device, show_progress)
    state, reason = t.state, "budget"
    compiled = t.step_model is not (t.ddp or t.model)
    with StopRequest() as stop, deterministic_compiled_kernels(t.device, compiled):
        while not budget_spent(cfg, state):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, state.step, progress_of(cfg, state))
            for group in t.optimizer.param_groups:
                group["lr"] = lr
            batch = data.train.batch(state.step, t.env.rank, t.env.world_size)
            loss, targets = forward_backward(
                t.ddp, t.step_model, batch, data.micro_tokens, t.device, t.dtype
            )
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            halt = stop.requested or bool(should_stop and should_stop(state))
            dt, halt, targets = dist.agree(time.perf_counter() - t0, halt, targets, t.env)
            state.elapsed += dt
            state.tokens += targets
            if not t.log.step(loss, dt, targets, lr):
                reason = "diverged"
                break
            if state.step % cfg.eval_every == 0:
                if not math.isfinite(validate(t)):
                    reason = "diverged"
                    break
                save_checkpoint(t)
                if state.bad_evals >= cfg.patience:
                    reason = "early stopping"
                    break
            if halt:
                reason = "interrupted"
                break
    return finish(t, reason)


# --- the step ---------------------------------------------------------------------------------


def start(run: RunDir, cfg: TrainConfig, model, data, device: str, show: bool) -> Training:
    """The model on its device, the optimizer, and both restored from the run's checkpoint (a
    new run has one from step 0), with every random generator's state."""
    env = dist.current()
    device = env.device if env.world_size > 1 else pick_device(device)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    torch.manual_seed(cfg.seed + env.rank)  # until a checkpoint brings the generators' states
    meta, rng = run.load_checkpoint(model, optimizer)
    checkpoints.set_rng_states(rng.get(env.rank, {}), device)
    saved = meta["state"]
    state = TrainState(**{f.name: saved[f.name] for f in fields(TrainState) if f.name in saved})
    window = Window(**{f.name: saved[f.name] for f in fields(Window) if f.name in saved})
    if env.is_main:
        run.truncate_metrics(state.step)
    ddp, step_model = prepare_model(model, cfg, device, env)
    log = Progress(run, cfg, state, window, data.unit, device, env, show)
    dtype = autocast_dtype(cfg.precision, device)
    return Training(
        run, cfg, model, step_model, ddp, optimizer, data, state, log, device, dtype, env
    )


def forward_backward(ddp, step_model, batch, micro_tokens: int, device, dtype):
    """One step's gradients, accumulated over micro-batches of at most `micro_tokens` tokens.

    Each micro-batch's mean loss is weighted by its share of the batch's targets, so the
    gradient is the whole batch's. Under DDP the gradients are averaged over the ranks once,
    on the last micro-batch (`no_sync` before it). Returns the batch's mean loss, left on the
    device (reading it would wait for the GPU), and its number of targets.
    """
    parts = micro_batches(batch, micro_tokens)
    counts = [int((p["targets"] != IGNORE).sum()) for p in parts]  # on the host: no wait
    total = sum(counts)
    loss_sum = None
    for i, (part, n) in enumerate(zip(parts, counts, strict=True)):
        part = to_device(part, device)
        last = i == len(parts) - 1
        with nullcontext() if ddp is None or last else ddp.no_sync():
            with autocast(device, dtype):
                loss = step_model(**part).loss
            (loss * (n / total)).backward()
        share = loss.detach() * (n / total)
        loss_sum = share if loss_sum is None else loss_sum + share
    return loss_sum, total


def progress_of(cfg: TrainConfig, state: TrainState) -> float:
    """How much of the budget is spent: the larger of the step and the time share."""
    shares = []
    if cfg.max_steps:
        shares.append(state.step / cfg.max_steps)
    if cfg.time:
        shares.append(state.elapsed / cfg.time)
    return max(shares) if shares else 0.0


def budget_spent(cfg: TrainConfig, state: TrainState) -> bool:
    return bool(
        (cfg.max_steps and state.step >= cfg.max_steps) or (cfg.time and state.elapsed >= cfg.time)
    )


def prepare_model(model, cfg: TrainConfig, device, env):
    """(the DDP wrapper or None, the module a step calls: DDP and/or compiled)."""
    use_tensor_cores(device, cfg.precision)
    ddp = dist.wrap(model, env)
    step_model = ddp or model
    if cfg.compile and (why := compile_unavailable(device)):
        print(f"note: training without torch.compile: {why}", file=sys.stderr)
    elif cfg.compile:  # compiled once per input shape; validation runs the plain model
        step_model = torch.compile(step_model)
    return ddp, step_model


# --- evaluation, checkpoints, the end ---------------------------------------------------------


@torch.no_grad()
def validation_loss(model, batches, device, dtype, max_tokens: int) -> float:
    """Mean loss per target over the validation batches (up to max_tokens targets)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for batch in batches:
        n = int((batch["targets"] != IGNORE).sum())
        with autocast(device, dtype):
            loss = model(**to_device(batch, device)).loss
        total += loss.float() * n
        count += n
        if count >= max_tokens:
            break
    model.train(was_training)
    return float(total) / max(count, 1)


def validate(t: Training) -> float:
    """Validation loss (rank 0's, for every rank); keep the best weights; count bad evals."""
    batches = t.data.val.eval_batches()
    val = validation_loss(t.model, batches, t.device, t.dtype, t.cfg.eval_max_tokens)
    val = dist.broadcast_float(val, t.env)
    state = t.state
    state.last_eval_step = state.step
    if val < state.best_val:
        state.best_val, state.bad_evals = val, 0
        if t.env.is_main:
            t.run.save_weights(t.model, t.data.tokenizer)
    else:
        state.bad_evals += 1
    t.log.validation(val)
    return val


def save_checkpoint(t: Training) -> None:
    counters = {**asdict(t.state), **t.log.counters()}
    rng = dist.gather(checkpoints.rng_states(t.device), t.env)
    if t.env.is_main:
        t.run.save_checkpoint(t.model, t.optimizer, {"state": counters}, rng)


def finish(t: Training, reason: str) -> dict:
    state = t.state
    if reason == "interrupted":
        # No validation here: it would change the early-stopping state, and a resumed run must
        # end exactly where an uninterrupted one would. Keep usable weights all the same.
        if t.env.is_main and not t.run.weights_path.is_file():
            t.run.save_weights(t.model, t.data.tokenizer)
    elif state.last_eval_step != state.step and reason != "diverged":
        validate(t)
    save_checkpoint(t)
    t.log.close()  # after the last validation: its line reaches the trackers too
    if t.env.is_main:
        plot_losses([(t.run.path.name, t.run.metrics())], t.run.loss_plot_path)
    return {
        "reason": reason,
        "step": state.step,
        "elapsed": state.elapsed,
        "tokens": state.tokens,
        "best_val": state.best_val,
        "unit_per_s": state.tokens / state.elapsed if state.elapsed else 0.0,
    }
