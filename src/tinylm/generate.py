"""Sampling: word completion for character models, text generation for text models.

The decoder samples with a key/value cache, so each new token costs one step of the model on
one position. Temperature 0 means greedy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tinylm.errors import UserError
from tinylm.models import Decoder, Seq2Seq


def check_sampling(temperature: float, top_k: int = 0, top_p: float = 1.0) -> None:
    if temperature < 0:
        raise UserError(f"Temperature must be 0 (greedy) or more, not {temperature}.")
    if top_k < 0:
        raise UserError(f"top-k must be 0 (off) or more, not {top_k}.")
    if not 0 < top_p <= 1:
        raise UserError(f"top-p must be in (0, 1], not {top_p}.")


def pick_next(logits, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the token that crosses p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def stream_tokens(
    model: Decoder,
    prompt: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num: int = 1,
    stop_id: int | None = None,
    banned: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `num` sequences, one step at a time, until every
    sequence has produced `stop_id` or `max_new_tokens` tokens."""
    device = model.rope_cos.device
    ctx = model.cfg.context_length
    tokens = torch.tensor([prompt] * num, dtype=torch.long, device=device)[:, -ctx:]
    cache = model.new_cache(num)
    logits = model(tokens, cache=cache).logits[:, -1]
    done = torch.zeros(num, dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        if banned:
            logits[:, list(banned)] = float("-inf")
        nxt = pick_next(logits, temperature, top_k, top_p, generator)
        yield nxt
        if stop_id is not None:
            done |= nxt == stop_id
            if bool(done.all()):
                return
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if i == max_new_tokens - 1:
            return
        if cache.pos >= ctx:  # context full: keep the latest half and re-read it
            tokens = tokens[:, -(ctx // 2) :]
            cache = model.new_cache(num)
            logits = model(tokens, cache=cache).logits[:, -1]
        else:
            logits = model(nxt[:, None], cache=cache).logits[:, -1]


@dataclass
class Completion:
    word: str
    finished: bool  # ended with <eos> rather than at the length limit


def complete(
    model,
    tokenizer,
    prefix: str,
    *,
    num: int = 1,
    temperature: float = 1.0,
    max_length: int = 15,
    generator: torch.Generator | None = None,
) -> list[Completion]:
    """Complete `prefix` into `num` words of at most `max_length` letters, stopping at <eos>."""
    check_sampling(temperature)
    if tokenizer.kind != "char":
        raise UserError("`complete` is for character models; use `tinylm generate` for text.")
    tokenizer.check_chars(prefix)
    prefix_ids = tokenizer.encode(prefix)
    budget = max_length - len(prefix_ids) + 1  # letters still allowed, plus <eos>
    if budget <= 0:
        return [Completion(prefix, False) for _ in range(num)]
    eos = tokenizer.eos_id
    space = tokenizer.tok.token_to_id(" ")  # in the vocabulary, never inside a word
    banned = tuple(i for i in (tokenizer.pad_id, tokenizer.bos_id, space) if i is not None)
    if isinstance(model, Seq2Seq):
        dev = next(model.parameters()).device
        enc = torch.tensor([[tokenizer.bos_id, *prefix_ids, eos]] * num, device=dev)
        mask = torch.ones_like(enc)
        rows = model.complete(enc, mask, budget, temperature, banned, generator).tolist()
    else:
        budget = min(budget, model.cfg.context_length - len(prefix_ids))
        steps = list(
            stream_tokens(
                model,
                [tokenizer.bos_id, *prefix_ids],
                max_new_tokens=budget,
                temperature=temperature,
                num=num,
                stop_id=eos,
                banned=banned,
                generator=generator,
            )
        )
        rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(num)]
    out = []
    for row in rows:
        finished = eos in row
        letters = row[: row.index(eos)] if finished else row[: max_length - len(prefix_ids)]
        out.append(Completion(prefix + tokenizer.decode(letters), finished))
    return out


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def generate_text(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 25,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces, stopping at end-of-text.

    Pieces are the new part of the decoded text, so word-level tokens come with their spaces
    and a UTF-8 character split over byte-level tokens is held back until it is whole.
    """
    check_sampling(temperature, top_k, top_p)
    if isinstance(model, Seq2Seq):
        raise UserError("This is a seq2seq word model; use `tinylm complete RUN PREFIX`.")
    if max_new_tokens < 1:
        raise UserError(f"max-new-tokens must be at least 1, not {max_new_tokens}.")
    tokenizer.check_chars(prompt)
    prompt_ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    # <UNK> says nothing to a reader, so it is never sampled
    banned = tuple(i for i in (tokenizer.pad_id, tokenizer.unk_id) if i is not None)
    new: list[int] = []
    shown = ""
    for nxt in stream_tokens(
        model,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_id=tokenizer.eos_id,
        banned=banned,
        generator=generator,
    ):
        token = int(nxt[0])
        if token == tokenizer.eos_id:
            return
        new.append(token)
        text = tokenizer.decode(new)
        if tokenizer.kind == "word":
            text = " " + text  # words are joined by spaces, the first one to the prompt too
        if text.endswith("\ufffd"):
            continue
        piece, shown = text[len(shown) :], text
        if piece:
            yield piece
