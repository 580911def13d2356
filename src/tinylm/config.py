"""Typed run configuration. Presets are small YAML files under presets/ that set some fields.

A run's resolved configuration is saved as `tinylm.yaml` in its run directory, so every later
command (eval, complete, generate, serve) knows exactly what was trained.
"""

from __future__ import annotations

import re
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from tinylm.errors import UserError


@dataclass
class DataConfig:
    source: str = "words"  # "words" (NLTK / web2), a file, a folder, a glob, or hf:NAME
    kind: str = "words"  # "words": one word a line; "text": documents
    min_len: int = 3  # words: shortest word kept
    max_len: int = 15  # words: longest word kept
    val_fraction: float = 0.02  # share held out for validation (early stopping)
    test_fraction: float = 0.05  # share held out for `tinylm eval`
    hf_split: str = "train"  # hf: which split of the dataset
    text_field: str = "text"  # jsonl / parquet / hf: which field holds the document


@dataclass
class TokenizerConfig:
    kind: str = "char"  # char | word | bpe
    vocab_size: int = 0  # word / bpe: entries including special tokens; char: from the data


@dataclass
class ModelConfig:
    arch: str = "decoder"  # decoder (rotary, RMSNorm, SwiGLU, tied) | seq2seq (HF BERT2BERT)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    context_length: int = 16  # words: set from max_len
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    causal: bool = True  # False: every token also sees those after it (the text notebook's bug)


@dataclass
class TrainConfig:
    time: float | None = 300.0  # seconds of training (evaluation excluded); None: no limit
    max_steps: int | None = None  # optimizer steps; None: no limit
    batch_tokens: int = 4096  # target tokens per optimizer step
    lr: float = 3e-3
    min_lr_ratio: float = 0.0  # final learning rate as a share of lr
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | wsd | constant
    cooldown: float = 0.2  # wsd: share of the budget spent decaying to zero
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250  # steps between validations (and checkpoints)
    eval_max_tokens: int = 100_000  # cap on validation tokens per evaluation
    patience: int = 8  # validations without improvement before stopping early
    seed: int = 1337
    precision: str = "auto"  # auto | fp32 | bf16 (auto: bf16 where the hardware has it)
    compile: bool = False  # torch.compile the model
    log_every: int = 25  # steps between training-loss lines in metrics.jsonl


@dataclass
class RunConfig:
    preset: str = "words"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    demo: list[str] = field(default_factory=list)  # prefixes / prompts shown after training

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        cfg = _build(cls, d, "")
        for name, value, allowed in (
            ("data.kind", cfg.data.kind, ("words", "text")),
            ("tokenizer.kind", cfg.tokenizer.kind, ("char", "word", "bpe")),
            ("model.arch", cfg.model.arch, ("decoder", "seq2seq")),
            ("train.schedule", cfg.train.schedule, ("cosine", "linear", "wsd", "constant")),
            ("train.precision", cfg.train.precision, ("auto", "fp32", "bf16")),
        ):
            if value not in allowed:
                raise UserError(f"{name} is '{value}'; choose one of {', '.join(allowed)}.")
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})


def _build(cls, d: dict, prefix: str):
    """Build a (nested) dataclass from a dict, refusing unknown keys with their full name."""
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise UserError(f"Unknown setting '{prefix}{key}'; known: {', '.join(known)}.")
        sub = _SECTIONS.get(key) if cls is RunConfig else None
        if sub is not None:
            if not isinstance(value, dict):
                raise UserError(f"Setting '{prefix}{key}' must be a mapping of its fields.")
            kwargs[key] = _build(sub, value, f"{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value, hint, name: str):
    """Check a value against its field's type; accept '3e-4' (a YAML string) for a float."""
    kinds = {t for t in (int, float, bool, str, list) if t.__name__ in str(hint)}
    if value is None and "None" in str(hint):
        return None
    if float in kinds and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) and bool not in kinds:
        kinds = set()
    if not any(isinstance(value, k) for k in kinds):
        want = " or ".join(sorted(k.__name__ for k in kinds)) or str(hint)
        raise UserError(f"Setting '{name}' must be {want}, not {value!r}.")
    return value


_SECTIONS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


def preset_names() -> list[str]:
    folder = resources.files("tinylm") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> RunConfig:
    """A preset by name (presets/NAME.yaml) or a YAML file of the user's."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist.")
        text, name = path.read_text(), path.stem
    else:
        if name_or_path not in preset_names():
            raise UserError(
                f"Unknown preset '{name_or_path}'; choose one of: {', '.join(preset_names())}."
            )
        text = (resources.files("tinylm") / "presets" / f"{name_or_path}.yaml").read_text()
        name = name_or_path
    d = yaml.safe_load(text) or {}
    d.setdefault("preset", name)
    return RunConfig.from_dict(d)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings; the value is parsed as YAML (so 3e-3, true, null)."""
    d = cfg.to_dict()
    for item in overrides:
        m = re.fullmatch(r"([a-z_]+)\.([a-z_0-9]+)=(.*)", item)
        if not m:
            raise UserError(f"Cannot read override '{item}'; write it as section.field=value.")
        section, key, raw = m.groups()
        if section not in _SECTIONS:
            raise UserError(
                f"Unknown section '{section}' in '{item}'; known: {', '.join(_SECTIONS)}."
            )
        if key not in {f.name for f in fields(_SECTIONS[section])}:
            raise UserError(f"Unknown setting '{section}.{key}'.")
        d[section][key] = yaml.safe_load(raw)
    return RunConfig.from_dict(d)


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
