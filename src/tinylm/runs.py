"""The run directory: the unit a user keeps and shares.

    RUN/
      tinylm.yaml            resolved configuration
      tokenizer.json         tokenizer (Hugging Face format) + tokenizer_config.json
      config.json            model config (Hugging Face format)
      model.safetensors      best weights so far (Hugging Face layout)
      checkpoint.safetensors last training state for --resume (weights, optimizer, RNG, step)
      metrics.jsonl          one JSON object per logged step / validation
      loss.png               training and validation loss
      split/                 the data split (word lists, or a record of the document split)
      eval.json, samples.txt written by `tinylm eval`

Every file is written atomically (temporary file, fsync, rename): a crash mid-save leaves the
previous version in place. Nothing here is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.models import Seq2Seq, build_model
from tinylm.models.decoder import hf_config
from tinylm.tokenizer import Tokenizer


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then swap it in with one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def state_tensors(model: torch.nn.Module) -> tuple[dict, dict]:
    """The state dict with shared tensors stored once; returns (tensors, aliases)."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous()
    return tensors, aliases


class Run:
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
    def create(cls, path: Path, cfg: RunConfig, tokenizer: Tokenizer) -> Run:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.split_dir.mkdir(exist_ok=True)
        run.save_config(cfg)
        tokenizer.save(run.path, model_max_length=cfg.model.context_length)
        return run

    @classmethod
    def open(cls, path: Path) -> Run:
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"Run directory {run.path} does not exist.")
        if not run.config_path.is_file():
            raise UserError(f"{run.path} is not a tinylm run directory (it has no tinylm.yaml).")
        return run

    # --- config and tokenizer
    def save_config(self, cfg: RunConfig) -> None:
        write_text(self.config_path, cfg.to_yaml())

    def config(self) -> RunConfig:
        try:
            return RunConfig.load(self.config_path)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{self.config_path} is unreadable ({e}).") from None

    def tokenizer(self, cfg: RunConfig | None = None) -> Tokenizer:
        cfg = cfg or self.config()
        return Tokenizer.load(self.path, cfg.tokenizer.kind)

    # --- weights
    def save_weights(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        """The model in the Hugging Face layout: config.json + model.safetensors."""
        if isinstance(model, Seq2Seq):
            with tempfile.TemporaryDirectory(dir=self.path, prefix=".save-") as tmp:
                model.hf.save_pretrained(tmp)
                for name in os.listdir(tmp):  # each rename is atomic
                    os.replace(Path(tmp) / name, self.path / name)
            return
        tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        atomic_write(self.weights_path, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
        tok = tokenizer
        config = hf_config(model.cfg, model.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
        write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def load_model(self, cfg: RunConfig | None = None, tokenizer: Tokenizer | None = None):
        """The best weights, ready for evaluation (eval mode, CPU)."""
        cfg = cfg or self.config()
        tokenizer = tokenizer or self.tokenizer(cfg)
        if not self.weights_path.is_file():
            raise UserError(f"{self.path} has no trained weights yet (no model.safetensors).")
        try:
            if cfg.model.arch == "seq2seq":
                model = Seq2Seq.from_folder(self.path)
            else:
                model = build_model(cfg.model, tokenizer)
                result = model.load_state_dict(load_file(self.weights_path), strict=False)
                missing = set(result.missing_keys) - {"lm_head.weight"}  # tied to the embedding
                if missing or result.unexpected_keys:
                    bad = sorted(missing) + sorted(result.unexpected_keys)
                    raise ValueError(f"names not matching the model: {', '.join(bad[:3])}")
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise UserError(
                f"The weights in {self.path} are unreadable ({_first_line(e)})."
            ) from None
        return model.eval()

    # --- checkpoints for --resume
    def save_checkpoint(self, model, optimizer, meta: dict) -> None:
        tensors, aliases = state_tensors(model)
        tensors = {f"model.{k}": v for k, v in tensors.items()}
        opt = optimizer.state_dict()
        for pid, state in opt["state"].items():
            for k, v in state.items():
                t = v if torch.is_tensor(v) else torch.tensor(v)
                tensors[f"optim.{pid}.{k}"] = t.detach().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        header = {
            "meta": meta,
            "aliases": aliases,
            "param_groups": opt["param_groups"],
        }
        metadata = {"tinylm": json.dumps(header)}
        atomic_write(self.checkpoint_path, lambda tmp: save_file(tensors, tmp, metadata))

    def load_checkpoint(self, model, optimizer) -> dict:
        """Restore model, optimizer and RNG in place; return the saved meta."""
        path = self.checkpoint_path
        if not path.is_file():
            raise UserError(f"{self.path} has no checkpoint to resume from.")
        try:
            tensors = load_file(path)
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                header = json.loads(f.metadata()["tinylm"])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
            raise UserError(f"The checkpoint {path} is unreadable ({_first_line(e)}).") from None
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        for name, target in header["aliases"].items():
            state[name] = state[target]
        model.load_state_dict(state)
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": header["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        return header["meta"]

    # --- the data split
    def save_split(self, name: str, items: list[str]) -> None:
        write_text(self.split_dir / f"{name}.txt", "".join(f"{x}\n" for x in items))

    def read_split(self, name: str) -> list[str]:
        path = self.split_dir / f"{name}.txt"
        if not path.is_file():
            raise UserError(f"{self.path} has no {name} split (split/{name}.txt is missing).")
        return path.read_text().splitlines()

    # --- metrics
    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop what was logged after the checkpoint: it is about to be redone."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= after_step]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_json(self, name: str, data) -> Path:
        path = self.path / name
        write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    def read_json(self, name: str):
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
