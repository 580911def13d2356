"""The word completer as autocomplete: the K likeliest distinct words that complete a prefix.

Best-first search over continuations. A word's probability given the prefix is the chain
rule over its remaining letters and the end-of-word token, p(rest + <eos> | <sos> prefix),
from the model's own distribution (temperature 1). Extending a continuation can only lower
its probability, so when the most probable entry of the frontier is a finished word, no
unexplored continuation can beat it: the words come out exactly in order of probability.
Words shorter than the data's shortest are not offered. The search is exact unless it runs
out of its budget of expanded continuations (`max_expansions`), which only a model with very
flat predictions reaches; then it returns the words it has finished, still in order, and says
so (`exact=False`). How the model reads a batch of continuations is its own (`model.search`:
for the decoder, a tree of cached keys and values).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from tinylm.inference.logprobs import log_probs


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
    batch: int = 128,
    max_expansions: int = 4096,
    compile: bool = False,
) -> Found:
    """The k most probable completions of `prompt` (token ids, start token first), best
    first. `compile`: the model's forward passes run compiled (a causal decoder; the first
    searches of a process compile, ~10-50 s on 2 CPU cores, then a search takes about two
    thirds of the time: bench/suggest.py)."""
    expand = model.search(prompt, compile)
    letters, eos = rules.letters, rules.eos
    open_: list[tuple[float, tuple[int, ...], int]] = [(0.0, (), -1)]  # (-log p, ids, parent row)
    done: list[tuple[float, tuple[int, ...]]] = []  # finished words, not yet given out
    found: list[tuple[list[int], float]] = []
    expanded = 0
    while len(found) < k:
        # A finished word no open continuation can beat is the next likeliest.
        while done and len(found) < k and (not open_ or done[0][0] <= open_[0][0]):
            cost, ids = heapq.heappop(done)
            found.append((list(ids), math.exp(-cost)))
        if len(found) == k or not open_ or expanded >= max_expansions:
            break
        # Expand a batch of the best open continuations, none worse than the finished word
        # that would complete the list (it could never enter it).
        need = k - len(found)
        bound = _cost_to_beat(done, need)
        nodes = []
        while open_ and len(nodes) < batch and open_[0][0] <= bound:
            nodes.append(heapq.heappop(open_))
        if not nodes:
            open_ = []  # nothing left that could matter
            continue
        expanded += len(nodes)
        logits, rows_of = expand([(ids, parent) for _, ids, parent in nodes])
        logp = log_probs(logits).double()
        costs = torch.tensor([cost for cost, _, _ in nodes], dtype=torch.float64)
        for (_, ids, _), end in zip(nodes, (costs - logp[:, eos]).tolist(), strict=True):
            if len(ids) >= rules.min_letters:
                heapq.heappush(done, (end, ids))
        # Children no better than the word that now completes the list can never enter it.
        bound = _cost_to_beat(done, need)
        child = costs[:, None] - logp[:, letters]
        growing = torch.tensor([len(ids) < rules.max_letters for _, ids, _ in nodes])
        rows, cols = torch.nonzero((child <= bound) & growing[:, None], as_tuple=True)
        for r, c, cost in zip(
            rows.tolist(), cols.tolist(), child[rows, cols].tolist(), strict=True
        ):
            heapq.heappush(open_, (cost, (*nodes[r][1], letters[c]), rows_of[r]))
    return Found(found, exact=len(found) == k or not open_)


def _cost_to_beat(done: list, need: int) -> float:
    """The cost of the finished word that would complete the list: worse can never enter it."""
    return heapq.nsmallest(need, done)[-1][0] if len(done) >= need else math.inf
