"""What a run trains and evaluates on: its data split into train / val / test, the tokenizer
built from it, and the batches. One class per task (a word list, or a text corpus) behind one
contract, chosen by the task (tasks.py):

    Data.new(cfg)                     read the source and split it
    data.build_tokenizer(cfg)         the tokenizer, and the seconds spent training it
    data.save(run_dir)                record the split in the run directory
    Data.reload(run_dir, cfg)         the same split again (resume, another rank, evaluation)
    Data.batch_split(cfg, world_size) (tokens per rank, tokens per micro-batch), checked
    data.batches(cfg, tokenizer, word_batches, per_rank, micro)
                                      (training batches, validation batches, preparation)

Batches are per rank: `train.batch_tokens` is split over the ranks and, within a rank, into
micro-batches (`batch_split`, resolved once when the run is planned).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from tinylm import atomic
from tinylm.config import RunConfig
from tinylm.data.batching import TokenWindows
from tinylm.data.prepare import cache_root, fingerprint, open_tokens, prepare_tokens
from tinylm.data.text import (
    SAMPLE_CHARS,
    Corpus,
    Splitter,
    open_corpus,
    split_documents_of,
    training_sample,
)
from tinylm.data.words import SPLIT_SEED, load_words, split_words
from tinylm.errors import UserError
from tinylm.tokenizer import RULES, Tokenizer, train_tokenizer

VAL_BATCH_TOKENS = 8192  # at least this many tokens per validation forward pass
AUTO_MICRO_TOKENS = 16_384  # train.micro_batch_tokens=0: at most this many tokens per pass


def per_rank_tokens(cfg: RunConfig, world_size: int) -> int:
    t = cfg.train
    if t.batch_tokens < world_size:
        raise UserError(
            f"train.batch_tokens is {t.batch_tokens}; it must be at least one token per "
            f"rank ({world_size})."
        )
    return t.batch_tokens // world_size


class WordData:
    """A word list, split deterministically (words.split_words), the split kept as word lists
    in the run directory (split/train.txt ...)."""

    unit = "chars"  # what a target is

    def __init__(self, source: str, splits: dict[str, list[str]]):
        self.source, self.splits = source, splits

    @staticmethod
    def batch_split(cfg: RunConfig, world_size: int = 1) -> tuple[int, int]:
        """(tokens per rank, tokens per micro-batch) of a step of `train.batch_tokens` over
        `world_size` ranks: batches hold whole words, so these are targets to come close to."""
        per_rank = per_rank_tokens(cfg, world_size)
        return per_rank, min(per_rank, cfg.train.micro_batch_tokens or AUTO_MICRO_TOKENS)

    @classmethod
    def new(cls, cfg: RunConfig) -> WordData:
        words = load_words(cfg.data.source, cfg.data.min_len, cfg.data.max_len)
        return cls(
            cfg.data.source, split_words(words, cfg.data.val_fraction, cfg.data.test_fraction)
        )

    @classmethod
    def reload(cls, run_dir, cfg: RunConfig) -> WordData:
        names = ("train", "val", "test")
        return cls(cfg.data.source, {name: run_dir.read_split(name) for name in names})

    def build_tokenizer(self, cfg: RunConfig) -> tuple[Tokenizer, float]:
        words = [w for part in self.splits.values() for w in part]
        return train_tokenizer(cfg.tokenizer.kind, words), 0.0

    def save(self, run_dir) -> None:
        for name, part in self.splits.items():
            run_dir.save_split(name, part)
        rule = f"unique words shuffled with seed {SPLIT_SEED}; test first, then val"
        counts = {name: len(part) for name, part in self.splits.items()}
        run_dir.write_json(
            "split/split.json", {"source": self.source, "rule": rule, "counts": counts}
        )

    def batches(self, cfg: RunConfig, tokenizer, word_batches, per_rank: int, micro: int):
        seed = cfg.train.seed
        train = word_batches(self.splits["train"], tokenizer, per_rank, seed)
        val = word_batches(self.splits["val"], tokenizer, max(micro, VAL_BATCH_TOKENS), seed)
        return train, val, None


class TextData:
    """Documents from a corpus, split by a hash of their text (text.Splitter) as the corpus is
    streamed; the run directory records the corpus's fingerprint, the split's counts and the
    held-out documents' indices."""

    unit = "tokens"

    def __init__(self, cfg: RunConfig, corpus: Corpus, saved: dict | None = None):
        self.cfg, self.corpus, self.saved = cfg, corpus, saved
        self.source = cfg.data.source
        self.split: dict | None = None  # the split's record, once the tokens are prepared

    @staticmethod
    def batch_split(cfg: RunConfig, world_size: int = 1) -> tuple[int, int]:
        """(tokens per rank, tokens per micro-batch) of a step of `train.batch_tokens` over
        `world_size` ranks: text windows divide exactly, or the settings are refused."""
        t, ctx = cfg.train, cfg.model.context_length
        per_rank = per_rank_tokens(cfg, world_size)
        if t.batch_tokens % (ctx * world_size):
            ranks = f" x {world_size} ranks" if world_size > 1 else ""
            near = max(1, round(t.batch_tokens / (ctx * world_size))) * ctx * world_size
            raise UserError(
                f"train.batch_tokens is {t.batch_tokens}; for text it must be a multiple of "
                f"model.context_length ({ctx}){ranks}, e.g. {near}."
            )
        rows = per_rank // ctx
        if t.micro_batch_tokens == 0:  # the fewest equal passes of at most AUTO_MICRO_TOKENS
            passes = next(
                n
                for n in range(1, rows + 1)
                if rows % n == 0 and (rows // n * ctx <= AUTO_MICRO_TOKENS or n == rows)
            )
            return per_rank, per_rank // passes
        micro = min(t.micro_batch_tokens, per_rank)
        if micro % ctx or per_rank % micro:
            raise UserError(
                f"train.micro_batch_tokens is {t.micro_batch_tokens}; for text it must be a "
                f"multiple of model.context_length ({ctx}) that divides the {per_rank} tokens "
                "of each rank's batch."
            )
        return per_rank, micro

    @classmethod
    def new(cls, cfg: RunConfig) -> TextData:
        d = cfg.data
        return cls(cfg, open_corpus(d.source, d.text_field, d.hf_split, d.hf_config))

    @classmethod
    def reload(cls, run_dir, cfg: RunConfig) -> TextData:
        """The corpus again, checked to be the data the run was trained on. A hub run recorded
        before corpora streamed has a fingerprint of another kind (of `datasets`' arrow
        cache, with the rule of that time): its split's counts are still checked (`tokens`)."""
        data = cls.new(cfg)
        record = run_dir.read_json("split/split.json") or {}
        saved = record.get("fingerprint")
        if str(saved).startswith("hf-") and record.get("rule") != Splitter.RULE:
            saved = None
        if saved not in (None, data.corpus.fingerprint):
            raise UserError(
                f"The data at {cfg.data.source} changed since {run_dir.path} was trained on "
                "it; its split would not be the same."
            )
        data.saved = {"path": run_dir.path, "counts": record.get("counts")}
        return data

    @property
    def fractions(self) -> tuple[float, float]:
        return self.cfg.data.val_fraction, self.cfg.data.test_fraction

    def documents(self, name: str) -> list[str]:
        """The documents of one split, streamed from the corpus (only they are kept)."""
        return split_documents_of(self.corpus, name, *self.fractions)

    @property
    def key(self) -> str:
        """The split is a function of the corpus, its text field and the fractions; so is all
        cached from it."""
        d = self.cfg.data
        return f"{self.corpus.fingerprint}/{d.text_field}/{d.val_fraction}/{d.test_fraction}"

    def build_tokenizer(self, cfg: RunConfig) -> tuple[Tokenizer, float]:
        """Trained on a sample of the training documents (text.SAMPLE_CHARS) once per (data,
        kind, size), then cached; returns it and the seconds spent sampling and training it
        (0 when it came from the cache)."""
        kind, size = cfg.tokenizer.kind, cfg.tokenizer.vocab_size
        parts = (self.key, kind, RULES[kind], str(size), f"sample{SAMPLE_CHARS}")
        folder = cache_root() / "tokenizers" / fingerprint(*parts)
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.load(folder, kind), 0.0
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(kind, training_sample(self.corpus, *self.fractions), size)
        seconds = time.perf_counter() - t0
        folder.mkdir(parents=True, exist_ok=True)
        atomic.replace_files(folder, tokenizer.save)
        return tokenizer, seconds

    def save(self, run_dir) -> None:
        """Record the split (after `tokens`, which finds it)."""
        run_dir.write_json(
            "split/split.json",
            {
                "source": self.source,
                "fingerprint": self.corpus.fingerprint,
                "rule": Splitter.RULE,
                **self.split,
            },
        )

    def tokens(self, tokenizer: Tokenizer) -> dict:
        """The packed token files of every split (data/prepare.py), from the cache if there."""
        key = fingerprint(self.key, tokenizer.tok.to_str())
        meta = prepare_tokens(self.corpus, self.fractions, tokenizer, key)
        self.split = meta["split"]
        saved = (self.saved or {}).get("counts")
        if saved and saved != self.split["counts"]:
            raise UserError(
                f"The documents of {self.source} split differently from when "
                f"{self.saved['path']} was trained on them ({saved} then, "
                f"{self.split['counts']} now); train a new run."
            )
        return meta

    def batches(self, cfg: RunConfig, tokenizer, word_batches, per_rank: int, micro: int):
        meta = self.tokens(tokenizer)
        train_tokens, val_tokens = open_tokens(meta, "train"), open_tokens(meta, "val")
        ctx = cfg.model.context_length
        if len(train_tokens) < ctx + 1:
            raise UserError(
                f"The training split has {len(train_tokens):,} tokens, fewer than one training "
                f"sequence ({ctx + 1}); give more text or a smaller model.context_length."
            )
        if len(val_tokens) < 2:
            raise UserError(
                "The validation split is empty; give more documents or a larger data.val_fraction."
            )
        seed = cfg.train.seed
        train = TokenWindows(train_tokens, ctx, per_rank, seed)
        val = TokenWindows(val_tokens, ctx, max(micro, VAL_BATCH_TOKENS), seed)
        return train, val, meta

    def train_token_counts(self, tokenizer: Tokenizer) -> torch.Tensor:
        """How often each token occurs in the training split (for the unigram baseline)."""
        tokens = open_tokens(self.tokens(tokenizer), "train")
        counts = np.bincount(tokens, minlength=tokenizer.vocab_size).astype(np.int64)
        return torch.from_numpy(counts)
