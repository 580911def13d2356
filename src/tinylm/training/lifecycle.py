"""A run's lifecycle: from what the user asked for to a checked plan (`plan`), then a new run
directory (`create`) or the one to resume (`reopen`), with the data it trains on.

A new run: the preset (a name, a YAML file or a RunConfig), the overrides, `data`, `seed` and
the budget; or for `init_from=RUN` that run's config with new data (domain adaptation). A
resumed run continues exactly as it started: its saved config is the config, and only the
budget (`time` / `max_steps`) may be given, as its new total (the way to extend a run). A
preset, override, `data`, `seed` or `init_from` given with `resume` must agree with the saved
run, or is refused in one sentence.

`plan()` is the one place a configuration is resolved and checked, and the batch split over
the ranks computed; everything downstream trusts the Plan.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tinylm import checkpoints
from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.models import MODELS, build_model
from tinylm.preset import parse_duration, preset_dict, preset_text, with_overrides
from tinylm.runs import RunDir
from tinylm.tasks import data_for
from tinylm.tokenizer import Tokenizer
from tinylm.training.loop import TrainState
from tinylm.training.trackers import check_installed

BUDGET = ("train.time", "train.max_steps")  # what a resumed run may change
FLAGS = {"data.source": "--data", "train.seed": "--seed", "init_from": "--init-from"}


@dataclass
class Plan:
    """What to train, checked: the resolved config, where the run goes, and the batch split."""

    cfg: RunConfig
    out: Path
    resume: bool = False
    world_size: int = 1
    per_rank_tokens: int = 0  # of train.batch_tokens, per rank
    micro_tokens: int = 0  # tokens per forward/backward pass


def plan(
    preset: str | RunConfig | None = None,
    overrides: list[str] | dict | None = None,
    *,
    out: Path | str | None = None,
    data: str | None = None,
    seed: int | None = None,
    time: str | float | None = None,
    max_steps: int | None = None,
    init_from: Path | str | None = None,
    resume: bool = False,
    world_size: int = 1,
    device: str = "auto",
) -> Plan:
    """The checked plan of the run to train (see the module docstring)."""
    overrides = overrides_list(overrides)
    if isinstance(preset, str) and "=" in preset:  # `tinylm train train.lr=1e-3`: no preset
        preset, overrides = None, [preset, *overrides]
    if resume:
        out = Path(out) if out else default_out(preset_name(preset), resume=True)
        d = resumed(RunDir.open(out).config(), out, preset, overrides, data, seed, init_from)
    elif init_from:
        d = adapted(Path(init_from), preset, overrides, data)
    else:
        base = (
            preset.to_dict()
            if isinstance(preset, RunConfig)
            else preset_dict(preset or "words", device)
        )
        d = with_overrides(base, overrides)
    if data and not resume:
        d.setdefault("data", {})["source"] = str(data)
    if seed is not None and not resume:
        d.setdefault("train", {})["seed"] = seed
    if time is not None or max_steps is not None:  # an explicit budget replaces the other
        d.setdefault("train", {})["time"] = parse_duration(time) if time is not None else None
        d["train"]["max_steps"] = max_steps
    cfg = RunConfig.from_dict(d)  # the one check
    check_installed(cfg.train.report_to)
    out = Path(out) if out else default_out(cfg.preset, resume=False)
    return Plan(cfg, out, resume, world_size, *data_for(cfg).batch_split(cfg, world_size))


def overrides_list(overrides: list[str] | dict | None) -> list[str]:
    """`["train.lr=1e-3"]`, or from Python `{"train.lr": 1e-3}`."""
    if isinstance(overrides, dict):
        return [f"{k}={v}" for k, v in overrides.items()]
    return list(overrides or [])


def adapted(source: Path, preset, overrides: list[str], data) -> dict:
    """Domain adaptation: the source run's config (model and tokenizer fixed), new data."""
    if preset:
        raise UserError("Give either a preset or --init-from RUN, not both.")
    if not data:
        raise UserError("--init-from RUN needs --data: the text to continue training on.")
    fixed = [o for o in overrides if o.startswith(("model.", "tokenizer."))]
    if fixed:
        raise UserError(f"{fixed[0]}: the model and tokenizer of {source} cannot change.")
    d = with_overrides(RunDir.open(source).config().to_dict(), overrides)
    d["preset"] = f"{d['preset'].removesuffix('-adapted')}-adapted"
    d["init_from"] = str(source)
    return d


def preset_name(preset: str | RunConfig | None) -> str:
    if isinstance(preset, RunConfig):
        return preset.preset
    return preset_text(preset or "words")[1]


def resumed(saved: RunConfig, out: Path, preset, overrides, data, seed, init_from) -> dict:
    """The saved config, once every argument given with --resume is found to agree with it.
    A RunConfig given from Python must agree everywhere but in its budget, which it sets."""
    if isinstance(preset, RunConfig):
        refuse_changes(saved, preset, out, ignore=BUDGET)
        d = saved.to_dict()
        d["train"]["time"], d["train"]["max_steps"] = preset.train.time, preset.train.max_steps
        return d
    if preset and preset_name(preset) != saved.preset:
        raise UserError(
            f"{out} was trained from preset {saved.preset}, not {preset_name(preset)}; "
            "--resume continues a run as it started, so leave the preset out."
        )
    given = RunConfig.parse(with_overrides(saved.to_dict(), overrides))
    if data is not None and not same_path(data, saved.data.source):
        given.data.source = str(data)
    if seed is not None:
        given.train.seed = seed
    if init_from is not None and not same_path(init_from, saved.init_from):
        given.init_from = str(init_from)
    refuse_changes(saved, given, out)
    return saved.to_dict()


def refuse_changes(saved: RunConfig, given: RunConfig, out: Path, ignore=()) -> None:
    changed = [n for n in saved.differences(given) if n not in ignore]
    if changed:
        name = changed[0]
        raise UserError(
            f"{FLAGS.get(name, name)} is {saved.value(name)!r} in {out}, not "
            f"{given.value(name)!r}; --resume continues a run exactly as it started, so only "
            "--time or --max-steps (a new total budget) may be given."
        )


def same_path(a, b) -> bool:
    if a is None or b is None:
        return a == b
    return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()


def default_out(preset: str, resume: bool) -> Path:
    """runs/PRESET, or runs/PRESET-2, -3 ... when taken; with --resume the newest of those
    (runs/PRESET-N with N a number only: runs/words-seq2seq is not a run of preset words)."""
    base = Path("runs") / preset
    numbered = re.compile(rf"{re.escape(preset)}-\d+")
    taken = [base] + sorted(
        p for p in base.parent.glob(f"{preset}-*") if numbered.fullmatch(p.name)
    )
    taken = [p for p in taken if (p / "tinylm.yaml").is_file()]
    if resume:
        if not taken:
            raise UserError(f"No run of preset '{preset}' under runs/ to resume; pass --out RUN.")
        return max(taken, key=lambda p: p.stat().st_mtime)
    n = 1
    while (p := base if n == 1 else base.with_name(f"{preset}-{n}")).exists():
        n += 1
    return p


def check_out(out: Path) -> None:
    """A new run goes to a path that is free, or an empty folder."""
    if (out / "tinylm.yaml").is_file():
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it or another --out."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose another --out.")


# --- the run directory and its data -----------------------------------------------------------


@dataclass
class RunData:
    """What the loop trains and validates on."""

    tokenizer: Tokenizer
    train: object  # batches: `.batch(step, rank, world_size)`
    val: object  # `.eval_batches()`
    unit: str  # what a target is: "chars" or "tokens"
    micro_tokens: int  # tokens per forward/backward pass
    preparation: dict | None = None  # text: the token cache's record (sizes, seconds, MB/s)

    def describe(self) -> str:
        p = self.preparation
        if not p:
            return ""
        if p["cached"]:
            return f"token cache reused ({sum(p['tokens'].values()):,} tokens)"
        trained = p.get("tokenizer_seconds")
        return (
            (f"tokenizer trained in {trained:.1f} s; " if trained else "")
            + f"prepared {p['bytes'] / 1e6:.1f} MB into {sum(p['tokens'].values()):,} tokens "
            f"in {p['seconds']:.1f} s ({p['mb_per_s']:.1f} MB/s)"
        )


def run_data(p: Plan, data, tokenizer: Tokenizer, seconds: float = 0.0) -> RunData:
    cfg = p.cfg
    word_batches = MODELS[cfg.model.arch].word_batches
    train, val, prep = data.batches(cfg, tokenizer, word_batches, p.per_rank_tokens, p.micro_tokens)
    if prep is not None:
        prep["tokenizer_seconds"] = round(seconds, 3)
    return RunData(tokenizer, train, val, data.unit, p.micro_tokens, prep)


def create(p: Plan) -> tuple[RunDir, RunData]:
    """A new run: the data and tokenizer first, then the directory, committed whole with a
    step-0 checkpoint (its weights depend on the seed only), or not at all."""
    cfg = p.cfg
    check_out(p.out)
    source = tokenizer = None
    if cfg.init_from is not None:  # domain adaptation: the source's tokenizer and weights
        source_run = RunDir.open(Path(cfg.init_from))
        source_cfg = source_run.config()
        if (source_cfg.model, source_cfg.tokenizer) != (cfg.model, cfg.tokenizer):
            raise UserError(
                f"--init-from {cfg.init_from}: its model and tokenizer settings must be kept."
            )
        tokenizer = source_run.tokenizer(source_cfg)
        source = source_run.load_model(source_cfg, tokenizer)
    data = data_for(cfg).new(cfg)
    seconds = 0.0
    if tokenizer is None:
        tokenizer, seconds = data.build_tokenizer(cfg)
    prepared = run_data(p, data, tokenizer, seconds)
    staged = RunDir.stage(p.out)
    try:
        staged.save_config(cfg)
        staged.save_tokenizer(tokenizer, cfg)
        data.save(staged)
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, tokenizer)
        if source is not None:
            model.load_state_dict(source.state_dict())
        staged.save_checkpoint(model, None, {"state": asdict(TrainState())})
        return staged.commit(), prepared
    except BaseException:
        staged.discard()
        raise


def reopen(p: Plan) -> tuple[RunDir, RunData]:
    """The run in `p.out`, to resume with the planned config (its budget may be new)."""
    run = RunDir.open(p.out)
    if not run.checkpoint_path.is_file():
        raise UserError(f"{p.out} has no checkpoint to resume from.")
    if why := checkpoints.unreadable(run.checkpoint_path):
        raise UserError(f"The checkpoint {run.checkpoint_path} is unreadable ({why}).")
    run.remove_temporaries()
    data = reload(run, p)
    run.save_config(p.cfg)  # the budget may be new; nothing is written before the checks
    return run, data


def reload(run: RunDir, p: Plan) -> RunData:
    """The data of an existing run (a resumed run, or another rank of a distributed one)."""
    data = data_for(p.cfg).reload(run, p.cfg)
    return run_data(p, data, run.tokenizer(p.cfg))


# What the other ranks read of the run directory. Rank 0 sends it to them, so that only its
# machine holds the run directory (several machines: docs/training.md).
RANK_FILES = ("tinylm.yaml", "tokenizer*.json", "checkpoint.safetensors", "split/*")


def files_for_ranks(run: RunDir) -> dict[str, bytes]:
    paths = sorted({p for pattern in RANK_FILES for p in run.path.glob(pattern) if p.is_file()})
    return {str(p.relative_to(run.path)): p.read_bytes() for p in paths}


def rank_copy(files: dict[str, bytes]) -> RunDir:
    """Another rank's view of the run: a private copy of what rank 0 sent, read only."""
    folder = Path(tempfile.mkdtemp(prefix="tinylm-rank-"))
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return RunDir(folder)
