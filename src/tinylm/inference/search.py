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
continuations is its own (`model.search`: for the decoder, a tree of cached keys and values);
the searches of several prefixes share its forward passes.

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
from collections.abc import Sequence
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
    prompts: list[list[int]],
    rules: list[WordRules],
    k: int = 5,
    *,
    batch: int = 256,
    max_expansions: int = 4096,
    compile: bool = False,
) -> list[Found]:
    """The k most probable completions of each prompt (token ids, start token first) under its
    rules, best first. The searches run side by side, a wave of each in one forward pass: a
    pass costs little more for more rows. `compile`: the model's forward passes run compiled
    (a causal decoder; the first searches of a process compile, ~10-50 s on 2 CPU cores)."""
    expand = model.search(prompts, compile)
    trees = [Frontier(r, k) for r in rules]
    while True:
        waves = [(i, t.wave(min(batch, max_expansions - t.expanded))) for i, t in enumerate(trees)]
        waves = [(i, nodes) for i, nodes in waves if nodes is not None]
        if not waves:
            return [t.found() for t in trees]
        for (i, _), (logits, rows) in zip(waves, expand(waves), strict=True):
            trees[i].add(logits, rows)


class Frontier:
    """The search's state as numpy arrays (a wave handles thousands of continuations in ~40
    array operations, each ~1 us in numpy against ~3 us in torch): the expanded
    continuations (parent, letter, length, the model's row), the open ones (-log p, parent,
    letter) and the finished words (-log p, the continuation they end). A continuation's
    ids are walked up from its parents only when asked for: the words found, or a backend
    that reads ids (the decoder's tree reads the arrays)."""

    def __init__(self, rules: WordRules, k: int, band: float = BAND):
        self.rules, self.k, self.band = rules, k, band
        self.letters = letters = np.asarray(rules.letters, dtype=np.int64)
        run = len(letters) and np.array_equal(letters, letters[0] + np.arange(len(letters)))
        # a slice where the letters' ids run in a row: a view of the logits, not a gather
        self.columns = slice(letters[0], letters[-1] + 1) if run else letters
        int_ = np.zeros(0, dtype=np.int64)
        self.up, self.last, self.depth, self.rows = int_, int_, int_, int_  # expanded ones
        # open continuations: parent -1 is the root (the empty continuation)
        self.cost, self.parent, self.letter = np.zeros(1), np.full(1, -1), np.full(1, -1)
        self.ends, self.word = np.zeros(0), int_  # finished words
        self.bound, self.expanded = math.inf, 0
        self.wave_cost = self.cost

    def wave(self, room: int) -> Wave | None:
        """The next wave: every open continuation within the bound and the band, the
        likeliest `room` of them if there are more; None when none is left (or no room)."""
        within = np.flatnonzero(self.cost <= self.bound)
        if len(within) == 0 or room <= 0:
            return None
        if self.expanded == 0 and room > len(self.letters) and self.rules.max_letters > 0:
            return self._root_and_children()
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
        root = parent[0] < 0  # (the root comes alone)
        depth = np.zeros(1, dtype=np.int64) if root else self.depth[parent] + 1
        self.up = np.concatenate([self.up, parent])
        self.last = np.concatenate([self.last, letter])
        self.depth = np.concatenate([self.depth, depth])
        parents = np.full(1, -1) if root else self.rows[parent]
        return Wave(self, np.arange(self.expanded, len(self.up)), parents, letter)

    def _root_and_children(self) -> Wave:
        """The first wave: the root and every one of its children, read with the prompt in
        one pass (most of them are expanded sooner or later; a wave costs ~40 rows)."""
        n = 1 + len(self.letters)
        self.cost, self.parent, self.letter = self.cost[:0], self.parent[:0], self.letter[:0]
        self.up = np.r_[-1, np.zeros(n - 1, dtype=np.int64)]
        self.last = np.r_[-1, self.letters]
        self.depth = np.r_[0, np.ones(n - 1, dtype=np.int64)]
        self.wave_cost = np.zeros(n)  # the children's: known once the root is read
        return Wave(self, np.arange(n), np.full(n, -1), self.last)

    def ids(self, node: int) -> tuple[int, ...]:
        """The letters of an expanded continuation, walked up from it to the root."""
        ids = []
        while node >= 0 and self.depth[node] > 0:
            ids.append(int(self.last[node]))
            node = self.up[node]
        return tuple(reversed(ids))

    def add(self, logits: torch.Tensor, rows) -> None:
        """Take in a wave's next-token logits: its finished words, then the children within
        the (new) bound."""
        first, n = self.expanded, len(rows)
        self.expanded += n
        self.rows = np.concatenate([self.rows, np.asarray(rows, dtype=np.int64)])
        depth, cost = self.depth[first:], self.wave_cost
        logp = log_probs(logits).double().numpy()
        children_read = first == 0 and n > 1  # the root's children came with it
        if children_read:
            cost[1:] = cost[0] - logp[0, self.columns]
        ok = depth >= self.rules.min_letters
        self.ends = np.concatenate([self.ends, (cost - logp[:, self.rules.eos])[ok]])
        self.word = np.concatenate([self.word, np.flatnonzero(ok) + first])
        if len(self.ends) >= self.k:
            self.bound = float(np.partition(self.ends, self.k - 1)[self.k - 1])
        child = cost[:, None] - logp[:, self.columns]
        keep = child <= self.bound
        keep[0] &= not children_read
        if depth.max() >= self.rules.max_letters:
            keep &= (depth < self.rules.max_letters)[:, None]
        r, c = np.nonzero(keep)
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
        best = sorted((e, self.ids(w)) for e, w in pairs)
        words = [(list(ids), math.exp(-e)) for e, ids in best[: self.k]]
        return Found(words, exact=len(words) == self.k or not len(open_))


class Wave(Sequence):
    """A wave as the model's search backend takes it: (ids, parent row) per continuation,
    built when read, and as arrays for a backend that reads them whole (numpy: `parents`,
    the parents' rows, -1 for the root; `tokens`, each one's last letter)."""

    def __init__(self, frontier: Frontier, nodes, parents, tokens):
        self.frontier, self.nodes = frontier, nodes
        self.parents, self.tokens = parents, tokens

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.frontier.ids(int(self.nodes[i])), int(self.parents[i])
