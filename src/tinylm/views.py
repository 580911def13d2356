"""Views inside a model, as the Python API returns them: its attention weights, its surprise at
each token of a text, and loss curves. Each shows itself in Jupyter (`_repr_png_` /
`_repr_html_`), saves a picture (`save`) or gives its numbers (`to_dict`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tinylm import html, plots


@dataclass
class TokenScore:
    id: int
    piece: str  # the stretch of the text this token stands for ("" for end-of-word)
    bits: float  # -log2 p(token | everything before it)
    unk: bool = False

    def to_dict(self) -> dict:
        d = {"id": self.id, "piece": self.piece, "bits": round(self.bits, 6)}
        return {**d, "unk": True} if self.unk else d


PALETTE = [22, 28, 64, 100, 136, 130, 124, 160, 196]  # xterm-256: green -> red, 2 bits a step
COLOURS = [  # the same steps for a web page
    "#1b5e20",
    "#2e7d32",
    "#558b2f",
    "#9e9d24",
    "#f9a825",
    "#ef6c00",
    "#d84315",
    "#c62828",
    "#b71c1c",
]


class Tokens(list):
    """How a text is cut into tokens, and the model's surprise at each (TokenScore)."""

    def shade(self, t: TokenScore) -> int:
        return min(len(PALETTE) - 1, int(t.bits / 2))

    def coloured(self) -> str:
        """The text with each piece on a background from green (expected) to red (surprising)."""
        return "".join(
            f"\x1b[48;5;{PALETTE[self.shade(t)]}m\x1b[97m{t.piece or '⏎'}\x1b[0m" for t in self
        )

    def __str__(self) -> str:
        lines = []
        for t in self:
            mark = "  <UNK>" if t.unk else ""
            lines.append(f"{t.id:>7}  {t.piece or '(end)'!r:<16} {t.bits:6.2f} bits{mark}")
        total = sum(t.bits for t in self)
        n = max(len(self), 1)
        lines.append(f"{len(self)} tokens, {total:.2f} bits in all ({total / n:.3f} per token)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        spans = "".join(
            f'<span title="{t.bits:.2f} bits" style="background:{COLOURS[self.shade(t)]};'
            f'color:#fff;padding:1px">{html.escape(t.piece or "⏎")}</span>'
            for t in self
        )
        total = sum(t.bits for t in self)
        return f"<p>{spans}</p><p class='muted'>{len(self)} tokens, {total:.2f} bits</p>"

    def to_dict(self) -> list[dict]:
        return [t.to_dict() for t in self]


@dataclass
class AttentionMap:
    name: str  # "self-attention", or encoder / decoder / cross-attention
    queries: list[str]  # token labels, one per row
    keys: list[str]  # one per column
    weights: torch.Tensor  # (layers, heads, queries, keys); every row sums to 1

    def to_dict(self) -> dict:
        layers = self.weights.tolist()
        return {"name": self.name, "queries": self.queries, "keys": self.keys, "layers": layers}


class Attention(list):
    """A model's attention weights while it reads a prompt: one AttentionMap per kind of
    attention, each layers x heads of queries x keys; a grid of heatmaps as a picture."""

    def __init__(self, maps, title: str = ""):
        super().__init__(maps)
        self.title = title

    def save(self, out: Path) -> Path:
        return plots.plot_attention(self, out, title=self.title)

    def __repr__(self) -> str:
        return f"<Attention: {', '.join(m.name for m in self)} ({self.title})>"

    def _repr_png_(self) -> bytes:
        return html.png_bytes(self.save)

    def to_dict(self) -> dict:
        return {"maps": [m.to_dict() for m in self]}


@dataclass
class LossCurves:
    """Training and validation loss of one or more runs (label, metrics records)."""

    curves: list[tuple[str, list[dict]]]
    x: str = "tokens"  # tokens, time or step

    def save(self, out: Path) -> Path:
        return plots.plot_losses(self.curves, out, x=self.x)

    def __repr__(self) -> str:
        return f"<LossCurves of {', '.join(label for label, _ in self.curves)} by {self.x}>"

    def _repr_png_(self) -> bytes:
        return html.png_bytes(self.save)


Tokens.__repr__ = Tokens.__str__
