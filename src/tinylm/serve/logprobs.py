"""Log-probabilities in OpenAI's shapes: each token's, its likeliest alternatives, and where
its text starts, for the prompt (`echo`) and for the generated tokens.

The prompt is scored by inference/logprobs.py, the one path `tinylm eval` uses: a prompt longer
than the context is read in windows that overlap by half, so every token is predicted with at
least half a context of history. A text prompt is read after the start token, so each of its
tokens has a log-probability; a prompt given as token ids is read as given, so its first token
has none (`null`, as OpenAI answers when nothing precedes a token). Generated tokens get theirs
from the engine (`Job.logprobs`). Token ids become text through the tokenizer's one
detokenizer (tokenizer.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tinylm.inference.logprobs import score
from tinylm.serve.requests import ApiError
from tinylm.tasks import Prompt
from tinylm.tokenizer import Tokenizer

VERY_UNLIKELY = -9999.0  # what OpenAI reports for a log-probability that is -inf
MAX_SCORED = 4096  # prompt tokens scored per request (x n): twice what lm-eval sends at most


@dataclass
class Entry:
    """One token of a choice, with its log-probability."""

    token: int
    logprob: float | None  # None: the first token of a token-id prompt
    top: list[tuple[int, float]]  # the likeliest tokens there, best first
    offset: int  # where the token's text starts in the choice's text


@dataclass
class Echo:
    """A prompt as it comes back first in a choice."""

    text: str
    entries: list[Entry]  # empty when no log-probabilities were asked for


class Names:
    """Token ids to the strings the API shows for them (special tokens by name), cached."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        name = self.cache.get(token)
        if name is None:
            name = self.cache[token] = self.tokenizer.token_text(token)
        return name


def echo_text(tokenizer: Tokenizer, prompt: Prompt) -> Echo:
    """The prompt as the model read it (the start token tinylm added left out)."""
    pieces = tokenizer.detokenizer()
    shown = prompt.ids[1:] if prompt.start else prompt.ids
    return Echo("".join(pieces.add(i).text for i in shown) + pieces.flush(), [])


async def echo_prompts(model, prompts: list[Prompt], req, lock: asyncio.Lock):
    """Each choice's echoed prompt (None without `echo`), scored if log-probabilities are
    asked for."""
    if not req.echo:
        return None
    scored = sum(p.tokens for p in prompts) * req.n
    if req.logprobs is not None and scored > MAX_SCORED:
        raise ApiError(
            400,
            f"'echo' with 'logprobs' scores at most {MAX_SCORED} prompt tokens a request "
            f"(prompt tokens x n), not {scored}; send the text in parts.",
            "prompt",
        )
    if req.logprobs is None:
        echoes = [echo_text(model.tokenizer, p) for p in prompts]
    else:
        echoes = await score_prompts(model, prompts, req.logprobs, lock)
    return [echo for echo in echoes for _ in range(req.n)]


async def score_prompts(model, prompts: list[Prompt], top: int, lock: asyncio.Lock) -> list[Echo]:
    """Each prompt's tokens with their log-probabilities and `top` alternatives, scored in a
    thread (one scoring at a time) so the server goes on answering meanwhile; the entries
    are made there too (thousands of them would hold up the event loop)."""
    context = model.cfg.model.context_length

    def scored() -> list[Echo]:
        scores = score(model.net, [p.ids for p in prompts], context, top=max(1, top))
        return [
            echo_entries(model.tokenizer, p, s, top) for p, s in zip(prompts, scores, strict=True)
        ]

    async with lock:
        return await asyncio.to_thread(scored)


def echo_entries(tokenizer: Tokenizer, prompt: Prompt, scores, top: int) -> Echo:
    logps = scores.logp.tolist()
    tops = [
        list(zip(i[:top], v[:top], strict=True))
        for i, v in zip(scores.top_ids.tolist(), scores.top_logp.tolist(), strict=True)
    ]
    known = list(zip(prompt.ids[1:], logps, tops, strict=True))
    if not prompt.start:  # token ids as given: nothing precedes the first
        known.insert(0, (prompt.ids[0], None, []))
    pieces, text, entries = tokenizer.detokenizer(), "", []
    for token, logp, alternatives in known:
        piece = pieces.add(token)
        entries.append(Entry(token, logp, alternatives, piece.offset))
        text += piece.text
    return Echo(text + pieces.flush(), entries)


def finite(logp: float | None) -> float | None:
    return None if logp is None else max(logp, VERY_UNLIKELY)


def completion_logprobs(names: Names, entries: list[Entry], shift: int = 0) -> dict:
    """OpenAI's completions shape: tokens, token_logprobs, top_logprobs (the likeliest tokens
    and the chosen one, as OpenAI gives up to logprobs + 1), text_offset."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        name = names(e.token)
        out["tokens"].append(name)
        out["token_logprobs"].append(finite(e.logprob))
        out["text_offset"].append(e.offset + shift)
        if e.logprob is None:
            out["top_logprobs"].append(None)
            continue
        top = {}
        for token, logp in e.top:
            top.setdefault(names(token), finite(logp))
        top.setdefault(name, finite(e.logprob))
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(names: Names, tokenizer: Tokenizer, entries: list[Entry]) -> dict:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def one(token: int, logp: float) -> dict:
        data = list(tokenizer.token_bytes(token))
        return {"token": names(token), "logprob": finite(logp), "bytes": data}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
            for e in entries
        ]
    }
