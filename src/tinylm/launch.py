"""From `tinylm train`'s arguments to a run's config and its directory.

A new run: the preset (or YAML file), the overrides, `--data`, `--seed` and the budget, or for
`--init-from RUN` that run's config with new data. A resumed run (`--resume`) continues exactly
as it started: its saved config is the config, and only `--time` / `--max-steps` may be given,
as its new total budget (the way to extend a run). A preset, override, `--data`, `--seed` or
`--init-from` given with `--resume` must agree with the saved run, or is refused in one sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

from tinylm.config import RunConfig, apply_overrides, load_preset, parse_duration, preset_text
from tinylm.errors import UserError
from tinylm.runs import Run

BUDGET = ("train.time", "train.max_steps")


def plan(
    preset: str | None,
    overrides: list[str],
    *,
    out: Path | None = None,
    data: str | None = None,
    seed: int | None = None,
    time: str | None = None,
    max_steps: int | None = None,
    init_from: Path | None = None,
    resume: bool = False,
) -> tuple[RunConfig, Path]:
    """The checked config of the run to train and where it goes."""
    if preset and "=" in preset:  # `tinylm train train.lr=1e-3`: an override, no preset
        preset, overrides = None, [preset, *overrides]
    if resume:
        out = Path(out) if out else default_out(preset_text(preset or "words")[1], resume=True)
        cfg = resumed_config(Run.open(out).config(), out, preset, overrides, data, seed, init_from)  # fmt: skip
    elif init_from:
        cfg = init_config(Path(init_from), preset, overrides, data)
    else:
        cfg = apply_overrides(load_preset(preset or "words"), overrides)
    if data and not resume:
        cfg.data.source = data
    if seed is not None and not resume:
        cfg.train.seed = seed
    if time is not None or max_steps is not None:  # an explicit budget replaces the other
        cfg.train.time = parse_duration(time) if time is not None else None
        cfg.train.max_steps = max_steps
    cfg.check()
    return cfg, Path(out) if out else default_out(cfg.preset, resume=False)


def init_config(source: Path, preset, overrides, data) -> RunConfig:
    """Domain adaptation: the source run's config (model and tokenizer fixed), new data."""
    if preset:
        raise UserError("Give either a preset or --init-from RUN, not both.")
    if not data:
        raise UserError("--init-from RUN needs --data: the text to continue training on.")
    fixed = [o for o in overrides if o.startswith(("model.", "tokenizer."))]
    if fixed:
        raise UserError(f"{fixed[0]}: the model and tokenizer of {source} cannot change.")
    cfg = apply_overrides(Run.open(source).config(), overrides)
    cfg.preset = f"{cfg.preset.removesuffix('-adapted')}-adapted"
    cfg.init_from = str(source)
    return cfg


def resumed_config(saved: RunConfig, out: Path, preset, overrides, data, seed, init_from):
    """The saved config, once every argument given with --resume is found to agree with it."""
    if preset and preset_text(preset)[1] != saved.preset:
        raise UserError(f"{out} was trained from preset {saved.preset}, not {preset_text(preset)[1]}; --resume continues a run as it started, so leave the preset out.")  # fmt: skip
    given = apply_overrides(saved, overrides)
    if data is not None and not same_path(data, saved.data.source):
        given.data.source = data
    if seed is not None:
        given.train.seed = seed
    if init_from is not None and not same_path(init_from, saved.init_from):
        given.init_from = str(init_from)
    return keep_all_but_budget(saved, given, out, budget_too=True)


def keep_all_but_budget(saved: RunConfig, given: RunConfig, out, budget_too=False) -> RunConfig:
    """`saved` with `given`'s budget, when `given` differs from it nowhere else."""
    changed = [n for n in saved.differences(given) if budget_too or n not in BUDGET]
    if changed:
        name = changed[0]
        flag = {"data.source": "--data", "train.seed": "--seed", "init_from": "--init-from"}.get(name, name)  # fmt: skip
        raise UserError(f"{flag} is {saved.value(name)!r} in {out}, not {given.value(name)!r}; --resume continues a run exactly as it started, so only --time or --max-steps (a new total budget) may be given.")  # fmt: skip
    cfg = RunConfig.from_dict(saved.to_dict())
    cfg.train.time, cfg.train.max_steps = given.train.time, given.train.max_steps
    return cfg


def same_path(a, b) -> bool:
    if a is None or b is None:
        return a == b
    return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()


def default_out(preset: str, resume: bool) -> Path:
    """runs/PRESET, or runs/PRESET-2, -3 ... when taken; with --resume the newest of those
    (runs/PRESET-N with N a number only: runs/words-seq2seq is not a run of preset words)."""
    base = Path("runs") / preset
    numbered = re.compile(rf"{re.escape(preset)}-\d+")
    taken = [base] + sorted(p for p in base.parent.glob(f"{preset}-*") if numbered.fullmatch(p.name))  # fmt: skip
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
