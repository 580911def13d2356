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
    """Training batches of words, and evaluation batches of every word; what a model reads
    differs by architecture (`PackedWordBatches` for the decoder, `PrefixWordBatches` for the
    encoder-decoder), and each model class names its own (`Model.word_batches`).

    Words are grouped by length (`buckets`); an epoch's plan is shuffled with a generator
    seeded by (seed, epoch), so a step's batch depends on nothing but (seed, step, rank)."""

    def __init__(self, words: list[str], tokenizer, batch_tokens: int, seed: int):
        self.tok, self.seed = tokenizer, seed
        self.words = tokenizer.encode_batch(words)
        by_len: dict[int, list[list[int]]] = {}
        for ids in self.words:
            by_len.setdefault(len(ids), []).append(ids)
        self.buckets = {n: torch.tensor(rows) for n, rows in sorted(by_len.items())}
        self.batch_sizes = {n: max(1, batch_tokens // (n + 1)) for n in self.buckets}
        self._plan_epoch, self._plan = -1, []

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        index = step * world_size + rank
        epoch, i = divmod(index, self.steps_per_epoch)
        if epoch != self._plan_epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._plan, self._plan_epoch = self.epoch_plan(g), epoch
        return self.training_batch(self._plan, i, index)

    def eval_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every word once, in a fixed order, words of one length a batch (no padding)."""
        for n, rows in self.buckets.items():
            yield from map(self.eval_batch, rows.split(self.batch_sizes[n]))


class PackedWordBatches(WordBatches):
    """The decoder's: a word is `<sos> w` predicting `w <eos>`, and training words are
    packed: rows of `row` positions (twice the longest word) each hold several words one after
    another (best fit among the last few rows still open: about 94 % of the positions are
    letters), with `position_ids` restarting at 0 for each word, so a word sees only its own
    letters (Decoder.forward) and the model learns exactly what it would from the words one a
    row. Every batch then has the same shape: one compile, and fewer, longer rows than batches
    of words of one length (bench/README.md: rows of packed words)."""

    def __init__(self, words: list[str], tokenizer, batch_tokens: int, seed: int):
        super().__init__(words, tokenizer, batch_tokens, seed)
        self.row = 2 * (max(self.buckets) + 1)
        self.rows_per_batch = max(1, batch_tokens // self.row)
        rows = pack(self._lengths(), self.row)  # as many as an epoch packs, within 0.1 %
        self.steps_per_epoch = max(1, len(rows) // self.rows_per_batch)

    def _lengths(self, order=None) -> list[int]:
        """Positions each word takes in a packed row: `<sos>` and its letters."""
        return [len(self.words[i]) + 1 for i in order or range(len(self.words))]

    def epoch_plan(self, g: torch.Generator) -> list[list[int]]:
        """The epoch's packed rows (lists of word indices). An epoch is always
        steps_per_epoch batches: rows its packing has beyond those are dropped, rows it lacks
        are taken again from its start (a few words)."""
        order = torch.randperm(len(self.words), generator=g).tolist()
        rows = [[order[j] for j in row] for row in pack(self._lengths(order), self.row)]
        need = self.steps_per_epoch * self.rows_per_batch
        return (rows + rows[: max(0, need - len(rows))])[:need]

    def training_batch(self, plan, i: int, index: int) -> dict[str, torch.Tensor]:
        n = self.rows_per_batch
        return self.packed_batch(
            [[self.words[w] for w in row] for row in plan[i * n : (i + 1) * n]]
        )

    def eval_batch(self, letters: torch.Tensor) -> dict[str, torch.Tensor]:
        B = len(letters)
        sos = torch.full((B, 1), self.tok.bos_id, dtype=torch.long)
        eos = torch.full((B, 1), self.tok.eos_id, dtype=torch.long)
        return {
            "input_ids": torch.cat([sos, letters], dim=1),
            "targets": torch.cat([letters, eos], dim=1),
        }

    def packed_batch(self, rows: list[list[list[int]]]) -> dict[str, torch.Tensor]:
        """Rows of words packed one after another, each `<sos> w` predicting `w <eos>`; the
        rest of a row is padding (`<eos>` inputs, ignored targets, each at position 0: a
        sequence of one token, that sees only itself)."""
        bos, eos = self.tok.bos_id, self.tok.eos_id
        inputs, targets, positions = [], [], []
        for words in rows:
            x, y, p = [], [], []
            for w in words:
                x += [bos, *w]
                y += [*w, eos]
                p += range(len(w) + 1)
            pad = self.row - len(x)
            inputs.append(x + [eos] * pad)
            targets.append(y + [IGNORE] * pad)
            positions.append(p + [0] * pad)
        return {
            "input_ids": torch.tensor(inputs),
            "targets": torch.tensor(targets),
            "position_ids": torch.tensor(positions),
        }


class PrefixWordBatches(WordBatches):
    """The encoder-decoder's: the encoder reads `<sos> prefix <eos>`; the decoder reads
    `<sos> w` as well and predicts only the rest of the word and `<eos>` (labels -100 over the
    prefix), so it sees the letters it continues, as the decoder-only model does. Half the
    words are read whole (an empty prefix), the others split at a random point. Batches hold
    words of one length and carry no padding; evaluation reads every word whole."""

    def __init__(self, words: list[str], tokenizer, batch_tokens: int, seed: int):
        super().__init__(words, tokenizer, batch_tokens, seed)
        self.steps_per_epoch = sum(
            -(-len(rows) // self.batch_sizes[n]) for n, rows in self.buckets.items()
        )

    def epoch_plan(self, g: torch.Generator) -> list[torch.Tensor]:
        chunks = []
        for n, rows in self.buckets.items():
            shuffled = rows[torch.randperm(len(rows), generator=g)]
            chunks.extend(shuffled.split(self.batch_sizes[n]))
        order = torch.randperm(len(chunks), generator=g).tolist()
        return [chunks[i] for i in order]

    def training_batch(self, plan, i: int, index: int) -> dict[str, torch.Tensor]:
        letters = plan[i]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        split = torch.randint(0, letters.shape[1], (len(letters),), generator=g)
        whole = torch.rand(len(letters), generator=g) < WHOLE_WORDS
        return self.prefix_batch(letters.tolist(), split.masked_fill(whole, 0).tolist())

    def eval_batch(self, letters: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.prefix_batch(letters.tolist(), [0] * len(letters))

    def prefix_batch(self, words: list[list[int]], split: list[int]) -> dict[str, torch.Tensor]:
        tok = self.tok
        enc = [[tok.bos_id, *w[:k], tok.eos_id] for w, k in zip(words, split, strict=True)]
        labels = [[IGNORE] * k + [*w[k:], tok.eos_id] for w, k in zip(words, split, strict=True)]
        input_ids = pad_rows(enc, tok.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != tok.pad_id).long(),
            "decoder_input_ids": pad_rows([[tok.bos_id, *w] for w in words], tok.pad_id),
            "targets": pad_rows(labels, IGNORE),
        }


def micro_batches(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into consecutive micro-batches of whole rows, each of at most `max_tokens`
    target positions (at least one row). Text windows divide exactly (data/splits.py)."""
    rows, width = batch["targets"].shape
    per = max(1, max_tokens // width)
    if per >= rows:
        return [batch]
    pieces = {k: v.split(per) for k, v in batch.items()}
    return [dict(zip(pieces, part, strict=True)) for part in zip(*pieces.values(), strict=True)]


def pack(lengths: list[int], width: int, window: int = 8) -> list[list[int]]:
    """Indices of the items, in rows of at most `width` positions: each item goes to the
    fullest of the last `window` open rows that has room for it, or opens a new row."""
    open_: list[list] = []  # [room, indices]
    rows: list[list[int]] = []
    shortest = min(lengths, default=1)
    for i, n in enumerate(lengths):
        best = None
        for r in open_:
            if n <= r[0] and (best is None or r[0] < best[0]):
                best = r
        if best is None:
            best = [width, []]
            open_.append(best)
            if len(open_) > window:
                rows.append(open_.pop(0)[1])
        best[0] -= n
        best[1].append(i)
        if best[0] < shortest:  # full: make way for a new row
            open_.remove(best)
            rows.append(best[1])
    rows.extend(r[1] for r in open_)
    return rows


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-padded to the longest row, as one tensor."""
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
