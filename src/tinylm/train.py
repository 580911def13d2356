"""The training loop: one loop for every model and every data set.

AdamW with warmup and a decay over the budget (time or steps), validation every `eval_every`
steps, early stopping with a patience, the best weights kept, checkpoints for an exact resume,
a progress bar, metrics as JSON lines and a loss picture at the end. Ctrl-C stops after the
current step and saves a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinylm import distributed as dist
from tinylm import training_data
from tinylm.config import RunConfig, TrainConfig
from tinylm.data.batching import IGNORE
from tinylm.device import autocast, autocast_dtype, compile_unavailable, pick_device
from tinylm.errors import UserError
from tinylm.models import build_model
from tinylm.plots import plot_losses
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


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then a decay over the budget's progress: cosine, linear, wsd (constant,
    then linear to the end over the last `cooldown` share), or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "linear":
        f = 1.0 - p
    elif cfg.schedule == "wsd":
        f = min(1.0, (1.0 - p) / cfg.cooldown)
    else:
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * f)


def progress_of(cfg: TrainConfig, state: TrainState) -> float:
    """How much of the budget is spent: the larger of the step and the time share."""
    shares = []
    if cfg.max_steps:
        shares.append(state.step / cfg.max_steps)
    if cfg.time:
        shares.append(state.elapsed / cfg.time)
    return max(shares) if shares else 0.0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    try:  # the fused kernel takes a step in one pass: ~3x faster updates on CPU (bench/step.py)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def validation_loss(model, batches, device, dtype, max_tokens: int) -> float:
    """Mean loss per target over the validation batches (up to max_tokens targets)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["targets"] != IGNORE).sum())
        with autocast(device, dtype):
            loss = model(**batch).loss
        total += float(loss) * n
        count += n
        if count >= max_tokens:
            break
    model.train(was_training)
    return total / max(count, 1)


class StopRequest:
    """Ctrl-C asks the loop to stop after the current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fit(
    run: Run,
    cfg: TrainConfig,
    model: torch.nn.Module,
    train_data,
    val_data,
    *,
    tokenizer,
    resume: bool = False,
    unit: str = "tokens",
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
) -> dict:
    """Train `model` on `train_data.batch(step, rank, world)`; return a summary.

    `should_stop` is polled after every step (tests use it to simulate Ctrl-C).
    """
    env = dist.current()
    device = env.device if env.world_size > 1 else pick_device()
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    dtype = autocast_dtype(cfg.precision, device)
    optimizer = make_optimizer(model, cfg)
    state = TrainState()
    if resume:
        meta = run.load_checkpoint(model, optimizer)
        state = TrainState(**meta["state"])
        if env.is_main:
            run.truncate_metrics(state.step)
    step_model = dist.wrap(model, env)
    if cfg.compile and (why := compile_unavailable(device)):
        print(f"note: training without torch.compile: {why}", file=sys.stderr)
    elif cfg.compile:  # compiled once per input shape; validation runs the plain model
        step_model = torch.compile(step_model)

    def save_checkpoint():
        if env.is_main:
            run.save_checkpoint(model, optimizer, {"state": asdict(state)})

    def validate():
        val = validation_loss(model, val_data.eval_batches(), device, dtype, cfg.eval_max_tokens)
        val = dist.broadcast_float(val, env)  # every rank takes rank 0's decision
        state.last_eval_step = state.step
        improved = val < state.best_val
        if improved:
            state.best_val, state.bad_evals = val, 0
            if env.is_main:
                run.save_weights(model, tokenizer)
        else:
            state.bad_evals += 1
        if env.is_main:
            run.log(
                {
                    "step": state.step,
                    "time": round(state.elapsed, 3),
                    "tokens": state.tokens,
                    "val_loss": val,
                }
            )
        return val

    total = cfg.time if cfg.time else cfg.max_steps
    bar = tqdm(
        total=total,
        initial=min(state.elapsed if cfg.time else state.step, total or 0),
        disable=not (show_progress and env.is_main),
        unit="s" if cfg.time else "step",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}] {postfix}",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    reason = "budget"
    val = state.best_val if state.best_val < math.inf else None
    with StopRequest() as stop:
        while True:
            if cfg.max_steps and state.step >= cfg.max_steps:
                break
            if cfg.time and state.elapsed >= cfg.time:
                break
            t0 = time.perf_counter()
            lr = learning_rate(cfg, state.step, progress_of(cfg, state))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train_data.batch(state.step, env.rank, env.world_size)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            n_tokens = int((batch["targets"] != IGNORE).sum()) * env.world_size
            with autocast(device, dtype):
                loss = step_model(**batch).loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
            dt = dist.max_over_ranks(time.perf_counter() - t0, env)
            state.step += 1
            state.elapsed += dt
            state.tokens += n_tokens
            state.window_loss += loss_value
            state.window_steps += 1
            state.window_tokens += n_tokens
            state.window_time += dt
            if not math.isfinite(loss_value):
                reason = "diverged"
                break
            if state.step % cfg.log_every == 0:
                mean_loss = state.window_loss / state.window_steps
                rate = state.window_tokens / state.window_time
                if env.is_main:
                    run.log({"step": state.step, "time": round(state.elapsed, 3),
                             "tokens": state.tokens, "loss": mean_loss, "lr": lr,
                             f"{unit}_per_s": round(rate)})  # fmt: skip
                postfix = f"loss {mean_loss:.3f}" + (f", val {val:.3f}" if val is not None else "")
                bar.set_postfix_str(f"{postfix}, {rate:,.0f} {unit}/s", refresh=False)
                state.window_loss, state.window_steps = 0.0, 0
                state.window_tokens, state.window_time = 0, 0.0
            bar.update(min(dt, bar.total - bar.n) if cfg.time else 1)
            if state.step % cfg.eval_every == 0:
                val = validate()
                save_checkpoint()
                if state.bad_evals >= cfg.patience:
                    reason = "early stopping"
                    break
            interrupted = stop.requested or bool(should_stop and should_stop(state))
            if dist.any_rank(interrupted, env):
                reason = "interrupted"
                break
    bar.close()
    if reason == "interrupted":
        # No validation here: it would change the early-stopping state, and a resumed run must
        # end exactly where an uninterrupted one would. Keep usable weights all the same.
        if env.is_main and not run.weights_path.is_file():
            run.save_weights(model, tokenizer)
    elif state.last_eval_step != state.step and reason != "diverged":
        val = validate()
    save_checkpoint()
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


def default_out(preset: str, resume: bool) -> Path:
    """runs/PRESET, or runs/PRESET-2, -3 ... when taken; with --resume the newest of those."""
    base = Path("runs") / preset
    taken = [base] + sorted(base.parent.glob(f"{preset}-*"))
    taken = [p for p in taken if (p / "tinylm.yaml").is_file()]
    if resume:
        if not taken:
            raise UserError(f"No run of preset '{preset}' under runs/ to resume; pass --out RUN.")
        return max(taken, key=lambda p: p.stat().st_mtime)
    n = 1
    while (p := base if n == 1 else base.with_name(f"{preset}-{n}")).exists():
        n += 1
    return p


def check_out(out: Path, resume: bool) -> None:
    if resume:
        Run.open(out)
    elif (out / "tinylm.yaml").is_file():
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it or another --out."
        )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose another --out.")


def train_run(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    init_from: Path | None = None,
    should_stop: Callable[[TrainState], bool] | None = None,
    show_progress: bool = True,
) -> tuple[Run, dict]:
    """Prepare data and run directory, build / restore / fine-tune the model, and fit.

    Under several processes, rank 0 prepares (tokenizer, token cache, run directory) while the
    others wait, then reload what it recorded.
    """
    env = dist.current()
    out = Path(out)
    tokenizer = source_model = None
    if init_from is not None:
        source = Run.open(init_from)
        tokenizer = source.tokenizer()
        source_model = source.load_model(tokenizer=tokenizer)
    if resume:
        saved = Run.open(out).config()
        saved.train.time, saved.train.max_steps = cfg.train.time, cfg.train.max_steps
        cfg = saved
    with dist.errors_together(env):  # rank 0 prepares; the others wait, or fail with it
        if env.is_main:
            check_out(out, resume)
            if resume:
                run = Run.open(out)
                run.save_config(cfg)  # the budget may have changed
                data = training_data.reload(run, cfg)
            else:
                run, data = training_data.new_run(cfg, out, tokenizer)
    with dist.errors_together(env):
        if not env.is_main:
            run = Run.open(out)
            cfg = run.config()
            data = training_data.reload(run, cfg)
    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed only
    model = build_model(cfg.model, data.tokenizer)
    if source_model is not None:
        model.load_state_dict(source_model.state_dict())
    if data.preparation and env.is_main and show_progress:
        print(f"Data: {data.describe()}.", file=sys.stderr)
    summary = fit(
        run,
        cfg.train,
        model,
        data.train,
        data.val,
        tokenizer=data.tokenizer,
        resume=resume,
        unit=data.unit,
        should_stop=should_stop,
        show_progress=show_progress,
    )
    summary["preparation"] = data.preparation
    return run, summary
