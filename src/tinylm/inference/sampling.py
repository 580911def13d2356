"""Sampling settings, checked in one place for the command line and the API, and the choice
of one next token from a row of logits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinylm.errors import SamplingError

MAX_TEMPERATURE = 2.0
GREEDY_BELOW = 1e-4  # a temperature this small is taken as 0: dividing by it would overflow


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sampling:
    """temperature: a finite number in [0, 2], 0 (or below 1e-4) is greedy; top_k: an
    integer >= 0, 0 = off; top_p: a finite number in (0, 1], 1 = off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        if not _number(t) or not math.isfinite(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise SamplingError("temperature", f"must be a number in [0, 2], not {t!r}.")
        if not _number(p) or not math.isfinite(p) or not 0 < p <= 1:
            raise SamplingError("top_p", f"must be a number in (0, 1], not {p!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise SamplingError("top_k", f"must be a whole number, 0 or more, not {k!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def choose(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator, banned=None
) -> int:
    """The next token from one row of logits (V,): banned tokens removed, then greedy, or
    temperature, top-k and top-p (the token that crosses p is kept) and a draw."""
    logits = logits.float()
    if banned is not None:
        logits = logits.index_fill(0, banned, float("-inf"))
    if sampling.greedy:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= sampling.top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    """A generator of its own per sequence, so a seed gives one text whatever runs beside it."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise SamplingError("seed", f"must be a whole number that fits in 64 bits, not {seed!r}.")
    else:
        g.manual_seed(seed)
    return g
