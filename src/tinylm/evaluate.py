"""Honest evaluation: the model's figures next to baselines, on data it never trained on.
Numbers only: results.py says how they show.

Words (benchmark W of BENCHMARKS.md): M1 bits per character over len(w)+1 targets per word
(each letter given the letters before it, then <eos>); M2 next-character accuracy over the
targets after the first letter; accuracy per letter; the same for a uniform, a unigram and a
bigram model; and, as makemore reports, whether sampled words are in the training set, the test
set, or new. Text (benchmark T): bits per byte, loss per token, top-1/top-5 accuracy, `<UNK>`
rate and a unigram baseline. Both score through inference/logprobs.py, as `tinylm tokens` and
the server's `echo` do.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from tinylm.errors import UserError
from tinylm.inference.logprobs import score
from tinylm.results import TextEvaluation, WordEvaluation

LN2 = math.log(2)


@dataclass
class TargetScores:
    """One entry per target: its log-probability (nats), the top-1 guess, and its position
    (0: predicted from the start token alone)."""

    logp: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    position: torch.Tensor


def word_scores(model, tokenizer, words: list[str], batch_tokens: int = 16_384) -> TargetScores:
    """Each word read as `<sos> w <eos>`: every letter and the end given what precedes it."""
    sequences = [
        [tokenizer.bos_id, *ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(words)
    ]
    context = max(map(len, sequences))
    scores = score(model, sequences, context, top=1, batch_tokens=batch_tokens)
    return TargetScores(
        torch.cat([s.logp for s in scores]),
        torch.cat([s.top_ids[:, 0] for s in scores]),
        torch.cat([s.targets for s in scores]),
        torch.cat([torch.arange(len(s.targets)) for s in scores]),
    )


def word_figures(scores: TargetScores, tokenizer) -> dict:
    """M1, M2 and accuracy per letter from target scores."""
    later = scores.position >= 1
    correct = scores.pred == scores.target
    per_letter = {}
    for tid in sorted(set(scores.target[later].tolist())):
        sel = later & (scores.target == tid)
        name = "<eos>" if tid == tokenizer.eos_id else tokenizer.id_to_token(tid)
        per_letter[name] = round(float(correct[sel].float().mean()), 4)
    return {
        "bits_per_char": float(-scores.logp.mean() / LN2),
        "next_char_accuracy": float(correct[later].float().mean()),
        "targets": int(len(scores.target)),
        "accuracy_per_letter": per_letter,
    }


def ngram_baselines(train_words: list[str], test_words: list[str]) -> dict:
    """Uniform, unigram and bigram (add-one smoothing) character models, scored like M1/M2."""
    eos = "\n"
    alphabet = sorted({c for w in train_words + test_words for c in w}) + [eos]
    k = len(alphabet)
    uni = Counter(c for w in train_words for c in w + eos)
    bi = Counter((a, b) for w in train_words for a, b in zip("^" + w, w + eos, strict=True))
    prev_count = Counter(a for w in train_words for a in "^" + w)
    uni_total = sum(uni.values())

    def p_uni(c):
        return (uni[c] + 1) / (uni_total + k)

    def p_bi(a, c):
        return (bi[(a, c)] + 1) / (prev_count[a] + k)

    best_uni = max(alphabet, key=p_uni)
    best_bi = {a: max(alphabet, key=lambda c, a=a: p_bi(a, c)) for a in ["^", *alphabet]}
    nll = {"uniform": 0.0, "unigram": 0.0, "bigram": 0.0}
    hits = {"unigram": 0, "bigram": 0}
    n_all = n_later = 0
    for w in test_words:
        for i, (a, c) in enumerate(zip("^" + w, w + eos, strict=True)):
            nll["uniform"] += math.log(k)
            nll["unigram"] -= math.log(p_uni(c))
            nll["bigram"] -= math.log(p_bi(a, c))
            n_all += 1
            if i >= 1:
                n_later += 1
                hits["unigram"] += c == best_uni
                hits["bigram"] += c == best_bi[a]
    return {
        "uniform": {"bits_per_char": nll["uniform"] / n_all / LN2, "next_char_accuracy": 1 / k},
        "unigram": {
            "bits_per_char": nll["unigram"] / n_all / LN2,
            "next_char_accuracy": hits["unigram"] / n_later,
        },
        "bigram": {
            "bits_per_char": nll["bigram"] / n_all / LN2,
            "next_char_accuracy": hits["bigram"] / n_later,
        },
    }


def sample_novelty(words: list[str], known: dict[str, set]) -> dict:
    """Where sampled words come from: a split of the data (`known`: split name -> words), or
    none of them (new)."""
    n = len(words)
    where = [next((name for name, ws in known.items() if w in ws), "new") for w in words]
    result = {"samples": n, **{f"in_{name}": where.count(name) / n for name in known}}
    return {**result, "new": where.count("new") / n, "examples": words[:20]}


def evaluate_words(
    model, tokenizer, test_words: list[str], train_words: list[str]
) -> WordEvaluation:
    """M1, M2, accuracy per letter and the n-gram baselines on `test_words`."""
    figures = word_figures(word_scores(model, tokenizer, test_words), tokenizer)
    baselines = ngram_baselines(train_words, test_words)
    return WordEvaluation(words=len(test_words), baselines=baselines, **figures)


def evaluate_text(
    model,
    tokenizer,
    docs: list[str],
    *,
    context: int,
    batch_tokens: int = 16_384,
    unigram_counts: torch.Tensor | None = None,
) -> TextEvaluation:
    """Benchmark T's figures on `docs`: each document scored from its start (end-of-text as
    context) in windows of at most `context` tokens that overlap by half, so every token is
    predicted with at least half a context of history, and exactly once (inference/logprobs.py).

    Bits per byte charge every <UNK> its own loss plus 8 bits per UTF-8 byte of the word it
    replaced (the word spelled out by a uniform byte model).
    """
    encodings = tokenizer.tok.encode_batch(list(docs), add_special_tokens=False)
    sequences = [[tokenizer.bos_id, *enc.ids] for enc in encodings]
    scores = score(model, sequences, context, batch_tokens=batch_tokens)
    targets = torch.cat([s.targets for s in scores])
    if not len(targets):
        raise UserError("There is no text to evaluate (every document is empty).")
    count, nll = len(targets), -float(torch.cat([s.logp for s in scores]).double().sum())
    top5 = torch.cat([s.top_ids for s in scores])
    unk_bytes = unknown_bytes(tokenizer, docs, encodings)
    total_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    unk = tokenizer.unk_id
    baselines = {}
    if unigram_counts is not None:
        counts = unigram_counts.double()
        log_unigram = ((counts + 1) / (counts.sum() + len(counts))).log()
        baseline = -float(log_unigram[targets].sum()) / LN2 + 8 * unk_bytes
        baselines["unigram"] = {"bits_per_byte": baseline / total_bytes}
    return TextEvaluation(
        documents=len(docs),
        tokens=count,
        bytes=total_bytes,
        loss_per_token=nll / count,
        perplexity=math.exp(nll / count),
        bits_per_byte=(nll / LN2 + 8 * unk_bytes) / total_bytes,
        top1_accuracy=float((top5[:, 0] == targets).sum()) / count,
        top5_accuracy=float((top5 == targets[:, None]).any(dim=-1).sum()) / count,
        unk_rate=float((targets == unk).sum()) / count if unk is not None else 0.0,
        unk_bits_per_byte=8 * unk_bytes / total_bytes,
        accuracy_by_position=accuracy_by_position(scores, context),
        baselines=baselines,
    )


def accuracy_by_position(scores, context: int, buckets: int = 8) -> list[tuple[str, float]]:
    """Top-1 accuracy by position in the first window of each document (position p predicts
    the token after p tokens of history): how much a prediction gains from the history."""
    hits, counts = torch.zeros(context), torch.zeros(context)
    for s in scores:
        n = min(len(s.targets), context)
        hits[:n] += (s.top_ids[:n, 0] == s.targets[:n]).float()
        counts[:n] += 1
    width = -(-context // buckets)
    out = []
    for b in range(0, context, width):
        if counts[b : b + width].sum():
            label = f"{b + 1}–{min(context, b + width)}"
            out.append((label, float(hits[b : b + width].sum() / counts[b : b + width].sum())))
    return out


def unknown_bytes(tokenizer, docs, encodings) -> int:
    """UTF-8 bytes of the text that the tokenizer turned into <UNK>."""
    if tokenizer.unk_id is None:
        return 0
    return sum(
        len(doc[a:b].encode("utf-8"))
        for doc, enc in zip(docs, encodings, strict=True)
        for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)
        if i == tokenizer.unk_id
    )
