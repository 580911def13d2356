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
from dataclasses import dataclass

import torch

from tinylm.inference.backends import next_logits_decoder, next_logits_seq2seq
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


@torch.no_grad()
def likeliest_words(
    model,
    task: WordTask,
    prefix: str,
    k: int = 5,
    *,
    max_letters: int | None = None,
    batch: int = 64,
    max_expansions: int = 4096,
) -> Suggestions:
    """The k most probable words that complete `prefix` (at most `max_letters` letters in
    all, default the run's longest word), best first."""
    prompt = task.prompt(prefix)
    letters_left = (max_letters or task.max_len) - len(prefix)
    too_short = task.cfg.data.min_len - len(prefix)  # no word of the data is shorter
    eos = task.tokenizer.eos_id
    letters = [i for i in range(task.tokenizer.vocab_size) if i not in task.banned and i != eos]
    next_logp = _scorer(model, prompt)
    open_: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]  # (-log p, ids) still growing
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
        logp = next_logp([list(ids) for _, ids in nodes]).double()
        costs = torch.tensor([cost for cost, _ in nodes], dtype=torch.float64)
        for (_, ids), end in zip(nodes, (costs - logp[:, eos]).tolist(), strict=True):
            if len(ids) >= too_short:
                heapq.heappush(done, (end, ids))
        # Children no better than the word that now completes the list can never enter it.
        bound = _cost_to_beat(done, need)
        child = costs[:, None] - logp[:, letters]
        growing = torch.tensor([len(ids) < letters_left for _, ids in nodes])
        rows, cols = torch.nonzero((child <= bound) & growing[:, None], as_tuple=True)
        for r, c, cost in zip(
            rows.tolist(), cols.tolist(), child[rows, cols].tolist(), strict=True
        ):
            heapq.heappush(open_, (cost, (*nodes[r][1], letters[c])))
    return Suggestions(prefix, found, exact=len(found) == k or not open_)


def _cost_to_beat(done: list, need: int) -> float:
    """The cost of the finished word that would complete the list: worse can never enter it."""
    return heapq.nsmallest(need, done)[-1][0] if len(done) >= need else math.inf


def _scorer(model, prompt: Prompt):
    """log p(next token | prompt + continuation) for a batch of continuations."""
    if prompt.encoder is None:

        def decoder(continuations):
            histories = [prompt.ids + c for c in continuations]
            return next_logits_decoder(model, histories).log_softmax(dim=-1)

        return decoder
    device = next(model.parameters()).device
    x = torch.tensor([prompt.encoder], device=device)
    states = model.hf.get_encoder()(input_ids=x).last_hidden_state[0]  # once per prefix

    def seq2seq(continuations):
        histories = [prompt.ids + c for c in continuations]
        return next_logits_seq2seq(model, [states] * len(histories), histories).log_softmax(-1)

    return seq2seq
