"""The word completer as autocomplete: the K likeliest distinct words that complete a prefix.

Best-first search over continuations. A word's probability given the prefix is the chain
rule over its remaining letters and the end-of-word token, p(rest + <eos> | <sos> prefix),
from the model's own distribution (temperature 1). Extending a continuation can only lower
its probability, so once K words are finished, the K-th best of them bounds the search: a
continuation less probable than it can never lead to a word of the list, and when no open
continuation is as probable, the K best finished words are exactly the K likeliest, in order.
Words shorter than the data's shortest are not offered. The search is exact unless it runs
out of its budget of expanded continuations (`max_expansions`), which only a model with very
flat predictions reaches; then it returns the words it has finished that no open
continuation can beat, in order, and says so (`exact=False`). How the model reads a batch of
continuations is its own (`model.search`: for the decoder, a tree of cached keys and values).

The search runs in waves, each one forward pass over every open continuation within the
bound (the likeliest `batch` of them if there are more): a wave's cost is mostly fixed
(a forward pass is ~60 small operations), and a continuation within the bound is one a
best-first search expands sooner or later unless a better word found meanwhile lowers the
bound. So a search takes about as many waves as its deepest continuation has letters, and
expands ~10% more continuations than the fewest an exact search can (bench/suggest.py
--profile). The open continuations are tensors (cost, parent, letter), not a Python heap:
a wave adds thousands of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tinylm.inference.logprobs import log_probs

BAND = 2.0  # nats: a wave takes the open continuations within e^2 of the likeliest open one


@dataclass
class Found:
    """The search's result: each word as token ids of its completion (without `<eos>`) and
    its probability, best first; `exact` unless the search ran out of its budget."""

    words: list[tuple[list[int], float]]
    exact: bool


@dataclass
class WordRules:
    """What a completion may be: `letters` (token ids a word may hold), `eos` (its end),
    `max_letters` (letters the completion may add) and `min_letters` (it must add)."""

    letters: list[int]
    eos: int
    max_letters: int
    min_letters: int = 0


@torch.inference_mode()
def likeliest_words(
    model,
    prompt: list[int],
    rules: WordRules,
    k: int = 5,
    *,
    batch: int = 256,
    max_expansions: int = 4096,
    compile: bool = False,
) -> Found:
    """The k most probable completions of `prompt` (token ids, start token first), best
    first. `compile`: the model's forward passes run compiled (a causal decoder; the first
    searches of a process compile, ~10-50 s on 2 CPU cores)."""
    expand = model.search(prompt, compile)
    tree = Frontier(rules, k)
    while (nodes := tree.wave(min(batch, max_expansions - tree.expanded))) is not None:
        logits, rows = expand(nodes)
        tree.add(logits, rows)
    return tree.found()


class Frontier:
    """The search's state: the expanded continuations (their ids, lengths and the rows the
    model keeps them in), the open ones (-log p, parent, letter) and the finished words
    (-log p, the continuation they end), as numpy arrays: a wave handles thousands of
    continuations in ~40 array operations, each ~1 us in numpy against ~3 us in torch."""

    def __init__(self, rules: WordRules, k: int, band: float = BAND):
        self.rules, self.k, self.band = rules, k, band
        self.letters = np.asarray(rules.letters)
        self.ids: list[tuple[int, ...]] = []  # per expanded continuation
        self.rows: list[int] = []  # the model's row of each (its children's parent row)
        self.depth = np.zeros(0, dtype=np.int64)  # letters of each
        # open continuations: parent -1 is the root (the empty continuation)
        self.cost, self.parent, self.letter = np.zeros(1), np.full(1, -1), np.full(1, -1)
        self.ends, self.word = np.zeros(0), np.zeros(0, dtype=np.int64)  # finished words
        self.bound, self.expanded = math.inf, 0
        self.wave_cost = self.cost

    def wave(self, room: int) -> list[tuple[tuple[int, ...], int]] | None:
        """The next wave, as (ids, parent row) per continuation: every open continuation
        within the bound and the band, the likeliest `room` of them if there are more; None
        when none is left (or no room)."""
        within = np.flatnonzero(self.cost <= self.bound)
        if len(within) == 0 or room <= 0:
            return None
        cost = self.cost[within]
        near = cost <= cost.min() + self.band
        within, cost = within[near], cost[near]
        if len(within) > room:
            best = np.argpartition(cost, room - 1)[:room]
            within, cost = within[best], cost[best]
        parent, letter = self.parent[within], self.letter[within]
        left = self.cost <= self.bound
        left[within] = False
        self.cost, self.parent, self.letter = self.cost[left], self.parent[left], self.letter[left]
        self.wave_cost = cost
        depth = self.depth[parent] + 1 if parent[0] >= 0 else np.zeros(1, dtype=np.int64)
        self.depth = np.concatenate([self.depth, depth])  # (the root comes alone)
        nodes = []
        for p, c in zip(parent.tolist(), letter.tolist(), strict=True):
            ids = (*self.ids[p], c) if p >= 0 else ()
            self.ids.append(ids)
            nodes.append((ids, self.rows[p] if p >= 0 else -1))
        return nodes

    def add(self, logits: torch.Tensor, rows: list[int]) -> None:
        """Take in a wave's next-token logits: its finished words, then the children within
        the (new) bound."""
        first, n = self.expanded, len(rows)
        self.expanded += n
        self.rows.extend(rows)
        depth, cost = self.depth[first:], self.wave_cost
        logp = log_probs(logits).double().numpy()
        ok = depth >= self.rules.min_letters
        self.ends = np.concatenate([self.ends, (cost - logp[:, self.rules.eos])[ok]])
        self.word = np.concatenate([self.word, np.flatnonzero(ok) + first])
        if len(self.ends) >= self.k:
            self.bound = float(np.partition(self.ends, self.k - 1)[self.k - 1])
        child = cost[:, None] - logp[:, self.letters]
        grows = (depth < self.rules.max_letters)[:, None]
        r, c = np.nonzero((child <= self.bound) & grows)
        self.cost = np.concatenate([self.cost, child[r, c]])
        self.parent = np.concatenate([self.parent, r + first])
        self.letter = np.concatenate([self.letter, self.letters[c]])

    def found(self) -> Found:
        """The k best finished words, in order: those no open continuation can beat (all of
        them unless the budget ran out); exact when they are k or no continuation is open."""
        open_ = self.cost[self.cost <= self.bound]
        limit = float(open_.min()) if len(open_) else math.inf
        given = self.ends <= limit
        ends, word = self.ends[given], self.word[given]
        if len(ends) > self.k:  # the k best, and any tied with the k-th
            best = ends <= np.partition(ends, self.k - 1)[self.k - 1]
            ends, word = ends[best], word[best]
        pairs = zip(ends.tolist(), word.tolist(), strict=True)
        best = sorted((e, self.ids[w]) for e, w in pairs)
        words = [(list(ids), math.exp(-e)) for e, ids in best[: self.k]]
        return Found(words, exact=len(words) == self.k or not len(open_))
