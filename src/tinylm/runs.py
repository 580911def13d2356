"""The run directory: the unit a user keeps and shares.

    RUN/
      tinylm.yaml            resolved configuration
      tokenizer.json         tokenizer (Hugging Face format) + tokenizer_config.json
      config.json            model config (Hugging Face format)
      model.safetensors      best weights so far (Hugging Face layout, weights.py)
      checkpoint.safetensors last training state for --resume (checkpoints.py)
      metrics.jsonl          one JSON object per logged step / validation
      loss.png               training and validation loss
      split/                 the data split (word lists, or a record of the document split)
      eval.json              written by `tinylm eval`
      README.md              the model card (card.py), with card.json and samples.txt
      trackers.json          the trackers' runs (train.report_to, training/trackers.py)

A new run directory is built in a hidden folder beside its final place and renamed there in
one step, with a first checkpoint (step 0) inside: a run directory either holds everything
`--resume` needs or does not exist. Every file in it is replaced atomically (atomic.py) except
metrics.jsonl, which grows a line at a time: a line cut by a crash is skipped when read, and
`--resume` rewrites the log up to its checkpoint. Nothing here is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from tinylm import atomic, checkpoints, hub
from tinylm.config import RunConfig
from tinylm.data.files import warn
from tinylm.errors import UserError
from tinylm.models import load_model
from tinylm.tokenizer import Tokenizer

RESTORE = "restore it from a copy of the run, or train it again"
# What to do about a damaged file when more can be said than RESTORE.
REMEDY = {
    "eval.json": "delete it, or write it again with tinylm eval RUN",
    "split/split.json": "restore it from a copy of the run (a text run's --resume and eval need "
    "it)",
}
_WARNED: set[Path] = set()  # metrics logs whose damaged lines were said already

# Files the trainer writes through atomic.py; their leftover temporaries are its to remove.
OWN_FILES = (
    "tinylm.yaml",
    "tokenizer",
    "config.json",
    "model.safetensors",
    "checkpoint",
    "metrics.jsonl",
    "loss.png",
    "generation_config.json",
    ".save-",
)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- paths
    @property
    def config_path(self):
        return self.path / "tinylm.yaml"

    @property
    def weights_path(self):
        return self.path / "model.safetensors"

    @property
    def checkpoint_path(self):
        return self.path / "checkpoint.safetensors"

    @property
    def metrics_path(self):
        return self.path / "metrics.jsonl"

    @property
    def loss_plot_path(self):
        return self.path / "loss.png"

    @property
    def split_dir(self):
        return self.path / "split"

    # --- creating and opening
    @classmethod
    def stage(cls, out: Path) -> RunDir:
        """A new run, built in a hidden folder beside `out` until `commit` renames it there."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_stages(out)
        tmp = tempfile.mkdtemp(prefix=f".{out.name}.creating-{os.getpid()}-", dir=out.parent)
        run = cls(tmp)
        run.split_dir.mkdir()
        run.final_path = out
        return run

    def commit(self) -> RunDir:
        """Put a staged run in its place with one rename (onto nothing, or an empty folder)."""
        atomic.fsync(self.split_dir)  # every file in it was flushed as it was written
        atomic.fsync(self.path)
        os.replace(self.path, self.final_path)
        atomic.fsync(self.final_path.parent)
        return RunDir(self.final_path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """The run in `path`, or in `hf:OWNER/NAME`'s copy in the Hugging Face cache (hub.py)."""
        run = cls(hub.local_copy(path))
        if not run.path.is_dir():
            raise UserError(f"Run directory {run.path} does not exist.")
        if not run.config_path.is_file():
            raise UserError(f"{run.path} is not a tinylm run directory (it has no tinylm.yaml).")
        return run

    def remove_temporaries(self) -> None:
        """What a killed trainer left half-written (never anything another command writes)."""
        for p in self.path.iterdir():
            if p.name.startswith(tuple(f".{n}" for n in OWN_FILES)) and p.name.endswith(".tmp"):
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # --- config and tokenizer
    def save_config(self, cfg: RunConfig) -> None:
        atomic.write_text(self.config_path, cfg.to_yaml())

    def config(self) -> RunConfig:
        return read_config(self.config_path)

    def save_tokenizer(self, tokenizer: Tokenizer, cfg: RunConfig) -> None:
        length = cfg.model.context_length
        atomic.replace_files(self.path, lambda tmp: tokenizer.save(tmp, model_max_length=length))

    def tokenizer(self, cfg: RunConfig | None = None) -> Tokenizer:
        return read_tokenizer(self.path, (cfg or self.config()).tokenizer.kind)

    # --- weights: each model saves itself in the Hugging Face layout (models/__init__.py)
    def save_weights(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        model.save(self.path, tokenizer)

    def load_model(self, cfg: RunConfig | None = None, tokenizer: Tokenizer | None = None):
        """The best weights, ready for evaluation (eval mode, CPU)."""
        cfg = cfg or self.config()
        return load_model(self.path, cfg.model, tokenizer or self.tokenizer(cfg))

    # --- checkpoints for --resume
    def save_checkpoint(self, model, optimizer, meta: dict, rng=None) -> None:
        checkpoints.save(self.checkpoint_path, model, optimizer, meta, rng)

    def load_checkpoint(self, model, optimizer):
        """Restore model and optimizer in place; return (meta, {rank: RNG states}). A damaged
        checkpoint is refused before anything is written (checkpoints.load)."""
        meta = checkpoints.load(self.checkpoint_path, model, optimizer)
        say_if_damaged(self.weights_path)
        return meta

    # --- the data split
    def save_split(self, name: str, items: list[str]) -> None:
        atomic.write_text(self.split_dir / f"{name}.txt", "".join(f"{x}\n" for x in items))

    def read_split(self, name: str) -> list[str]:
        path = self.split_dir / f"{name}.txt"
        if not path.is_file():
            raise UserError(f"{self.path} has no {name} split (split/{name}.txt is missing).")
        try:
            return path.read_text(encoding="utf-8").split("\n")[:-1]
        except UnicodeDecodeError:
            raise damaged(self.path, f"split/{name}.txt", "not UTF-8 text") from None

    # --- metrics
    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        return read_log(self.metrics_path) if self.metrics_path.is_file() else []

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop what was logged after the checkpoint: it is about to be redone."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics() if r.get("step", 0) <= after_step]
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_json(self, name: str, data) -> Path:
        path = self.path / name
        atomic.write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    def read_json(self, name: str):
        """The file's JSON, or None if there is no such file; a damaged one is refused."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_bytes())
        except UnicodeDecodeError:
            raise damaged(self.path, name, "not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise damaged(self.path, name, f"not JSON: {e.msg} at line {e.lineno}") from None


def damaged(run: Path, name: str, why: str) -> UserError:
    """A file of the run that a command needs and cannot read: which, why, what to do."""
    return UserError(f"{run / name} is damaged ({why}); {REMEDY.get(name, RESTORE)}.")


def read_config(path: Path) -> RunConfig:
    try:
        return RunConfig.load(path)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise damaged(path.parent, path.name, "not UTF-8 text") from None
    except (AttributeError, TypeError):  # YAML, but a list or a word, not settings
        raise damaged(path.parent, path.name, "not a mapping of settings") from None
    except Exception as e:
        raise damaged(path.parent, path.name, _first_line(e)) from None


def read_tokenizer(run: Path, kind: str) -> Tokenizer:
    if not (run / "tokenizer.json").is_file():
        raise UserError(f"{run} has no tokenizer.json; {RESTORE}.")
    try:
        return Tokenizer.load(run, kind)
    except UserError as e:
        raise damaged(run, "tokenizer.json", _first_line(e.__context__ or e)) from None


def say_if_damaged(weights: Path) -> None:
    """Damaged best weights beside a whole checkpoint: training goes on (the next better
    validation replaces them), and says so."""
    if weights.is_file() and (why := checkpoints.unreadable(weights)):
        warn(
            f"{weights} is damaged ({why}); training goes on from the checkpoint and writes it "
            "again at the next validation better than the best so far."
        )


def read_log(path: Path) -> list[dict]:
    """A metrics log's records. A last line cut by a crash is skipped (`--resume` rewrites the
    log); other lines that are not JSON records are skipped with one warning a process."""
    out, bad = [], []
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif line.strip() and n < len(lines) - 1:  # not the last line (nor the empty one)
            bad.append(n)
    if bad and path not in _WARNED:
        _WARNED.add(path)
        warn(
            f"skipped {len(bad):,} of {len(out) + len(bad):,} lines of {path} that are not JSON "
            f"records (first: line {bad[0]})"
        )
    return out


def _remove_abandoned_stages(out: Path) -> None:
    """Staging folders of `out` whose creator is gone (killed while creating the run)."""
    for p in out.parent.glob(f".{out.name}.creating-*"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.creating-(\d+)-.*", p.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
