"""See inside a trained model: the attention weights it computes for a prompt, and how
surprised it is by each token of a text (the log-probabilities `tinylm eval` sums, through the
same scoring path). The HTML page about a run is in report.py."""

from __future__ import annotations

import math

import torch

from tinylm.inference.logprobs import score
from tinylm.views import Attention, AttentionMap, Tokens, TokenScore

LN2 = math.log(2)


@torch.no_grad()
def attention(net, tokenizer, prompt: list[int], title: str = "") -> Attention:
    """The model's own attention weights while it reads `prompt` (token ids, start token
    first), each kind of attention the model has (`model.attention`), axes labelled with the
    tokens. Recording them leaves the model's output unchanged."""
    maps = []
    for name, queries, keys, weights in net.attention(prompt):
        labels = [tokenizer.label(i) for i in queries], [tokenizer.label(i) for i in keys]
        maps.append(AttentionMap(name, *labels, weights))
    return Attention(maps, title)


def surprise(net, tokenizer, sequence: list[int], pieces: list[str], context: int) -> Tokens:
    """Each token of `sequence` after the first (the start token), the stretch of text it
    stands for (`pieces`, one per token), and the model's surprise at it in bits, scored as
    `tinylm eval` scores: from the start, in half-overlapping windows when longer than the
    context."""
    [s] = score(net, [sequence], context)
    return Tokens(
        TokenScore(i, piece, -lp / LN2, i == tokenizer.unk_id)
        for i, piece, lp in zip(sequence[1:], pieces, s.logp.tolist(), strict=True)
    )
