"""What the Python API returns: plain dataclasses of numbers and text, each showing itself
three ways, defined once here: on a console (`str`), in Jupyter (`_repr_html_`, or
`_repr_png_` for pictures) and as JSON (`to_dict`, what `--json` prints). The command line
prints them, the report page embeds their HTML, notebooks display them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from tinylm import html

DEMO_TEMPERATURES = (0.5, 1.0, 1.5)  # the demos' samples, as in both original notebooks


def _compact(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class Word:
    word: str  # the whole word, prefix included
    probability: float | None  # of the completion given the prefix; None for a cut sample
    finished: bool = True  # ended with end-of-word (a sample may be cut by its length limit)


@dataclass
class WordList:
    """Words completing one prefix: the likeliest, best first (`ranked`), or samples."""

    prefix: str
    words: list[Word]
    ranked: bool = True
    exact: bool = True  # ranked: the search finished within its budget

    def __str__(self) -> str:
        if self.ranked:
            words = "  ".join(f"{w.word} {w.probability:.1%}" for w in self.words)
            return f"  {self.prefix:<8} {words}" + (
                "" if self.exact else "  (search budget reached)"
            )
        shown = " ".join(w.word + ("" if w.finished else "…") for w in self.words)
        return f"  {self.prefix:<8} {shown}"

    def json_lines(self) -> list[str]:
        return [
            json.dumps(
                {
                    "prefix": self.prefix,
                    "completion": w.word,
                    "probability": None if w.probability is None else round(w.probability, 6),
                }
            )
            for w in self.words
        ]


class Completions(list):
    """One WordList per prefix, in the order asked; `completions["fin"]` finds one by prefix."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return next(w for w in self if w.prefix == key)
        return super().__getitem__(key)

    def __str__(self) -> str:
        return "\n".join(map(str, self))

    def _repr_html_(self) -> str:
        rows = []
        for wl in self:
            cells = "<br>".join(
                html.bar(w.probability or 0.0, f"{w.word} {w.probability:.1%}")
                if w.probability is not None
                else html.escape(w.word + ("" if w.finished else "…"))
                for w in wl.words
            )
            rows.append(f"<tr><td><b>{html.escape(wl.prefix)}</b></td><td>{cells}</td></tr>")
        return f"<table>{''.join(rows)}</table>"


@dataclass
class Generation:
    """A prompt's continuation."""

    prompt: str
    text: str
    finish_reason: str  # stop (end of text or word) or length (max_new_tokens)
    tokens: int  # new tokens

    def __str__(self) -> str:
        return self.prompt + self.text

    def _repr_html_(self) -> str:
        return f"<pre><b>{html.escape(self.prompt)}</b>{html.escape(self.text)}</pre>"


class Generations(list):
    def __str__(self) -> str:
        return "\n".join(f"  {g}" for g in self)

    def _repr_html_(self) -> str:
        return "".join(g._repr_html_() for g in self)


@dataclass
class WordEvaluation:
    """Benchmark W's figures on held-out words, beside uniform, unigram and bigram models."""

    words: int
    targets: int
    bits_per_char: float  # M1
    next_char_accuracy: float  # M2
    accuracy_per_letter: dict[str, float]
    baselines: dict[str, dict[str, float]]
    sampled_words: dict | None = None  # where words sampled at temperature 1 come from
    skipped_words: int = 0  # words of --data that this model's characters cannot write
    data: str = "test split"
    caveat: str | None = None

    def to_dict(self) -> dict:
        return _compact(asdict(self))

    def rows(self) -> list[tuple[str, float, float]]:
        rows = [("model", self.bits_per_char, self.next_char_accuracy)]
        for name, fig in self.baselines.items():
            rows.append((f"{name} baseline", fig["bits_per_char"], fig["next_char_accuracy"]))
        return rows

    def accuracy(self) -> tuple[list[str], list[float], str]:
        """The bar chart of accuracy per letter: labels, values, caption."""
        letters = self.accuracy_per_letter
        return list(letters), list(letters.values()), "next-character accuracy per letter"

    def novelty(self) -> str:
        s = self.sampled_words
        return (
            f"{s['samples']} sampled words: {s['in_train']:.1%} in the training split, "
            f"{s['in_val']:.1%} in validation, {s['in_test']:.1%} in test, {s['new']:.1%} in "
            f"none of them (e.g. {', '.join(s['examples'][:8])})"
        )

    def __str__(self) -> str:
        lines = [
            f"Test words: {self.words:,} ({self.targets:,} targets)",
            f"{'':<20}{'bits/char (M1)':>16}{'accuracy (M2)':>16}",
        ]
        lines += [f"{name:<20}{m1:>16.3f}{m2:>16.3f}" for name, m1, m2 in self.rows()]
        letters = self.accuracy_per_letter
        lines.append(
            "accuracy per letter: " + "  ".join(f"{k} {v:.2f}" for k, v in letters.items())
        )
        if self.sampled_words:
            lines.append(self.novelty())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = ["", "bits per character (M1)", "next-character accuracy (M2)"]
        out = f"<p>{self.words:,} test words ({self.data}).</p>" + html.table(head, self.rows())
        return out + (f"<p>{html.escape(self.novelty())}.</p>" if self.sampled_words else "")


@dataclass
class TextEvaluation:
    """Benchmark T's figures on held-out documents, beside a unigram model."""

    documents: int
    tokens: int
    bytes: int
    loss_per_token: float  # nats
    perplexity: float
    bits_per_byte: float
    top1_accuracy: float
    top5_accuracy: float
    unk_rate: float
    unk_bits_per_byte: float  # of bits_per_byte: the charge for the words behind <UNK>
    accuracy_by_position: list[tuple[str, float]]  # top-1 by position in the first window
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    data: str = "test split"
    caveat: str | None = None

    def to_dict(self) -> dict:
        return _compact(asdict(self))

    def accuracy(self) -> tuple[list[str], list[float], str]:
        labels = [label for label, _ in self.accuracy_by_position]
        values = [value for _, value in self.accuracy_by_position]
        return labels, values, "top-1 accuracy of the token at each position of the context"

    def __str__(self) -> str:
        lines = [
            f"Documents: {self.documents:,}, {self.tokens:,} tokens, {self.bytes:,} bytes",
            f"  loss per token      {self.loss_per_token:.4f} nats (perplexity {self.perplexity:,.1f})",
            f"  bits per byte       {self.bits_per_byte:.4f}",
            f"  top-1 / top-5       {self.top1_accuracy:.1%} / {self.top5_accuracy:.1%}",
        ]
        if self.unk_rate:
            lines.append(
                f"  <UNK> rate          {self.unk_rate:.1%} (charged {self.unk_bits_per_byte:.3f}"
                " bits/byte for the words they hide; case and punctuation are not predicted)"
            )
        for name, fig in self.baselines.items():
            lines.append(f"  {name} baseline    {fig['bits_per_byte']:.4f} bits per byte")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        unk = f", &lt;UNK&gt; {self.unk_rate:.1%}" if self.unk_rate else ""
        rows = [("model", self.bits_per_byte)]
        rows += [(f"{k} baseline", v["bits_per_byte"]) for k, v in self.baselines.items()]
        return (
            f"<p>{self.documents:,} documents ({self.data}), {self.tokens:,} tokens: "
            f"{self.loss_per_token:.4f} nats per token (perplexity {self.perplexity:,.1f}), "
            f"top-1 {self.top1_accuracy:.1%}, top-5 {self.top5_accuracy:.1%}{unk}.</p>"
            + html.table(["", "bits per byte"], rows, digits=4)
        )


@dataclass
class Demo:
    """What a run shows after training: for a word completer the likeliest words of its demo
    prefixes, and samples at each demo temperature (words or generated texts)."""

    samples: dict[float, Completions | Generations]
    likeliest: Completions | None = None

    def __str__(self) -> str:
        parts = ["the likeliest words:", str(self.likeliest)] if self.likeliest else []
        for t, shown in self.samples.items():
            parts += [f"temperature {t}:", str(shown)]
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        parts = []
        if self.likeliest:
            parts.append("<h3>The likeliest words</h3>" + self.likeliest._repr_html_())
        for t, shown in self.samples.items():
            parts.append(f"<h3>Temperature {t}</h3>" + shown._repr_html_())
        return "".join(parts)


@dataclass
class Info:
    """A run described: what it is, its configuration, parameters, split and best figures."""

    path: str
    task: str  # "word completer" or "text generator"
    config: str  # tinylm.yaml
    parameters: dict[str, int]
    split: dict[str, int] = field(default_factory=dict)
    best: dict | None = None  # the best validation record of metrics.jsonl
    validations: int = 0
    test: dict | None = None  # eval.json
    caveat: str | None = None

    def __str__(self) -> str:
        lines = [f"Run {self.path}: a {self.task}"]
        if self.caveat:
            lines.append(f"Note: {self.caveat}")
        config = "  " + self.config.strip().replace("\n", "\n  ")
        lines += ["", "Configuration (tinylm.yaml):", config]
        lines += ["", "Parameters:"] + [f"  {p:<16}{n:>12,}" for p, n in self.parameters.items()]
        if self.split:
            lines += ["", "Split: " + ", ".join(f"{k} {v:,}" for k, v in self.split.items())]
        if self.best:
            b = self.best
            lines += [
                "",
                f"Best validation loss {b['val_loss']:.4f} nats at step {b['step']:,} "
                f"({b['time']:.0f} s, {b['tokens']:,} targets); {self.validations} validations.",
            ]
        t = self.test or {}
        if "bits_per_byte" in t:
            lines.append(
                f"Test: {t['bits_per_byte']:.3f} bits/byte, {t['loss_per_token']:.3f} "
                f"nats/token, {t['top1_accuracy']:.1%} top-1 accuracy."
            )
        if "bits_per_char" in t:
            lines.append(
                f"Test: {t['bits_per_char']:.3f} bits/char, "
                f"{t['next_char_accuracy']:.1%} next-character accuracy."
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


def probability(logprob: float, finished: bool) -> float | None:
    """A sampled word's probability, when it ended with end-of-word (else None)."""
    return math.exp(logprob) if finished else None


# In a notebook a result shows its HTML (or picture); its plain-text form, kept beside it, is
# what a console shows, not a dump of every number.
for _shown in (
    Completions,
    Generation,
    Generations,
    WordEvaluation,
    TextEvaluation,
    Demo,
    Info,
):
    _shown.__repr__ = _shown.__str__
