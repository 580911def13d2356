"""The word completer as autocomplete: the K likeliest distinct words that complete a prefix.

Best-first search over continuations. A word's probability given the prefix is the chain
rule over its remaining letters and the end-of-word token, p(rest + <eos> | <sos> prefix),
from the model's own distribution (temperature 1). Extending a continuation can only lower
its probability, so when the most probable entry of the frontier is a finished word, no
unexplored continuation can beat it: the words come out exactly in order of probability.
Words shorter than the data's shortest (`data.min_len`) are not offered. The search is
exact unless it runs out of its budget of expanded continuations
(`max_expansions`), which only a model with very flat predictions reaches; then it returns
the words it has finished, still in order, and says so (`exact=False`).
"""

from __future__ import annotations

import heapq
import math
import weakref
from dataclasses import dataclass

import torch

from tinylm.inference.backends import next_logits_decoder, next_logits_seq2seq
from tinylm.models import Decoder
from tinylm.models.decoder import CacheSlots
from tinylm.tasks import Prompt, WordTask


@dataclass
class Suggestion:
    word: str
    probability: float
    letters: list[int]  # token ids of the completion (without <eos>)


@dataclass
class Suggestions:
    prefix: str
    words: list[Suggestion]
    exact: bool


@torch.inference_mode()
def likeliest_words(
    model,
    task: WordTask,
    prefix: str,
    k: int = 5,
    *,
    max_letters: int | None = None,
    batch: int = 128,
    max_expansions: int = 4096,
    compile: bool = False,
) -> Suggestions:
    """The k most probable words that complete `prefix` (at most `max_letters` letters in
    all, default the run's longest word), best first. `compile` (a causal decoder; ignored
    otherwise): its forward passes run compiled (the first searches of a process compile,
    ~10-50 s on 2 CPU cores, then a search takes about two thirds of the time: bench/suggest.py)."""
    prompt = task.prompt(prefix)
    letters_left = (max_letters or task.max_len) - len(prefix)
    too_short = task.cfg.data.min_len - len(prefix)  # no word of the data is shorter
    eos = task.tokenizer.eos_id
    letters = [i for i in range(task.tokenizer.vocab_size) if i not in task.banned and i != eos]
    next_logp = _scorer(model, prompt, compile)
    open_: list[tuple[float, tuple[int, ...], int]] = [(0.0, (), -1)]  # (-log p, ids, parent row)
    done: list[tuple[float, tuple[int, ...]]] = []  # finished words, not yet given out
    found, expanded = [], 0
    while len(found) < k:
        # A finished word no open continuation can beat is the next likeliest.
        while done and len(found) < k and (not open_ or done[0][0] <= open_[0][0]):
            cost, ids = heapq.heappop(done)
            found.append(
                Suggestion(prefix + task.tokenizer.decode(ids), math.exp(-cost), list(ids))
            )
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
        logp, rows_of = next_logp([(ids, parent) for _, ids, parent in nodes])
        logp = logp.double()
        costs = torch.tensor([cost for cost, _, _ in nodes], dtype=torch.float64)
        for (_, ids, _), end in zip(nodes, (costs - logp[:, eos]).tolist(), strict=True):
            if len(ids) >= too_short:
                heapq.heappush(done, (end, ids))
        # Children no better than the word that now completes the list can never enter it.
        bound = _cost_to_beat(done, need)
        child = costs[:, None] - logp[:, letters]
        growing = torch.tensor([len(ids) < letters_left for _, ids, _ in nodes])
        rows, cols = torch.nonzero((child <= bound) & growing[:, None], as_tuple=True)
        for r, c, cost in zip(
            rows.tolist(), cols.tolist(), child[rows, cols].tolist(), strict=True
        ):
            heapq.heappush(open_, (cost, (*nodes[r][1], letters[c]), rows_of[r]))
    return Suggestions(prefix, found, exact=len(found) == k or not open_)


def _cost_to_beat(done: list, need: int) -> float:
    """The cost of the finished word that would complete the list: worse can never enter it."""
    return heapq.nsmallest(need, done)[-1][0] if len(done) >= need else math.inf


def _scorer(model, prompt: Prompt, compile: bool):
    """log p(next token | prompt + continuation) for a batch of (continuation, parent row)."""
    if prompt.encoder is None and model.cfg.causal:
        return _CacheTree(model, prompt.ids, compile)
    if prompt.encoder is None:  # without a causal mask every position sees the whole word

        def plain(nodes):
            rows = [next_logits_decoder(model, [prompt.ids + list(ids)]) for ids, _ in nodes]
            return torch.cat(rows).log_softmax(-1), [-1] * len(nodes)

        return plain
    device = next(model.parameters()).device
    x = torch.tensor([prompt.encoder], device=device)
    states = model.hf.get_encoder()(input_ids=x).last_hidden_state[0]  # once per prefix

    def seq2seq(nodes):
        histories = [prompt.ids + list(ids) for ids, _ in nodes]
        logp = next_logits_seq2seq(model, [states] * len(histories), histories).log_softmax(-1)
        return logp, [-1] * len(nodes)

    return seq2seq


class _CacheTree:
    """A decoder's keys and values for the whole search tree, one cache row per expanded
    continuation: the root (the empty continuation) reads the prompt into row 0, and every
    other continuation copies its parent's row and reads its one new letter on it, instead of
    re-reading everything from its start (bench/suggest.py: top-5 p50 44 -> 23 ms).

    `compile`: the forward pass runs compiled with dynamic shapes (a wave's size and the
    cache's length vary), so its ~100 small operations become a few fused kernels: a search
    takes about two thirds of the time once compiled. A wave padded to one fixed shape was
    slower: its padding rows and the copies into the tree cost more than they saved
    (bench/README.md)."""

    def __init__(self, model: Decoder, prompt: list[int], compile: bool = False):
        self.model, self.prompt = model, prompt
        self.forward = compiled_dynamic(model) if compile else model
        self.device = model.rope_cos.device
        self.cache, self.used = model.new_cache(1), 0

    def __call__(self, nodes: list[tuple[tuple[int, ...], int]]):
        """log p(next | prompt + ids) for each (ids, parent row); and the row each now owns."""
        first = self.used
        self._reserve(len(nodes))
        rows = self.cache.span(first, self.used)  # the nodes' own rows, in one block
        if first == 0:  # the root, alone in the first batch
            x, start = torch.tensor([self.prompt]), torch.zeros(1, dtype=torch.long)
        else:
            parents = torch.tensor([parent for _, parent in nodes], device=self.device)
            for mine, all_ in zip(rows.k + rows.v, self.cache.k + self.cache.v, strict=True):
                mine[:] = all_[parents]  # each node starts from its parent's row
            x = torch.tensor([[ids[-1]] for ids, _ in nodes])
            start = torch.tensor([len(self.prompt) - 1 + len(ids) for ids, _ in nodes])
        slots = CacheSlots(start.to(self.device), int(start.max()) + x.shape[1])
        logits = self.forward(x.to(self.device), cache=rows, slots=slots).logits[:, -1]
        return logits.float().cpu().log_softmax(-1), list(range(first, self.used))

    def _reserve(self, n: int) -> None:
        """Room for n rows more, doubling when full. New rows are left uninitialized (zeroing
        them costs more than the search): a row is overwritten by its parent's before anything
        reads it, so every value read descends from row 0, which starts zeroed."""
        self.used += n
        if self.used > self.cache.rows:
            for tensors in (self.cache.k, self.cache.v):
                for i, old in enumerate(tensors):
                    tensors[i] = old.new_empty((2 * self.used, *old.shape[1:]))
                    tensors[i][: self.used - n] = old[: self.used - n]


_compiled = weakref.WeakKeyDictionary()


def compiled_dynamic(model: Decoder):
    """The model compiled once a process for shapes that vary (torch.compile caches the
    kernels; this keeps the one wrapper per model)."""
    if model not in _compiled:
        _compiled[model] = torch.compile(model, dynamic=True)
    return _compiled[model]
