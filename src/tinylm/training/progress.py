"""What the user sees while a model trains: the metrics log (JSON lines) and the trackers it
feeds (trackers.py), the progress bar with rate and time left, and Ctrl-C (stop after this
step; twice: at once)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from tinylm import distributed as dist
from tinylm.config import TrainConfig
from tinylm.runs import RunDir
from tinylm.training import trackers


@dataclass
class Window:
    """What the log has counted since its last line (kept in a checkpoint, so that a resumed
    run writes the lines an uninterrupted one would)."""

    window_loss: float = 0.0
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0


class Progress:
    """The metrics log and the progress bar, with its own counters (`Window`); it reads the
    loop's state (step, elapsed time, tokens, best validation loss) and writes none of it. The
    training loss stays on the device between log lines, so a GPU never waits for the host
    except on logging and validation steps."""

    def __init__(
        self, run: RunDir, cfg: TrainConfig, state, window: Window, unit, device, env, show
    ):
        self.run, self.cfg, self.state, self.unit, self.env = run, cfg, state, unit, env
        self.window = window
        self.loss_sum = torch.tensor(window.window_loss, device=device)
        self.val = state.best_val if state.best_val < math.inf else None
        with dist.errors_together(env):  # a tracker that cannot start stops every rank
            names = cfg.report_to if env.is_main else []
            self.trackers = trackers.start(run, names, state.step)
        total = cfg.time if cfg.time else cfg.max_steps
        self.bar = tqdm(
            total=total,
            initial=min(state.elapsed if cfg.time else state.step, total or 0),
            disable=not (show and env.is_main),
            unit="s" if cfg.time else "step",
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )

    def step(self, loss: torch.Tensor, dt: float, targets: int, lr: float) -> bool:
        """Count a step; on a logging step write its line. False: the loss is not finite."""
        s, w = self.state, self.window
        self.loss_sum += loss
        w.window_steps += 1
        w.window_tokens += targets
        w.window_time += dt
        self.bar.update(min(dt, self.bar.total - self.bar.n) if self.cfg.time else 1)
        if s.step % self.cfg.log_every:
            return True
        mean_loss = dist.average(float(self.loss_sum) / w.window_steps, self.env)
        rate = w.window_tokens / w.window_time if w.window_time else 0.0
        record = {"step": s.step, "time": round(s.elapsed, 3), "tokens": s.tokens}
        self.write({**record, "loss": mean_loss, "lr": lr, f"{self.unit}_per_s": round(rate)})
        postfix = f"loss {mean_loss:.3f}" + (
            f", val {self.val:.3f}" if self.val is not None else ""
        )
        self.bar.set_postfix_str(f"{postfix}, {rate:,.0f} {self.unit}/s", refresh=False)
        self.loss_sum.zero_()
        self.window = Window()
        return math.isfinite(mean_loss)

    def validation(self, val: float) -> None:
        self.val = val
        s = self.state
        self.write(
            {"step": s.step, "time": round(s.elapsed, 3), "tokens": s.tokens, "val_loss": val}
        )
        self.trackers.flush()  # a checkpoint follows: what it covers is on disk

    def counters(self) -> dict:
        """The window's counters for a checkpoint (the loss read from the device)."""
        self.window.window_loss = float(self.loss_sum)
        return asdict(self.window)

    def write(self, record: dict) -> None:
        if self.env.is_main:
            self.run.log(record)
            self.trackers.log(record)

    def close(self) -> None:
        self.bar.close()
        self.trackers.close()


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
