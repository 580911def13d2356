"""Typed run configuration. Presets are small YAML files under presets/ that set some fields.

Every field says beside it what it allows (`setting(default, at_least=..., choices=...)`), and
each section's `check()` adds the rules that tie fields together (n_heads dividing d_model,
min_len <= max_len). `RunConfig.from_dict` is the one way in, from a preset, a YAML file, the
command line or a saved run, and it checks everything, so a bad value is refused with one
sentence before any work starts. A run's resolved configuration is saved as `tinylm.yaml` in
its run directory, so every later command knows exactly what was trained.

The defaults are the recipe: they are what the default run (`words`, a word completer) trains
with, and every preset lists only what differs from them (presets/*.yaml).
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from tinylm.errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a field allows: a number in a range (each end open or closed) or one of a few
    choices. None passes wherever the field's type allows it."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()

    def allows(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.at_most is not None and value > self.at_most)
            or (self.below is not None and value >= self.below)
        )

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        parts = [
            f"{word} {_num(bound)}"
            for word, bound in (
                ("at least", self.at_least),
                ("more than", self.above),
                ("at most", self.at_most),
                ("below", self.below),
            )
            if bound is not None
        ]
        return " and ".join(parts) or "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def setting(default, *, at_least=None, above=None, at_most=None, below=None, choices=()):
    """A config field with its rule, e.g. `lr: float = setting(3e-3, at_least=0)`. A list
    field's rule holds for each of its items."""
    rule = Rule(at_least, above, at_most, below, tuple(choices))
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _check_fields(section, prefix: str) -> None:
    for f in fields(section):
        rule, value = f.metadata.get("rule"), getattr(section, f.name)
        if value is None or isinstance(value, bool) or rule is None:
            continue
        if isinstance(value, list):
            bad = [item for item in value if not rule.allows(item)]
            if bad:
                raise UserError(f"{prefix}{f.name} has '{bad[0]}'; each must be {rule.describe()}.")
            continue
        if not rule.allows(value):
            shown = f"'{value}'" if isinstance(value, str) else _num(value)
            infinite = isinstance(value, float) and not math.isfinite(value)
            finite = "a finite number, " if infinite else ""
            raise UserError(f"{prefix}{f.name} is {shown}; it must be {finite}{rule.describe()}.")


@dataclass
class DataConfig:
    source: str = "words"  # "words" (NLTK / web2), a file, a folder, a glob, or hf:NAME
    min_len: int = setting(3, at_least=1)  # words: shortest word kept
    max_len: int = setting(15, at_least=1)  # words: longest word kept
    val_fraction: float = setting(0.02, at_least=0, below=1)  # held out for early stopping
    test_fraction: float = setting(0.05, at_least=0, below=1)  # held out for `tinylm eval`
    hf_split: str = "train"  # hf: which split of the dataset
    # hf: which configuration of a dataset that has several (wikitext: wikitext-103-raw-v1);
    # hf:NAME:CONFIG says the same. None: the dataset's only one
    hf_config: str | None = None
    text_field: str = "text"  # jsonl / parquet / hf: which field holds the document

    def check(self) -> None:
        if not self.source.strip():
            raise UserError(
                "data.source is empty; give words, a file, a folder, a glob or hf:NAME."
            )
        if self.min_len > self.max_len:
            raise UserError(
                f"data.min_len is {self.min_len}, more than data.max_len ({self.max_len}); "
                "it must be at most max_len."
            )
        if self.val_fraction + self.test_fraction >= 1:
            total = self.val_fraction + self.test_fraction
            raise UserError(
                f"data.val_fraction + data.test_fraction is {total:g}; together they must be "
                "below 1."
            )


@dataclass
class TokenizerConfig:
    kind: str = setting("char", choices=("char", "word", "bpe"))
    # word / bpe: entries including special tokens (0: 10,000 / 4,096); char: 0, from the data
    vocab_size: int = setting(0, at_least=0)

    def check(self) -> None:
        least = {"char": None, "word": 3, "bpe": 257}[self.kind]
        if self.vocab_size and least is None:
            raise UserError(
                f"tokenizer.vocab_size is {self.vocab_size}; a char tokenizer takes its "
                "vocabulary from the data, so it must be 0."
            )
        if self.vocab_size and self.vocab_size < least:
            why = {"bpe": "its 256 bytes and <|endoftext|>", "word": "<UNK>, <EOS> and a word"}
            raise UserError(
                f"tokenizer.vocab_size is {self.vocab_size}; a {self.kind} tokenizer needs at "
                f"least {least} ({why[self.kind]}), or 0 for the default."
            )


ROTARY = {"decoder": True, "seq2seq": False}  # which architectures have rotary positions


@dataclass
class ModelConfig:
    # decoder (rotary, RMSNorm, SwiGLU) | seq2seq (HF BERT2BERT, the word notebook's model)
    arch: str = setting("decoder", choices=("decoder", "seq2seq"))
    # Models from 366k to 1M parameters land within 0.02 bits of each other in 300 s on 2 CPU
    # cores (benchmark W); this one keeps top-5 suggestions near 15 ms.
    d_model: int = setting(96, at_least=1)
    n_layers: int = setting(3, at_least=1)
    n_heads: int = setting(4, at_least=1)  # must divide d_model (decoder: into even head sizes)
    d_ff: int = setting(288, at_least=1)
    context_length: int = setting(16, at_least=1)  # words: set from data.max_len
    dropout: float = setting(0.0, at_least=0, below=1)
    rope_theta: float = setting(10000.0, above=0)
    norm_eps: float = setting(1e-5, above=0)
    causal: bool = True  # False: every token also sees those after it (the text notebook's bug)
    # decoder: the gated feed-forward's activation, silu (SwiGLU, Llama's) or relu2 (ReLU
    # squared, the nanoGPT speedruns'); Hugging Face's `hidden_act` of the same name
    activation: str = setting("silu", choices=("silu", "relu2"))
    # decoder: RMSNorm on each head's queries and keys before the rotation (the speedruns'
    # QK-norm); saved as Qwen3ForCausalLM, which is Llama with these two norms
    qk_norm: bool = False
    # decoder: the output layer shares the token embedding's matrix (GPT-2's and the small
    # Llamas'); false gives it a matrix of its own (`tie_word_embeddings` in Hugging Face),
    # which paid a little for the word completer (benchmark W)
    tie_embeddings: bool = False
    # seq2seq: the encoder's layers (0: n_layers, as in the notebook, where one BertConfig
    # built both); the decoder has n_layers
    encoder_layers: int = setting(0, at_least=0)

    def check(self) -> None:
        even = ROTARY[self.arch]  # rotary positions rotate pairs of dimensions: even heads
        ok = [
            h
            for h in range(1, self.d_model + 1)
            if self.d_model % h == 0 and not (even and (self.d_model // h) % 2)
        ]
        if self.n_heads not in ok:
            size = "heads of an even size" if even else "equal heads"
            choices = ", ".join(map(str, ok[:12])) or "none (make d_model even)"
            raise UserError(
                f"model.n_heads is {self.n_heads}; it must split model.d_model "
                f"({self.d_model}) into {size}: one of {choices}."
            )


TRACKERS = ("tensorboard", "wandb", "trackio")  # train.report_to's choices


@dataclass
class TrainConfig:
    time: float | None = setting(300.0, above=0)  # seconds (validation excluded); None: no limit
    max_steps: int | None = setting(None, at_least=1)  # optimizer steps; None: no limit
    # tokens per optimizer step, all ranks and micro-batches together (text: a multiple of
    # model.context_length x ranks)
    batch_tokens: int = setting(2048, at_least=1)
    # tokens per forward/backward pass; gradients add up over the passes of a step. 0: the whole
    # per-rank batch in one pass up to 16,384 tokens, else the fewest equal passes under that.
    # Text: a multiple of model.context_length that divides the per-rank batch.
    micro_batch_tokens: int = setting(0, at_least=0)
    lr: float = setting(3e-3, at_least=0)  # peak learning rate (Muon's scaled to AdamW's size)
    min_lr_ratio: float = setting(0.0, at_least=0, at_most=1)  # final lr as a share of lr
    warmup_steps: int = setting(100, at_least=0)
    # wsd: constant, then a linear cooldown over the last `cooldown` share of the budget
    schedule: str = setting("wsd", choices=("cosine", "linear", "wsd", "constant"))
    cooldown: float = setting(0.5, above=0, at_most=1)  # wsd: share of the budget spent decaying
    weight_decay: float = setting(0.1, at_least=0)
    # muon: Muon for the hidden matrices (attention and feed-forward), AdamW for embeddings,
    # norms and the output layer (the nanoGPT speedruns' recipe; it beat AdamW alone on every
    # preset, bench/README.md); adamw: AdamW for every weight
    optimizer: str = setting("muon", choices=("adamw", "muon"))
    beta1: float = setting(0.9, at_least=0, below=1)
    beta2: float = setting(0.99, at_least=0, below=1)
    grad_clip: float = setting(0.0, at_least=0)  # gradient norm clipping; 0: none
    eval_every: int = setting(250, at_least=1)  # steps between validations (and checkpoints)
    eval_max_tokens: int = setting(100_000, at_least=1)  # validation tokens per evaluation
    patience: int = setting(8, at_least=1)  # validations without improvement, then stop
    seed: int = setting(1337, at_least=0)
    precision: str = setting("auto", choices=("auto", "fp32", "bf16"))  # auto: bf16 where native
    # torch.compile the model: batches of one shape compile once (~30 s on 2 CPU cores), then
    # train 15-40 % more tokens in the same time (bench/README.md)
    compile: bool = True
    log_every: int = setting(25, at_least=1)  # steps between training-loss lines in metrics.jsonl
    # where the figures of metrics.jsonl also go, from rank 0 (training/trackers.py): any of
    # TRACKERS, a list or one comma-separated string (train.report_to=tensorboard,wandb); each
    # an optional extra (pip install 'tinylm[wandb]'). None by default.
    report_to: list[str] = setting([], choices=TRACKERS)


# What each task reads, and the architectures and tokenizers that serve it.
TASKS = {"words": "a word completer", "text": "a text generator"}
TASK_ARCHS = {"words": ("decoder", "seq2seq"), "text": ("decoder",)}
TASK_TOKENIZERS = {"words": ("char",), "text": ("word", "bpe")}


@dataclass
class RunConfig:
    preset: str = "words"
    # words: complete words (a list of words, one a line); text: generate text (documents)
    task: str = setting("words", choices=tuple(TASKS))
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    demo: list[str] = field(default_factory=list)  # prefixes / prompts shown after training
    init_from: str | None = None  # the run whose weights this one started from (--init-from)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """The one way in: build and check (see `check`)."""
        cfg = cls.parse(d)
        cfg.check()
        return cfg

    @classmethod
    def parse(cls, d: dict) -> RunConfig:
        """Build from a dict with each value's type checked, without the rules (`check`)."""
        return _build(cls, d, "")

    def check(self) -> None:
        """Every field's rule, each section's own rules, then those across sections (and what
        follows from them: a word model's context is its longest word plus one). The batch's
        division over ranks is checked when a run is planned (data/splits.py)."""
        _check_fields(self, "")
        for name, section in self.sections().items():
            _check_fields(section, f"{name}.")
            if hasattr(section, "check"):
                section.check()
        if self.model.arch not in TASK_ARCHS[self.task]:
            raise UserError(
                f"model.arch is {self.model.arch}, which does not serve task {self.task} "
                f"({TASKS[self.task]}); choose {' or '.join(TASK_ARCHS[self.task])}."
            )
        if self.tokenizer.kind not in TASK_TOKENIZERS[self.task]:
            raise UserError(
                f"tokenizer.kind is {self.tokenizer.kind}; task {self.task} needs "
                f"{' or '.join(TASK_TOKENIZERS[self.task])}."
            )
        if self.task == "words":
            self.model.context_length = self.data.max_len + 1  # <sos> word, or word <eos>

    def sections(self) -> dict:
        return {name: getattr(self, name) for name in SECTIONS}

    def differences(self, other: RunConfig) -> list[str]:
        """The dotted names of the fields where `other` differs from this config."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in a:
            if isinstance(a[key], dict):
                out += [f"{key}.{k}" for k in a[key] if a[key][k] != b[key][k]]
            elif a[key] != b[key]:
                out.append(key)
        return out

    def value(self, dotted: str):
        section, _, name = dotted.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        d = yaml.safe_load(path.read_text()) or {}
        if isinstance(d, dict) and isinstance(d.get("data"), dict) and "kind" in d["data"]:
            d["task"] = d["data"].pop("kind")  # run directories of tinylm 0.1 said data.kind
        return cls.from_dict(d)


def _build(cls, d: dict, prefix: str):
    """Build a (nested) dataclass from a dict, refusing unknown keys with their full name."""
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            where = f"{prefix[:-1]} has" if prefix else "known sections and settings:"
            raise UserError(f"Unknown setting '{prefix}{key}'; {where} {', '.join(known)}.")
        sub = SECTIONS.get(key) if cls is RunConfig else None
        if sub is not None:
            if not isinstance(value, dict):
                raise UserError(f"Setting '{prefix}{key}' must be a mapping of its fields.")
            kwargs[key] = _build(sub, value, f"{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", known[key])
    return cls(**kwargs)


_KIND_WORDS = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    list: "a list",
}


def _coerce(value, hint, name: str, f):
    """Check a value against its field's type; accept '3e-4' (a YAML string) for a float."""
    kinds = {t for t in (int, float, bool, str, list) if t.__name__ in str(hint)}
    if value is None and "None" in str(hint):
        return None
    rule = f.metadata.get("rule")
    if list in kinds and isinstance(value, str) and rule and rule.choices:
        # a list of choices (no choice holds a comma) may be one comma-separated string
        return [item.strip() for item in value.split(",") if item.strip()]
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
        want = " or ".join(_KIND_WORDS[k] for k in (int, float, bool, str, list) if k in kinds)
        if rule and not rule.choices:
            want += f", {rule.describe()}"
        if "None" in str(hint):
            want += ", or null"
        shown = f"'{value}'" if isinstance(value, str) else repr(value)
        raise UserError(f"{name} is {shown}; it must be {want or hint}.")
    return value


SECTIONS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}
