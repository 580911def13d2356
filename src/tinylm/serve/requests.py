"""The requests `tinylm serve` takes, in OpenAI's shapes, checked field by field: a mistake
is an ApiError, answered as `{"error": {"message", "type", "param", "code"}}` with the field
named. The responses are shaped in responses.py; nothing here knows about models or threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.responses import JSONResponse

from tinylm.inference import Sampling, SamplingError, make_generator


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str | None = None
    ):
        if len(message) > MAX_MESSAGE:  # a message quoting a huge value: its start and end
            message = f"{message[: MAX_MESSAGE // 2]} ... {message[-MAX_MESSAGE // 4 :]}"
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}
        }
        headers = None
        if self.status == 503:
            headers = {"Retry-After": "1"}
        elif self.status in (408, 413):  # the body was not read to its end: the connection
            headers = {"Connection": "close"}  # cannot carry another request
        return JSONResponse(body, status_code=self.status, headers=headers)


MAX_MESSAGE = 400  # characters of an error message; a longer one is cut in its middle


def shown(value, limit: int = 40) -> str:
    """A value as JSON, cut short: error messages quote what they refuse, not all of it."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def busy() -> ApiError:
    return ApiError(503, "The server is busy; try again in a moment.", kind="server_busy")


@dataclass
class Limits:
    max_tokens: int = 256  # per request
    max_n: int = 8
    max_body: int = 64 * 1024  # bytes; it also bounds the prompt's characters
    max_active: int = 64
    max_queue: int = 256
    max_connections: int = 512  # open at once; beyond, the longest idle one is closed
    head_timeout: float = 10.0  # seconds for a request's headers to arrive
    body_timeout: float = 30.0  # seconds for a request's body to arrive


MAX_STOPS = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256  # characters per stop string: the stop filter holds back up to this


MAX_LOGPROBS = 20  # alternatives per token (OpenAI allows 5 on completions, 20 on chat)


@dataclass(kw_only=True)
class Request:
    """What completions and chat requests share: how much to generate, and how."""

    max_tokens: int | None  # None: the task's default; 0: nothing (echo only)
    sampling: Sampling
    stop: list[str]
    n: int
    seed: int | None
    stream: bool
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage
    logprobs: int | None = None  # None: none; k: each token's, and its k likeliest others


@dataclass(kw_only=True)
class CompletionRequest(Request):
    prompts: list[str | list[int]]  # text, or token ids read as given
    echo: bool = False  # the prompt comes back first (with its log-probabilities)


KNOWN_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "n",
    "seed",
    "stream",
    "stream_options",
    "echo",
    "logprobs",
}
IGNORED_FIELDS = {  # accepted for compatibility when they ask for nothing we would change
    "user": str,  # a type: any value of it, or null
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
}


def parse_completion(body, model_name: str, limits: Limits) -> CompletionRequest:
    """Check every field of a completions request; raise ApiError saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    check_fields(body, KNOWN_FIELDS, IGNORED_FIELDS)
    check_model(body, model_name)
    prompts = parse_prompts(body.get("prompt", ""), limits)
    echo = flag(body, "echo")
    common = parse_common(body, limits, len(prompts), body.get("max_tokens"))
    if common["max_tokens"] == 0 and not echo:
        raise ApiError(
            400, "'max_tokens' may be 0 only with 'echo': true (to score the prompt).", "max_tokens"
        )
    logprobs = integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    return CompletionRequest(prompts=prompts, echo=echo, logprobs=logprobs, **common)


def parse_common(body: dict, limits: Limits, n_prompts: int, max_tokens) -> dict:
    """The fields every generating request has (`max_tokens` given by the caller, since chat
    has two names for it)."""
    n = integer(body, "n", 1, 1, limits.max_n)
    if n * n_prompts > limits.max_n:
        raise ApiError(400, f"n times the number of prompts must be at most {limits.max_n}.", "n")
    max_tokens = integer({"max_tokens": max_tokens}, "max_tokens", None, 0, 10**9)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(
            400,
            f"'max_tokens' is {max_tokens}; this server allows at most {limits.max_tokens}.",
            "max_tokens",
        )
    return {
        "max_tokens": max_tokens,
        "sampling": parse_sampling(body),
        "stop": parse_stop(body.get("stop")),
        "n": n,
        "seed": parse_seed(body.get("seed")),
        "stream": flag(body, "stream"),
        "include_usage": parse_stream_options(body.get("stream_options")),
    }


def parse_stream_options(options) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(
            400, "'stream_options' may only hold 'include_usage' (true or false).", "stream_options"
        )
    return flag(options, "include_usage")


TYPE_NAMES = {str: "a string", dict: "an object", bool: "true or false"}


def check_fields(body: dict, known: set, ignored: dict) -> None:
    for key, value in body.items():
        if key in ignored:
            allowed = ignored[key]
            if isinstance(allowed, type):
                if value is not None and not isinstance(value, allowed):
                    raise ApiError(400, f"'{key}' must be {TYPE_NAMES[allowed]}.", key)
            elif value not in allowed:
                raise ApiError(400, f"'{key}' is not supported by this server.", key)
        elif key not in known:
            raise ApiError(400, f"Unknown field '{shown(key)}'.", key)


def check_model(body: dict, model_name: str) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, not {shown(model)}.", "model")
    if model is not None and model != model_name:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server has '{model_name}'.",
            "model",
            "not_found_error",
        )


def parse_prompts(prompt, limits: Limits) -> list[str | list[int]]:
    """A string, a list of token ids, or a list of either: one or more prompts."""
    if isinstance(prompt, str) or token_ids(prompt):
        prompts = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, str) or token_ids(p) for p in prompt)
    ):
        prompts = prompt
    else:
        raise ApiError(
            400,
            "'prompt' must be a string, a non-empty list of token ids, or a non-empty list of strings and token-id lists.",
            "prompt",
        )
    if len(prompts) > limits.max_n:
        raise ApiError(400, f"At most {limits.max_n} prompts per request.", "prompt")
    return prompts


def token_ids(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def parse_stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise ApiError(
            400,
            f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them.",
            "stop",
        )
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(
            400, f"Each 'stop' string may have at most {MAX_STOP_CHARS} characters.", "stop"
        )
    return stops


def parse_sampling(body: dict) -> Sampling:
    """The sampling fields, checked by the rules the command line uses too."""
    values = {
        "temperature": body.get("temperature", 1.0),
        "top_k": body.get("top_k", 0),
        "top_p": body.get("top_p", 1.0),
    }
    try:
        return Sampling(**{k: v for k, v in values.items() if v is not None})
    except SamplingError as e:
        raise ApiError(400, f"'{e.field}' {e.reason}", e.field) from None


def parse_seed(seed) -> int | None:
    if seed is None:
        return None
    try:
        make_generator(seed)
    except SamplingError as e:
        raise ApiError(400, f"'seed' {e.reason}", "seed") from None
    return seed


def flag(body: dict, name: str) -> bool:
    """true or false; null is the default (false), as for every other optional field."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false.", name)
    return value


def integer(body: dict, name: str, default, low: int, high: int):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, not {shown(value)}.", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], not {shown(value)}.", name)
    return value


def parse_json(data: bytes):
    """The body as JSON; text that is not valid Unicode (a lone surrogate such as "\\ud800")
    is refused here, before it reaches the tokenizer."""
    try:
        body = json.loads(data)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply.") from None
    except UnicodeEncodeError:
        raise ApiError(
            400, "The request has text that is not valid Unicode (a lone surrogate)."
        ) from None
    except ValueError as e:  # not JSON, not UTF-8, or an integer of over 4,300 digits
        raise ApiError(400, f"The request body is not valid JSON ({e}).") from None
    return body


# --- chat completions -------------------------------------------------------------------

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}

CHAT_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "n",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
}
CHAT_IGNORED = {
    "user": str,
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": bool,
    "store": (None, False),
    "metadata": dict,
}


@dataclass(kw_only=True)
class ChatRequest(Request):
    messages: list[dict]  # [{"role": system | user | assistant, "content": str}]


def parse_chat(body, model_name: str, limits) -> ChatRequest:
    """Check every field of a chat completions request; raise ApiError saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    check_fields(body, CHAT_FIELDS, CHAT_IGNORED)
    check_model(body, model_name)
    messages = parse_messages(body.get("messages"))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    common = parse_common(body, limits, 1, limit)
    if common["max_tokens"] == 0:
        raise ApiError(400, "'max_tokens' must be at least 1 for a chat completion.", "max_tokens")
    top = integer(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    wanted = flag(body, "logprobs")
    if top is not None and not wanted:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return ChatRequest(messages=messages, logprobs=(top or 0) if wanted else None, **common)


def parse_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "'messages' must be a non-empty list of {role, content} objects.", "messages"
        )
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}] must have a role of system, user or assistant, not {shown(role)} (tools are not supported).",
                "messages",
            )
        content = m.get("content")
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(
                400, f"messages[{i}].content must be a string or a list of text parts.", "messages"
            )
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out
