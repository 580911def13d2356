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


def sample_next(logits, temperature, top_k=0, top_p=1.0, banned=(), generator=None):
    """pick_next, never choosing a banned token."""
    if banned:
        logits = logits.clone()
        logits[:, list(banned)] = float("-inf")
    return pick_next(logits, temperature, top_k, top_p, generator)


class Decoding:
    """`num` sequences continuing one prompt, with a key/value cache.

    `sample()` picks the next token of each from the current logits; `feed()` appends the
    chosen tokens and runs the model on just those (when the context is full, the latest half
    is kept and re-read). The server's engine interleaves many of these, one step each.
    """

    def __init__(self, model: Decoder, prompt: list[int], num: int = 1):
        self.model, self.ctx = model, model.cfg.context_length
        device = model.rope_cos.device
        self.tokens = torch.tensor([prompt] * num, dtype=torch.long, device=device)[:, -self.ctx :]
        self.logits = None

    @torch.no_grad()
    def sample(self, temperature, top_k=0, top_p=1.0, banned=(), generator=None):
        if self.logits is None:  # the prompt, read once
            self.cache = self.model.new_cache(len(self.tokens))
            self.logits = self.model(self.tokens, cache=self.cache).logits[:, -1]
        return sample_next(self.logits, temperature, top_k, top_p, banned, generator)

    @torch.no_grad()
    def feed(self, nxt: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, nxt[:, None]], dim=1)
        if self.cache.pos >= self.ctx:
            self.tokens = self.tokens[:, -(self.ctx // 2) :]
            self.cache = self.model.new_cache(len(self.tokens))
            self.logits = self.model(self.tokens, cache=self.cache).logits[:, -1]
        else:
            self.logits = self.model(nxt[:, None], cache=self.cache).logits[:, -1]


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
    decoding = Decoding(model, prompt, num)
    done = torch.zeros(num, dtype=torch.bool, device=decoding.tokens.device)
    for i in range(max_new_tokens):
        nxt = decoding.sample(temperature, top_k, top_p, banned, generator)
        yield nxt
        if stop_id is not None:
            done |= nxt == stop_id
            if bool(done.all()):
                return
        if i < max_new_tokens - 1:
            decoding.feed(nxt)


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
    text = TextStream(tokenizer)
    for nxt in stream_tokens(
        model,
        text_prompt(tokenizer, prompt),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_id=tokenizer.eos_id,
        banned=text_banned(tokenizer),
        generator=generator,
    ):
        token = int(nxt[0])
        if token == tokenizer.eos_id:
            return
        piece = text.add(token)
        if piece:
            yield piece


def text_prompt(tokenizer, prompt: str) -> list[int]:
    """The model input for a prompt: the start token, then the prompt's tokens."""
    return [tokenizer.bos_id, *tokenizer.encode(prompt)]


def text_banned(tokenizer) -> tuple[int, ...]:
    """Never sampled: padding, and <UNK>, which says nothing to a reader."""
    return tuple(i for i in (tokenizer.pad_id, tokenizer.unk_id) if i is not None)


class TextStream:
    """Turn generated token ids into text pieces as they come.

    A piece is the new part of the decoded text, so word-level tokens come with their spaces
    and a UTF-8 character split over byte-level tokens is held back until it is whole.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if self.tokenizer.kind == "word":
            text = " " + text  # words are joined by spaces, the first one to the prompt too
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece
