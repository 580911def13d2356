"""Where a configuration comes from: the presets (presets/*.yaml, each listing only what
differs from the defaults in config.py), a user's YAML file, `section.field=value` overrides,
and durations such as `5m`."""

from __future__ import annotations

import re
from dataclasses import fields
from importlib import resources
from pathlib import Path

import yaml

from tinylm.config import SECTIONS, RunConfig
from tinylm.device import autocast_dtype, pick_device
from tinylm.errors import UserError


def preset_names() -> list[str]:
    folder = resources.files("tinylm") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name_or_path: str) -> tuple[str, str]:
    """(YAML text, preset name) of a preset by name (presets/NAME.yaml) or a user's YAML file."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist.")
        return path.read_text(), path.stem
    if name_or_path not in preset_names():
        raise UserError(
            f"Unknown preset '{name_or_path}'; choose one of: {', '.join(preset_names())}."
        )
    return (
        resources.files("tinylm") / "presets" / f"{name_or_path}.yaml"
    ).read_text(), name_or_path


def preset_dict(name_or_path: str, device: str = "auto") -> dict:
    """A preset (by name, or a user's YAML file) as the dict it holds, its name as `preset`.

    A preset's `without_bf16:` section (settings in the sections' layout) applies where the run
    will compute in fp32, on a CPU or GPU without native bf16: what is fastest to learn differs
    there (a large output layer costs an fp32 step far more). It follows the preset's own
    precision (auto) on `device`; an override of train.precision does not bring it in."""
    text, name = preset_text(name_or_path)
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{name_or_path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(d, dict):
        raise UserError(
            f"{name_or_path} must hold a mapping of sections (data:, model:, train: ...)."
        )
    d.setdefault("preset", name)
    machine = d.pop("without_bf16", None)
    precision = (d.get("train") or {}).get("precision", "auto")
    if isinstance(machine, dict) and autocast_dtype(precision, pick_device(device)) is None:
        for section, values in machine.items():
            d[section] = {**(d.get(section) or {}), **values}
    return d


def load_preset(name_or_path: str) -> RunConfig:
    return RunConfig.from_dict(preset_dict(name_or_path))


def with_overrides(d: dict, overrides: list[str]) -> dict:
    """`d` with `section.field=value` strings applied; each value is parsed as YAML (so 3e-3,
    true, null) and each name checked. The types and rules are checked where the dict becomes
    a config (RunConfig.from_dict)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for item in overrides:
        m = re.fullmatch(r"([a-z_]+)\.([a-z_0-9]+)=(.*)", item)
        if not m:
            raise UserError(f"Cannot read override '{item}'; write it as section.field=value.")
        section, key, raw = m.groups()
        if section not in SECTIONS:
            raise UserError(
                f"Unknown section '{section}' in '{item}'; known: {', '.join(SECTIONS)}."
            )
        known = [f.name for f in fields(SECTIONS[section])]
        if key not in known:
            raise UserError(f"Unknown setting '{section}.{key}'; {section} has {', '.join(known)}.")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # the type check names the field and what it takes
        d.setdefault(section, {})[key] = value
    return d


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A new config: `cfg` with `section.field=value` strings applied (see with_overrides)."""
    return RunConfig.from_dict(with_overrides(cfg.to_dict(), overrides))


def parse_duration(text: str) -> float:
    """'300', '300s', '5m', '1.5h', '1h30m' -> seconds."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", t)
    if not t or not m or not any(m.groups()):
        raise UserError(f"Cannot read the duration '{text}'; write seconds or e.g. 90s, 5m, 1h.")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise UserError(f"The duration '{text}' must be more than zero.")
    return seconds
