"""Batches for training and evaluation, each a dict that the model takes as `model(**batch)`.

The batch for a training step is a pure function of (seed, step, rank): resuming at step N
replays exactly the batches an uninterrupted run would have seen, and ranks of a distributed run
see different batches without talking to each other. A rank's batch may then be cut into
micro-batches (`micro_batches`) whose gradients add up to the batch's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

IGNORE = -100
# seq2seq: the share of words read with an empty prefix, the decoder predicting every letter;
# the rest split at a uniform point. Half and half learnt faster than splits alone (0.05 bits
# of validation M1 at 500 steps, bench/README.md).
WHOLE_WORDS = 0.5


class WordBatches:
    """Words grouped by length, so a batch holds words of one length and carries no padding.

    Each batch holds about `batch_tokens` targets. For the decoder a word is `<sos> w <eos>`.
    For seq2seq the encoder reads `<sos> prefix <eos>`; the decoder reads `<sos> w` as well
    and predicts only the rest of the word and `<eos>` (labels -100 over the prefix), so it
    sees the letters it continues, as the decoder-only model does. Half the words are read
    whole (an empty prefix), the others split at a random point.
    """

    def __init__(self, words: list[str], tokenizer, batch_tokens: int, seed: int, arch: str):
        self.tok, self.arch, self.seed = tokenizer, arch, seed
        by_len: dict[int, list[list[int]]] = {}
        for ids in tokenizer.encode_batch(words):
            by_len.setdefault(len(ids), []).append(ids)
        self.buckets = {n: torch.tensor(rows) for n, rows in sorted(by_len.items())}
        self.batch_sizes = {n: max(1, batch_tokens // (n + 1)) for n in self.buckets}
        self.steps_per_epoch = sum(
            -(-len(rows) // self.batch_sizes[n]) for n, rows in self.buckets.items()
        )
        self._plan_epoch, self._plan = -1, []

    def _epoch_plan(self, epoch: int) -> list[torch.Tensor]:
        if epoch != self._plan_epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            chunks = []
            for n, rows in self.buckets.items():
                shuffled = rows[torch.randperm(len(rows), generator=g)]
                chunks.extend(shuffled.split(self.batch_sizes[n]))
            order = torch.randperm(len(chunks), generator=g).tolist()
            self._plan, self._plan_epoch = [chunks[i] for i in order], epoch
        return self._plan

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        index = step * world_size + rank
        epoch, i = divmod(index, self.steps_per_epoch)
        letters = self._epoch_plan(epoch)[i]
        if self.arch == "seq2seq":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            split = torch.randint(0, letters.shape[1], (len(letters),), generator=g)
            whole = torch.rand(len(letters), generator=g) < WHOLE_WORDS
            split = split.masked_fill(whole, 0).tolist()
            return self.seq2seq_batch(letters.tolist(), split)
        return self.decoder_batch(letters)

    def eval_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every word once, in a fixed order; seq2seq reads an empty prefix (the whole word is
        predicted, so its loss is comparable with the decoder's)."""
        for n, rows in self.buckets.items():
            for chunk in rows.split(self.batch_sizes[n]):
                if self.arch == "seq2seq":
                    yield self.seq2seq_batch(chunk.tolist(), [0] * len(chunk))
                else:
                    yield self.decoder_batch(chunk)

    def decoder_batch(self, letters: torch.Tensor) -> dict[str, torch.Tensor]:
        B = len(letters)
        sos = torch.full((B, 1), self.tok.bos_id, dtype=torch.long)
        eos = torch.full((B, 1), self.tok.eos_id, dtype=torch.long)
        return {
            "input_ids": torch.cat([sos, letters], dim=1),
            "targets": torch.cat([letters, eos], dim=1),
        }

    def seq2seq_batch(self, words: list[list[int]], split: list[int]) -> dict[str, torch.Tensor]:
        tok = self.tok
        enc = [[tok.bos_id, *w[:k], tok.eos_id] for w, k in zip(words, split, strict=True)]
        labels = [[IGNORE] * k + [*w[k:], tok.eos_id] for w, k in zip(words, split, strict=True)]
        input_ids = pad(enc, tok.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != tok.pad_id).long(),
            "decoder_input_ids": pad([[tok.bos_id, *w] for w in words], tok.pad_id),
            "targets": pad(labels, IGNORE),
        }


def micro_batches(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into consecutive micro-batches of whole rows, each of at most `max_tokens`
    target positions (at least one row). Text windows divide exactly (RunConfig.batch_split)."""
    rows, width = batch["targets"].shape
    per = max(1, max_tokens // width)
    if per >= rows:
        return [batch]
    pieces = {k: v.split(per) for k, v in batch.items()}
    return [dict(zip(pieces, part, strict=True)) for part in zip(*pieces.values(), strict=True)]


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class TokenWindows:
    """Windows of a packed token stream: random ones for training (nanoGPT style), consecutive
    non-overlapping ones for validation. Each target is the token after its input."""

    def __init__(self, tokens: np.ndarray, context: int, batch_tokens: int, seed: int):
        self.tokens, self.context, self.seed = tokens, context, seed
        self.batch_size = max(1, batch_tokens // context)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * world_size + rank)
        high = len(self.tokens) - self.context
        starts = torch.randint(0, high, (self.batch_size,), generator=g).tolist()
        rows = np.stack([self.tokens[s : s + self.context + 1] for s in starts]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}

    def eval_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        n, T = len(self.tokens), self.context
        starts = list(range(0, max(n - 1, 1), T))
        for i in range(0, len(starts), self.batch_size):
            rows = [
                self.tokens[s : s + T + 1].astype(np.int64) for s in starts[i : i + self.batch_size]
            ]
            rows = [r for r in rows if len(r) >= 2]
            if not rows:
                return
            width = max(len(r) for r in rows)
            x = torch.full((len(rows), width - 1), 0, dtype=torch.long)
            y = torch.full((len(rows), width - 1), IGNORE, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(r) - 1] = torch.from_numpy(r[:-1])
                y[j, : len(r) - 1] = torch.from_numpy(r[1:])
            yield {"input_ids": x, "targets": y}
