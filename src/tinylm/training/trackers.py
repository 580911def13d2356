"""Where a run's figures go besides metrics.jsonl: TensorBoard, Weights & Biases and trackio
(`train.report_to`), behind one small interface, fed by the metrics log (progress.py) on rank 0
only. Each library is an optional extra, imported only when a run names it.

A tracker receives what metrics.jsonl receives, at the run's step, under these names:

    train/loss, train/lr, train/time, train/tokens, train/<unit>_per_s    each log line
    val/loss                                                             each validation
    test/...  every number of eval.json, nested names joined by "/"     each evaluation on
              (eval-NAME/... for an evaluation on other data)           the test split

`tinylm train` evaluates after training (unless --no-report), so its test figures arrive at the
end of the run; `tinylm.train` does not evaluate, and the figures arrive when the run is
evaluated (`model.evaluate()`, `tinylm eval`): `report` reopens the run's trackers for them.

The tracker's run belongs to the run directory: its id is kept in RUN/trackers.json, so that
`--resume` continues the same tracker run (TensorBoard: the same log directory, RUN/tensorboard;
wandb: the same id with resume="allow"; trackio: the same run name). A run resumed after a crash
redoes the steps after its checkpoint, which a tracker may already hold: TensorBoard's reader
drops them itself (purge_step: events from the first redone step on, written before the
resume, are discarded), and wandb and trackio are not sent a step they already hold (a resume is
bit-identical, so those figures are the ones they have; wandb learns its last step from its
server, so an offline wandb run holds the redone steps in both of its local folders until they
are synced). A tracker's own options are its environment variables (WANDB_PROJECT, WANDB_MODE,
WANDB_DIR, TRACKIO_DIR, ...); wandb's local files go to RUN/wandb unless WANDB_DIR says where.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import uuid

import yaml

from tinylm.errors import UserError
from tinylm.runs import RunDir

STATE = "trackers.json"
PROJECT = "tinylm"  # the wandb / trackio project, unless WANDB_PROJECT / TRACKIO_PROJECT says
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_installed(names: list[str]) -> None:
    """Refuse, in one sentence, a tracker whose library is not installed (before any work)."""
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise UserError(
                f"train.report_to names {name}, which is not installed; pip install "
                f"'tinylm[{name}]' (or {MODULES[name]}), or leave it out."
            ) from None


class Tracker:
    """One tracker's run: `log` a step's figures, `report` final ones, `flush` before a
    checkpoint, `close` at the end. It already holds the steps below `first_step`."""

    first_step = 0

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def report(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`)."""

    @staticmethod
    def new_state(run: RunDir) -> dict:
        return {"log_dir": "tensorboard"}

    def __init__(self, run: RunDir, state: dict, config: dict | None, redo_from: int | None):
        # imported when chosen: an optional extra (tensorboard), ~1 s
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.path / state["log_dir"]), purge_step=redo_from)
        if config is not None:
            self.writer.add_text("config", f"<pre>{yaml.safe_dump(config, sort_keys=False)}</pre>")

    def log(self, values, step):
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB(Tracker):
    """A Weights & Biases run (offline too: WANDB_MODE=offline, then `wandb sync`)."""

    @staticmethod
    def new_state(run: RunDir) -> dict:
        project = os.environ.get("WANDB_PROJECT") or PROJECT
        return {"id": uuid.uuid4().hex[:8], "project": project}

    def __init__(self, run: RunDir, state: dict, config: dict | None, redo_from: int | None):
        import wandb  # imported when chosen: an optional extra, ~1 s

        self.run = wandb.init(
            project=state["project"],
            id=state["id"],
            name=run.path.resolve().name,
            resume="allow",
            config=config,
            dir=os.environ.get("WANDB_DIR") or str(run.path),
        )
        self.first_step = self.run.step  # 0, or the last step its server holds (a resume)

    def log(self, values, step):
        self.run.log(values, step=step)

    def report(self, values, step):
        self.run.summary.update(values)

    def close(self):
        self.run.finish()


class Trackio(Tracker):
    """A trackio run in its local store (TRACKIO_DIR; `trackio show --project tinylm`)."""

    @staticmethod
    def new_state(run: RunDir) -> dict:
        project = os.environ.get("TRACKIO_PROJECT") or PROJECT
        return {"project": project, "name": f"{run.path.resolve().name}-{uuid.uuid4().hex[:6]}"}

    def __init__(self, run: RunDir, state: dict, config: dict | None, redo_from: int | None):
        import trackio  # imported when chosen: an optional extra, ~1 s

        project, name = state["project"], state["name"]
        with contextlib.redirect_stdout(sys.stderr):  # its notes are not the command's output
            self.run = trackio.init(
                project=project, name=name, resume="allow", config=config, embed=False
            )
        last = trackio.SQLiteStorage.get_max_step_for_run(project, name)
        self.first_step = 0 if last is None else last + 1
        self.trackio = trackio

    def log(self, values, step):
        self.run.log(values, step=step)

    def close(self):
        with contextlib.redirect_stdout(sys.stderr):
            self.trackio.finish()  # the run, and trackio's notion of the current one


KINDS: dict[str, type] = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The run's trackers together: what the metrics log calls."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl, to every tracker that does not hold its step yet."""
        values, step = figures(record), record["step"]
        for t in self.trackers:
            if step >= t.first_step:
                t.log(values, step)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def start(run: RunDir, names: list[str], step: int) -> Trackers:
    """The trackers of `train.report_to` for a run starting at `step`: new tracker runs, or
    (a resumed run) those its trackers.json names."""
    names = list(dict.fromkeys(names))
    if not names:
        return Trackers([])
    saved = run.read_json(STATE) or {}
    resumed = {name for name in names if name in saved}
    for name in names:
        saved.setdefault(name, KINDS[name].new_state(run))
    run.write_json(STATE, saved)  # before they start: a crash after keeps their ids
    config = run.config().to_dict()
    trackers = Trackers([])
    try:
        for name in names:
            again = name in resumed
            tracker = opened(
                name, run, saved[name], None if again else config, step + 1 if again else None
            )
            trackers.trackers.append(tracker)
    except BaseException:
        trackers.close()
        raise
    return trackers


def report(run: RunDir, prefix: str, result: dict) -> None:
    """An evaluation's figures (`result`, eval.json's dict) to the trackers the run trained
    with, at its last step, under `prefix/` (test, or eval-NAME for other data)."""
    saved = run.read_json(STATE) or {}
    records = run.metrics()
    step = records[-1]["step"] if records else 0
    values = flatten(result, prefix)
    for name, state in saved.items():
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            print(
                f"tinylm: note: {name} is not installed here; its run did not get these figures.",
                file=sys.stderr,
            )
            continue
        try:
            tracker = opened(name, run, state, None, None)
        except UserError as e:  # the figures are saved; a tracker is an extra
            print(f"tinylm: note: {e}", file=sys.stderr)
            continue
        try:
            tracker.report(values, step)
        finally:
            tracker.close()


def opened(name: str, run: RunDir, state: dict, config, redo_from) -> Tracker:
    """A tracker started, or one sentence on why it did not (wandb not logged in...)."""
    try:
        return KINDS[name](run, state, config, redo_from)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{name} did not start ({first}).") from None


def figures(record: dict) -> dict[str, float]:
    """A metrics.jsonl line under the trackers' names."""
    if "val_loss" in record:
        return {"val/loss": record["val_loss"]}
    return {f"train/{k}": v for k, v in record.items() if k != "step"}


def flatten(d: dict, prefix: str) -> dict[str, float]:
    """Every number of a (nested) dict, its names joined by "/"; text and lists left out."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out
