"""What a run trains and evaluates on: the split, the tokenizer and the batches.

A new run builds them (and records the split in the run directory); a resumed run, another
rank of a distributed run, or `tinylm eval` reloads them from what the run directory recorded.
Batches are per rank: `train.batch_tokens` is split over the ranks and, within a rank, into
micro-batches (`RunConfig.batch_split`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tinylm import atomic
from tinylm.config import RunConfig
from tinylm.data.batching import TokenWindows, WordBatches
from tinylm.data.prepare import cache_root, fingerprint, open_tokens, prepare_tokens
from tinylm.data.text import Corpus, load_corpus, split_documents
from tinylm.data.words import SPLIT_SEED, load_words, split_words
from tinylm.errors import UserError
from tinylm.runs import Run
from tinylm.tokenizer import RULES, Tokenizer, build_bpe, build_char, build_word

VAL_BATCH_TOKENS = 8192  # at least this many tokens per validation forward pass


@dataclass
class RunData:
    tokenizer: Tokenizer
    train: WordBatches | TokenWindows
    val: WordBatches | TokenWindows
    unit: str  # what a target is: "chars" or "tokens"
    micro_tokens: int  # tokens per forward/backward pass (train.micro_batch_tokens resolved)
    preparation: dict | None = None  # text: the token cache's record (sizes, seconds, MB/s)

    def describe(self) -> str:
        p = self.preparation
        if not p:
            return ""
        if p["cached"]:
            return f"token cache reused ({sum(p['tokens'].values()):,} tokens)"
        trained = p.get("tokenizer_seconds")
        return (
            (f"tokenizer trained in {trained:.1f} s; " if trained else "")
            + f"prepared {p['bytes'] / 1e6:.1f} MB into {sum(p['tokens'].values()):,} tokens "
            f"in {p['seconds']:.1f} s ({p['mb_per_s']:.1f} MB/s)"
        )


def build_tokenizer(cfg: RunConfig, texts: list[str]) -> Tokenizer:
    kind, size = cfg.tokenizer.kind, cfg.tokenizer.vocab_size
    if kind == "char":
        return build_char(texts)
    if kind == "word":
        return build_word(texts, size or 10_000)
    return build_bpe(texts, size or 4096, length=len(texts))


def new_run(cfg: RunConfig, out, tokenizer: Tokenizer | None = None, world_size: int = 1):
    """Split the data, build the tokenizer (unless given) and stage the run directory beside
    `out`; the caller commits it. Returns (staged run, data)."""
    if cfg.data.kind == "words":
        words = load_words(cfg.data.source, cfg.data.min_len, cfg.data.max_len)
        splits = split_words(words, cfg.data.val_fraction, cfg.data.test_fraction)
        tokenizer = tokenizer or build_tokenizer(cfg, words)
        data = word_data(cfg, tokenizer, splits, world_size)
        rule = f"unique words shuffled with seed {SPLIT_SEED}; test first, then val"
        counts = {name: len(part) for name, part in splits.items()}
        record = {"source": cfg.data.source, "rule": rule, "counts": counts}
    else:
        corpus = load_text_corpus(cfg)
        split = split_documents(corpus.documents, cfg.data.val_fraction, cfg.data.test_fraction)
        seconds = 0.0
        if tokenizer is None:
            kind = cfg.tokenizer.kind
            key = fingerprint(
                split_key(cfg, corpus), kind, RULES[kind], str(cfg.tokenizer.vocab_size)
            )
            t0 = time.perf_counter()
            tokenizer, trained = cached_tokenizer(cfg, key, [corpus.documents[i] for i in split["train"]])  # fmt: skip
            seconds = time.perf_counter() - t0 if trained else 0.0
        data = text_data(cfg, tokenizer, corpus, split, world_size)
        data.preparation["tokenizer_seconds"] = round(seconds, 3)
        splits = {}
        record = {
            "source": cfg.data.source,
            "fingerprint": corpus.fingerprint,
            "rule": "by document: SHA-1 of its text, as a fraction of 2**64, below "
            "test_fraction -> test, below test_fraction + val_fraction -> val",
            "counts": {name: len(ids) for name, ids in split.items()},
            "val": split["val"],
            "test": split["test"],
        }
    run = Run.stage(out)
    try:
        run.save_config(cfg)
        run.save_tokenizer(tokenizer, cfg)
        for name, part in splits.items():
            run.save_split(name, part)
        run.write_json("split/split.json", record)
    except BaseException:
        run.discard()
        raise
    return run, data


def reload(run: Run, cfg: RunConfig, world_size: int = 1) -> RunData:
    """The same data for an existing run (resume, or a second rank)."""
    tokenizer = run.tokenizer(cfg)
    if cfg.data.kind == "words":
        splits = {name: run.read_split(name) for name in ("train", "val")}
        return word_data(cfg, tokenizer, splits, world_size)
    corpus, split = text_split(run, cfg)
    return text_data(cfg, tokenizer, corpus, split, world_size)


def word_data(cfg: RunConfig, tokenizer: Tokenizer, splits, world_size: int = 1) -> RunData:
    arch, seed = cfg.model.arch, cfg.train.seed
    per_rank, micro = cfg.batch_split(world_size)
    train = WordBatches(splits["train"], tokenizer, per_rank, seed, arch)
    val = WordBatches(splits["val"], tokenizer, max(micro, VAL_BATCH_TOKENS), seed, arch)
    return RunData(tokenizer, train, val, "chars", micro)


def split_key(cfg: RunConfig, corpus: Corpus) -> str:
    """The split is a function of the corpus and the fractions; so is anything cached from it."""
    return f"{corpus.fingerprint}/{cfg.data.val_fraction}/{cfg.data.test_fraction}"


def load_text_corpus(cfg: RunConfig) -> Corpus:
    return load_corpus(cfg.data.source, cfg.data.text_field, cfg.data.hf_split)


def text_split(run: Run, cfg: RunConfig) -> tuple[Corpus, dict[str, list[int]]]:
    """Reload the corpus and its split, and check it is the data the run was trained on."""
    corpus = load_text_corpus(cfg)
    record = run.read_json("split/split.json") or {}
    if record.get("fingerprint") not in (None, corpus.fingerprint):
        raise UserError(
            f"The data at {cfg.data.source} changed since {run.path} was trained on it; "
            "its split would not be the same."
        )
    split = split_documents(corpus.documents, cfg.data.val_fraction, cfg.data.test_fraction)
    return corpus, split


def cached_tokenizer(cfg: RunConfig, key: str, train_docs: list[str]) -> tuple[Tokenizer, bool]:
    """Train the tokenizer on the training documents once per (data, kind, size); return it
    and whether it was trained now."""
    folder = cache_root() / "tokenizers" / key
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder, cfg.tokenizer.kind), False
    tokenizer = build_tokenizer(cfg, train_docs)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.replace_files(folder, tokenizer.save)
    return tokenizer, True


def text_data(cfg: RunConfig, tokenizer: Tokenizer, corpus: Corpus, split, world_size=1):
    meta = prepare_tokens(
        corpus, split, tokenizer, fingerprint(split_key(cfg, corpus), tokenizer.tok.to_str())
    )
    train_tokens, val_tokens = open_tokens(meta, "train"), open_tokens(meta, "val")
    ctx = cfg.model.context_length
    if len(train_tokens) < ctx + 1:
        raise UserError(
            f"The training split has {len(train_tokens):,} tokens, fewer than one training "
            f"sequence ({ctx + 1}); give more text or a smaller model.context_length."
        )
    if len(val_tokens) < 2:
        raise UserError("The validation split is empty; give more documents or a larger data.val_fraction.")  # fmt: skip
    seed = cfg.train.seed
    per_rank, micro = cfg.batch_split(world_size)
    return RunData(
        tokenizer,
        TokenWindows(train_tokens, ctx, per_rank, seed),
        TokenWindows(val_tokens, ctx, max(micro, VAL_BATCH_TOKENS), seed),
        "tokens",
        micro,
        meta,
    )


def train_token_counts(cfg: RunConfig, corpus: Corpus, split, tokenizer: Tokenizer):
    """How often each token occurs in the training split (for the unigram baseline)."""
    import numpy as np
    import torch

    key = fingerprint(split_key(cfg, corpus), tokenizer.tok.to_str())
    tokens = open_tokens(prepare_tokens(corpus, split, tokenizer, key), "train")
    return torch.from_numpy(np.bincount(tokens, minlength=tokenizer.vocab_size).astype(np.int64))
