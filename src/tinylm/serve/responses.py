"""The answers of `tinylm serve` in OpenAI's shapes: completion and chat bodies, their
streamed chunks (server-sent events), usage, and the log-probabilities (logprobs.py). A shape
turns one request's results into its body or chunks; answers.py feeds it."""

from __future__ import annotations

import json
import time
import uuid

from tinylm.serve.logprobs import chat_logprobs, completion_logprobs
from tinylm.serve.requests import ChatRequest, CompletionRequest


def completion_meta(model_name: str) -> dict:
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
    }


def choice(index: int, text: str, finish: str | None, logprobs=None, **extra) -> dict:
    """One choice; extra fields (an error message, a word's probability) go beside it."""
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish, **extra}


def model_card(
    name: str, created: int, parameters: int, task: str, context: int, max_tokens: int
) -> dict:
    """The one model a server holds, as /v1/models lists it."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "tinylm",
        "parameters": parameters,
        "task": task,
        "context_length": context,
        "max_model_len": context,  # vLLM's name for it
        "max_tokens_limit": max_tokens,
    }


def word_lists(found, n: int, model_name: str, prompt_tokens: int) -> dict:
    """A word completer's likeliest words as a completions body: choice p * n + k is the k-th
    word of prompt p, its text the rest of the word, with its `probability` beside it."""
    choices, letters = [], 0
    for p, words in enumerate(found):
        for k, w in enumerate(words.words):
            rest = w.word[len(words.prefix) :]
            letters += len(rest)
            choices.append(choice(p * n + k, rest, "stop", probability=w.probability))
    return {
        **completion_meta(model_name),
        "choices": choices,
        "usage": usage(prompt_tokens, letters),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class CompletionShape:
    """OpenAI's completions bodies and chunks for one request. With `echo`, each choice begins
    with its prompt (`echoes`, one per choice): in the body, before the text; streamed, as
    each choice's first chunk. Text offsets count from the start of the choice's text."""

    lstrip = False

    def __init__(self, model_name: str, req: CompletionRequest, names, echoes=None):
        self.meta, self.names, self.echoes = completion_meta(model_name), names, echoes
        self.logprobs, self.include_usage = req.logprobs is not None, req.include_usage

    def _echo(self, index: int):
        return self.echoes[index] if self.echoes else None

    def _logprobs(self, index: int, entries, with_echo: bool = False):
        if not self.logprobs:
            return None
        echo = self._echo(index)
        shift = len(echo.text) if echo else 0
        out = completion_logprobs(self.names, entries, shift)
        if with_echo and echo:
            first = completion_logprobs(self.names, echo.entries)
            out = {k: first[k] + out[k] for k in out}
        return out

    def body(self, results, usage_: dict) -> dict:
        choices = []
        for i, r in enumerate(results):
            echo = self._echo(i)
            text = (echo.text if echo else "") + r.text
            choices.append(choice(i, text, r.finish, self._logprobs(i, r.entries, True), **r.extra))
        return {**self.meta, "choices": choices, "usage": usage_}

    def _chunk(self, choice_: dict) -> dict:
        return {
            **self.meta,
            "choices": [choice_],
            **({"usage": None} if self.include_usage else {}),
        }

    def opening(self, n: int) -> list[dict]:
        if not self.echoes:
            return []
        return [
            self._chunk(
                choice(
                    i,
                    self.echoes[i].text,
                    None,
                    completion_logprobs(self.names, self.echoes[i].entries)
                    if self.logprobs
                    else None,
                )
            )
            for i in range(n)
        ]

    def chunk(self, index: int, r) -> dict:
        return self._chunk(choice(index, r.text, r.finish, self._logprobs(index, r.entries)))

    def usage_chunk(self, usage_: dict) -> dict:
        return {**self.meta, "choices": [], "usage": usage_}


class ChatShape:
    """OpenAI's chat bodies (`message`) and chunks (`delta`, the first one with the role)."""

    lstrip = True  # the model continues "Assistant:" with a space

    def __init__(self, model_name: str, req: ChatRequest, names, tokenizer, stop_ids):
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.model, self.names, self.tokenizer = model_name, names, tokenizer
        self.stop_ids = set(stop_ids)
        self.logprobs, self.include_usage = req.logprobs is not None, req.include_usage

    def _meta(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _logprobs(self, entries):
        if not self.logprobs:
            return None
        return chat_logprobs(
            self.names, self.tokenizer, [e for e in entries if e.token not in self.stop_ids]
        )

    def body(self, results, usage: dict) -> dict:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": self._logprobs(r.entries),
                "finish_reason": r.finish,
                **r.extra,
            }
            for i, r in enumerate(results)
        ]
        return {**self._meta("chat.completion"), "choices": choices, "usage": usage}

    def _chunk(self, index: int, delta: dict, logprobs=None, finish=None) -> dict:
        return {
            **self._meta("chat.completion.chunk"),
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
            **({"usage": None} if self.include_usage else {}),
        }

    def opening(self, n: int) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]

    def chunk(self, index: int, r) -> dict:
        delta = {"content": r.text} if r.text else {}
        return self._chunk(index, delta, self._logprobs(r.entries), r.finish)

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._meta("chat.completion.chunk"), "choices": [], "usage": usage}
