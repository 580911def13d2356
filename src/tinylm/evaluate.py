"""Honest evaluation: the model's figures next to baselines, on data it never trained on.

Words (benchmark W of BENCHMARKS.md): M1 bits per character over len(w)+1 targets per word
(each letter given the letters before it, then <eos>); M2 next-character accuracy over the
targets after the first letter; accuracy per letter; the same for a uniform, a unigram and a
bigram model; and, as makemore reports, whether sampled words are in the training set, the test
set, or new.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylm.data.batching import IGNORE, WordBatches
from tinylm.data.words import load_words
from tinylm.device import autocast, autocast_dtype
from tinylm.errors import UserError

LN2 = math.log(2)


@dataclass
class TargetScores:
    """One entry per target: its log-probability (nats), the top-1 guess, and its position."""

    logp: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    position: torch.Tensor


@torch.no_grad()
def score_targets(model, batches, device=None, precision: str = "fp32") -> TargetScores:
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    parts = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = batch["targets"]
        with autocast(device, dtype):
            logits = model(**batch).logits
        logp = logits.float().log_softmax(dim=-1)
        keep = targets != IGNORE
        safe = targets.clamp(min=0)
        position = torch.arange(targets.shape[1], device=device).expand_as(targets)
        parts.append(
            (
                logp.gather(-1, safe[..., None]).squeeze(-1)[keep].cpu(),
                logp.argmax(dim=-1)[keep].cpu(),
                targets[keep].cpu(),
                position[keep].cpu(),
            )
        )
    return TargetScores(*(torch.cat(p) for p in zip(*parts, strict=True)))


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


def sample_novelty(loaded, known: dict[str, set], n: int, seed: int) -> dict:
    """Sample n words from scratch (temperature 1) and say where they come from: a split of
    the data (`known`: split name -> words), or none of them (new)."""
    from tinylm.inference import Sampling

    words = [c.text for c in loaded.sample([""], Sampling(1.0), n=n, seed=seed)]
    where = [next((name for name, ws in known.items() if w in ws), "new") for w in words]
    result = {"samples": n, **{f"in_{name}": where.count(name) / n for name in known}}
    return {**result, "new": where.count("new") / n, "examples": words[:20]}


def evaluate_words(
    model, tokenizer, test_words, train_words, *, batch_tokens=8192, precision="fp32"
) -> dict:
    """M1, M2, accuracy per letter and the n-gram baselines on `test_words`."""
    batches = WordBatches(test_words, tokenizer, batch_tokens, seed=0, arch=_arch(model))
    scores = score_targets(model, batches.eval_batches(), precision=precision)
    result = {"words": len(test_words), **word_figures(scores, tokenizer)}
    result["baselines"] = ngram_baselines(train_words, test_words)
    return result


def _arch(model) -> str:
    from tinylm.models import Seq2Seq

    return "seq2seq" if isinstance(model, Seq2Seq) else "decoder"


def format_word_table(result: dict) -> str:
    rows = [("model", result["bits_per_char"], result["next_char_accuracy"])]
    for name, fig in result["baselines"].items():
        rows.append((f"{name} baseline", fig["bits_per_char"], fig["next_char_accuracy"]))
    lines = [
        f"Test words: {result['words']:,} ({result['targets']:,} targets)",
        f"{'':<20}{'bits/char (M1)':>16}{'accuracy (M2)':>16}",
    ]
    lines += [f"{name:<20}{m1:>16.3f}{m2:>16.3f}" for name, m1, m2 in rows]
    letters = result["accuracy_per_letter"]
    lines.append("accuracy per letter: " + "  ".join(f"{k} {v:.2f}" for k, v in letters.items()))
    s = result.get("sampled_words")
    if s:
        lines.append(
            f"{s['samples']} sampled words: {s['in_train']:.1%} in the training split, "
            f"{s['in_val']:.1%} in validation, {s['in_test']:.1%} in test, {s['new']:.1%} "
            f"in none of them (e.g. {', '.join(s['examples'][:8])})"
        )
    return "\n".join(lines)


def evaluate_text(
    model,
    tokenizer,
    docs: list[str],
    *,
    context: int,
    batch_tokens: int = 16_384,
    unigram_counts: torch.Tensor | None = None,
) -> dict:
    """Benchmark T's figures on `docs`: each document scored from its start (end-of-text as
    context) in windows of at most `context` tokens that overlap by half, so every token is
    predicted with at least half a context of history, and exactly once (inference/scoring.py).

    Bits per byte charge every <UNK> its own loss plus 8 bits per UTF-8 byte of the word it
    replaced (the word spelled out by a uniform byte model).
    """
    from tinylm.inference.scoring import score

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
    result = {
        "documents": len(docs),
        "tokens": count,
        "bytes": total_bytes,
        "loss_per_token": nll / count,
        "perplexity": math.exp(nll / count),
        "bits_per_byte": (nll / LN2 + 8 * unk_bytes) / total_bytes,
        "top1_accuracy": float((top5[:, 0] == targets).sum()) / count,
        "top5_accuracy": float((top5 == targets[:, None]).any(dim=-1).sum()) / count,
        "unk_rate": float((targets == tokenizer.unk_id).sum()) / count
        if tokenizer.unk_id is not None
        else 0.0,  # fmt: skip
        "unk_bits_per_byte": 8 * unk_bytes / total_bytes,
    }
    if unigram_counts is not None:
        counts = unigram_counts.double()
        log_unigram = ((counts + 1) / (counts.sum() + len(counts))).log()
        baseline = -float(log_unigram[targets].sum()) / LN2 + 8 * unk_bytes
        result["baselines"] = {"unigram": {"bits_per_byte": baseline / total_bytes}}
    return result


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


def format_text_table(result: dict) -> str:
    lines = [
        f"Documents: {result['documents']:,}, {result['tokens']:,} tokens, {result['bytes']:,} bytes",
        f"  loss per token      {result['loss_per_token']:.4f} nats (perplexity {result['perplexity']:,.1f})",
        f"  bits per byte       {result['bits_per_byte']:.4f}",
        f"  top-1 / top-5       {result['top1_accuracy']:.1%} / {result['top5_accuracy']:.1%}",
    ]
    if result["unk_rate"]:
        lines.append(
            f"  <UNK> rate          {result['unk_rate']:.1%} (charged {result['unk_bits_per_byte']:.3f}"
            " bits/byte for the words they hide; case and punctuation are not predicted)"
        )
    for name, fig in result.get("baselines", {}).items():
        lines.append(f"  {name} baseline    {fig['bits_per_byte']:.4f} bits per byte")
    return "\n".join(lines)


def evaluate_run(run, data: str | None = None, samples: int = 1000, seed: int = 0) -> dict:
    """Evaluate a run's best weights on its test split (or on `data`); save the figures."""
    from tinylm.inference import load

    loaded = load(run.path)
    if loaded.task.words:
        result = _evaluate_words_run(loaded, data, samples, seed)
    else:
        result = _evaluate_text_run(run, loaded.cfg, loaded.model, loaded.tokenizer, data)
    result["data"] = data or "test split"
    if loaded.caveat:
        result["caveat"] = loaded.caveat
    name = "eval.json" if not data else f"eval-{Path(data.replace('hf:', '')).stem}.json"
    run.write_json(name, result)
    return result


def _evaluate_words_run(loaded, data, samples, seed) -> dict:
    run, cfg, tokenizer = loaded.run, loaded.cfg, loaded.tokenizer
    splits = {name: run.read_split(name) for name in ("train", "val", "test")}
    if data:
        words = load_words(data, cfg.data.min_len, cfg.data.max_len)
        vocab = tokenizer.tok.get_vocab()
        usable = [w for w in words if all(c in vocab for c in w)]
        skipped = len(words) - len(usable)
        words = usable
    else:
        words, skipped = splits["test"], 0
        if not words:
            raise UserError(
                f"{run.path} has no test split (data.test_fraction was 0); pass --data FILE."
            )
    if not words:
        raise UserError(f"No word in {data} can be written with this model's characters.")
    result = evaluate_words(loaded.model, tokenizer, words, splits["train"])
    if samples:
        known = {name: set(ws) for name, ws in splits.items()}
        result["sampled_words"] = sample_novelty(loaded, known, samples, seed)
    result["skipped_words"] = skipped
    return result


def _evaluate_text_run(run, cfg, model, tokenizer, data) -> dict:
    from tinylm import training_data
    from tinylm.data.text import load_corpus

    corpus, split = training_data.text_split(run, cfg)
    if data:
        docs = load_corpus(data, cfg.data.text_field, cfg.data.hf_split).documents
    else:
        docs = [corpus.documents[i] for i in split["test"]]
        if not docs:
            raise UserError(
                f"{run.path} has no test documents (data.test_fraction was 0); pass --data SRC."
            )
    counts = training_data.train_token_counts(cfg, corpus, split, tokenizer)
    return evaluate_text(
        model, tokenizer, docs, context=cfg.model.context_length, unigram_counts=counts
    )
