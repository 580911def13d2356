"""The training loop: one loop for every model and every data set.

`fit` reads top to bottom like nanoGPT's train.py: set the learning rate, take the step's batch,
accumulate its gradients over micro-batches, clip, step the optimizer (optim.py), count, log, validate and save a
checkpoint every `eval_every` steps, stop on the budget, early stopping or Ctrl-C. What each of
those does in detail lives in the helpers beside it. Ctrl-C stops after the current step and
saves a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tinylm import checkpoints, training_data
from tinylm import distributed as dist
from tinylm.config import RunConfig, TrainConfig
from tinylm.data.batching import IGNORE, micro_batches
from tinylm.device import (
    autocast,
    autocast_dtype,
    compile_unavailable,
    pick_device,
    to_device,
    use_tensor_cores,
)
from tinylm.errors import UserError
from tinylm.launch import check_out, keep_all_but_budget
from tinylm.models import build_model
from tinylm.optim import learning_rate, make_optimizer
from tinylm.plots import plot_losses
from tinylm.progress import Progress, StopRequest
from tinylm.runs import Run


@dataclass
class TrainState:
    step: int = 0
    elapsed: float = 0.0  # seconds spent in training steps (validation excluded)
    tokens: int = 0  # targets seen (all ranks)
    best_val: float = math.inf
    bad_evals: int = 0
    last_eval_step: int = -1
    # since the last log line (kept across a resume, so the log matches an uninterrupted run)
    window_loss: float = 0.0
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0


def fit(
    run: Run,
    cfg: TrainConfig,
    model: torch.nn.Module,
    data: training_data.RunData,
    *,
    device: str = "auto",
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
) -> dict:
    """Train `model` from the run's checkpoint to the end of its budget; return a summary.

    `should_stop` is polled after every step (tests use it to simulate Ctrl-C).
    """
    env = dist.current()
    device = env.device if env.world_size > 1 else pick_device(device)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    state = restore(run, model, optimizer, cfg, device, env)
    ddp, step_model = prepare_model(model, cfg, device, env)
    dtype = autocast_dtype(cfg.precision, device)
    log = Progress(run, cfg, state, data.unit, device, env, show_progress)
    reason = "budget"
    with StopRequest() as stop:
        while not budget_spent(cfg, state):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, state.step, progress_of(cfg, state))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = data.train.batch(state.step, env.rank, env.world_size)
            loss, targets = forward_backward(ddp, step_model, batch, data.micro_tokens, device, dtype)  # fmt: skip
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            halt = stop.requested or bool(should_stop and should_stop(state))
            dt, halt, targets = dist.agree(time.perf_counter() - t0, halt, targets, env)
            state.elapsed += dt
            state.tokens += targets
            if not log.step(loss, dt, targets, lr):
                reason = "diverged"
                break
            if state.step % cfg.eval_every == 0:
                if not math.isfinite(validate(run, model, data, cfg, state, log, device, env)):
                    reason = "diverged"
                    break
                save_checkpoint(run, model, optimizer, state, log, device, env)
                if state.bad_evals >= cfg.patience:
                    reason = "early stopping"
                    break
            if halt:
                reason = "interrupted"
                break
    return finish(run, model, optimizer, data, cfg, state, log, reason, device, env)


# --- the step ---------------------------------------------------------------------------------


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


def validate(run, model, data, cfg: TrainConfig, state: TrainState, log, device, env) -> float:
    """Validation loss (rank 0's, for every rank); keep the best weights; count bad evals."""
    dtype = autocast_dtype(cfg.precision, device)
    val = validation_loss(model, data.val.eval_batches(), device, dtype, cfg.eval_max_tokens)
    val = dist.broadcast_float(val, env)
    state.last_eval_step = state.step
    if val < state.best_val:
        state.best_val, state.bad_evals = val, 0
        if env.is_main:
            run.save_weights(model, data.tokenizer)
    else:
        state.bad_evals += 1
    log.validation(val)
    return val


def restore(run: Run, model, optimizer, cfg: TrainConfig, device, env) -> TrainState:
    """Load the run's checkpoint (a new run has one from step 0) and its random state."""
    torch.manual_seed(cfg.seed + env.rank)  # until a checkpoint brings the generators' states
    meta, rng = run.load_checkpoint(model, optimizer)
    checkpoints.set_rng_states(rng.get(env.rank, {}), device)
    state = TrainState(**meta["state"])
    if env.is_main:
        run.truncate_metrics(state.step)
    return state


def save_checkpoint(run: Run, model, optimizer, state: TrainState, log, device, env) -> None:
    log.flush_window()  # the loss since the last log line, read from the device
    rng = dist.gather(checkpoints.rng_states(device), env)
    if env.is_main:
        run.save_checkpoint(model, optimizer, {"state": asdict(state)}, rng)


def finish(run, model, optimizer, data, cfg, state, log, reason: str, device, env) -> dict:
    log.close()
    if reason == "interrupted":
        # No validation here: it would change the early-stopping state, and a resumed run must
        # end exactly where an uninterrupted one would. Keep usable weights all the same.
        if env.is_main and not run.weights_path.is_file():
            run.save_weights(model, data.tokenizer)
    elif state.last_eval_step != state.step and reason != "diverged":
        validate(run, model, data, cfg, state, log, device, env)
    save_checkpoint(run, model, optimizer, state, log, device, env)
    if env.is_main:
        plot_losses([(run.path.name, run.metrics())], run.loss_plot_path)
    return {
        "reason": reason,
        "step": state.step,
        "elapsed": state.elapsed,
        "tokens": state.tokens,
        "best_val": state.best_val,
        "unit_per_s": state.tokens / state.elapsed if state.elapsed else 0.0,
    }


# --- from a config to a trained run ---------------------------------------------------------


def train_run(
    cfg: RunConfig | None,
    out: Path,
    *,
    resume: bool = False,
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
    device: str = "auto",
) -> tuple[Run, dict]:
    """Check everything, prepare the data, create (or reopen) the run directory, and fit.

    A new run directory appears whole, with a step-0 checkpoint, or not at all. With `resume`
    the run in `out` goes on with its saved config; `cfg` may be None or differ from it in the
    budget only (train.time, train.max_steps: a new total). Under several processes, rank 0
    prepares (tokenizer, token cache, run directory) while the others wait, then reload what
    it recorded.
    """
    env = dist.current()
    out = Path(out)
    with dist.errors_together(env):  # rank 0 prepares; the others wait, or fail with it
        if env.is_main:
            run, data = reopen(out, cfg, env) if resume else create(cfg, out, env)
    with dist.errors_together(env):
        if not env.is_main:
            run = Run.open(out)
            data = training_data.reload(run, run.config(), env.world_size)
    cfg = run.config()
    model = build_model(cfg.model, data.tokenizer)  # its weights come from the checkpoint
    if data.preparation and env.is_main and show_progress:
        print(f"Data: {data.describe()}.", file=sys.stderr)
    summary = fit(run, cfg.train, model, data, device=device, should_stop=should_stop,
                  show_progress=show_progress)  # fmt: skip
    summary["preparation"] = data.preparation
    return run, summary


def create(cfg: RunConfig, out: Path, env) -> tuple[Run, training_data.RunData]:
    """A new run: every check first, then the data, then the directory, committed whole."""
    cfg.check()
    cfg.batch_split(env.world_size)
    check_out(out)
    tokenizer = source = None
    if cfg.init_from is not None:  # domain adaptation: the source's tokenizer and weights
        source_run = Run.open(Path(cfg.init_from))
        source_cfg = source_run.config()
        if (source_cfg.model, source_cfg.tokenizer) != (cfg.model, cfg.tokenizer):
            raise UserError(f"--init-from {cfg.init_from}: its model and tokenizer settings must be kept.")  # fmt: skip
        tokenizer = source_run.tokenizer(source_cfg)
        source = source_run.load_model(source_cfg, tokenizer)
    staged, data = training_data.new_run(cfg, out, tokenizer, env.world_size)
    try:
        torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed only
        model = build_model(cfg.model, data.tokenizer)
        if source is not None:
            model.load_state_dict(source.state_dict())
        staged.save_checkpoint(model, None, {"state": asdict(TrainState())})
        return staged.commit(), data
    except BaseException:
        staged.discard()
        raise


def reopen(out: Path, cfg: RunConfig | None, env) -> tuple[Run, training_data.RunData]:
    """The run in `out`, to resume: its saved config, with `cfg`'s budget if one is given."""
    run = Run.open(out)
    saved = run.config()
    if cfg is not None:
        saved = keep_all_but_budget(saved, cfg, out)
    saved.batch_split(env.world_size)
    if not run.checkpoint_path.is_file():
        raise UserError(f"{out} has no checkpoint to resume from.")
    run.remove_temporaries()
    run.save_config(saved)  # the budget may have changed
    return run, training_data.reload(run, saved, env.world_size)
