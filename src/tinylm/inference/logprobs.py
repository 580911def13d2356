"""Next-token log-probabilities, computed one way: `log_probs` turns a model's next-token
logits into them (the engine's sampled tokens, the word search, scoring), and `score` gives
each token of a sequence its log-probability, the path of `tinylm eval`, `tinylm tokens` and
the API's `echo` / `logprobs`.

A scored sequence is its start token followed by its tokens; every token after the first is
predicted exactly once. A sequence longer than the context is read in windows of at most
`context` tokens that overlap by half, so each token is predicted with at least half a
context of history (all of it, when the sequence fits). The model reads the rows through
`model.read` (models/__init__.py), so a decoder and the encoder-decoder are scored alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next token from logits (..., vocabulary), in fp32 on the CPU."""
    return logits.float().log_softmax(dim=-1).cpu()


@dataclass
class Scores:
    targets: torch.Tensor  # (n,) the predicted tokens: the sequence after its first token
    logp: torch.Tensor  # (n,) their log-probabilities, in nats
    top_ids: torch.Tensor  # (n, k) the k likeliest tokens at each position, best first
    top_logp: torch.Tensor  # (n, k) their log-probabilities


def windows(length: int, context: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window over a sequence of `length` tokens: the window reads
    tokens begin..end-1 and scores the predictions of its last `scored` tokens."""
    out, begin, done, last = [], 0, 0, length - 1  # position p predicts token p + 1
    stride = max(1, context // 2)
    while done < last:
        end = min(begin + context, last)
        out.append((begin, end, end - done))
        done, begin = end, begin + stride
    return out


@torch.no_grad()
def score(
    model, sequences: list[list[int]], context: int, *, top: int = 5, batch_tokens: int = 16_384
) -> list[Scores]:
    """Scores of every token after the first of each sequence (see the module docstring)."""
    device = next(model.parameters()).device
    top = max(1, min(top, model.vocab_size))
    out = [_empty(len(s) - 1, top) for s in sequences]
    pieces = [(i, *w) for i, s in enumerate(sequences) for w in windows(len(s), context)]
    pieces.sort(key=lambda p: p[2] - p[1])  # similar lengths together: little padding
    per_batch = max(1, batch_tokens // context)
    for b in range(0, len(pieces), per_batch):
        chunk = pieces[b : b + per_batch]
        width = max(end - begin for _, begin, end, _ in chunk)
        x = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (i, begin, end, _) in enumerate(chunk):
            x[j, : end - begin] = torch.tensor(sequences[i][begin:end])
        logp = log_probs(model.read(x.to(device)))
        for j, (i, begin, end, scored) in enumerate(chunk):
            rows = logp[j, end - begin - scored : end - begin]  # predicting end-scored+1..end
            targets = torch.tensor(sequences[i][end - scored + 1 : end + 1])
            values, ids = rows.topk(top, dim=-1)
            s, at = out[i], slice(end - scored, end)
            s.targets[at], s.logp[at] = targets, rows.gather(-1, targets[:, None])[:, 0]
            s.top_ids[at], s.top_logp[at] = ids, values
    return out


def _empty(n: int, k: int) -> Scores:
    return Scores(
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n),
        torch.zeros((n, k), dtype=torch.long),
        torch.zeros((n, k)),
    )
