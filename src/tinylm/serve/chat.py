"""OpenAI's chat completions over a plain language model: messages become one prompt, the
model continues it, and the reply ends where the next turn would begin.

The prompt. If the run's tokenizer_config.json has a `chat_template` (or the run has a
chat_template.jinja), it is rendered with jinja2 as transformers renders it (`messages`,
`add_generation_prompt=True`, `bos_token`, `eos_token`), and its own special-token strings are
read as special tokens; a message that contains one is refused, so user text never becomes a
control token. Otherwise the messages are written as a plain transcript, one turn a line:

    System: You are terse.
    User: What is a river?
    Assistant: Water that flows.
    User: And a lake?
    Assistant:

and the model continues after "Assistant:". Either way the prompt is read after the start
token, and the reply stops at end-of-text, at the next turn's marker ("\\nUser:",
"\\nAssistant:", "\\nSystem:" for the transcript; what the template writes between an
assistant's message and the next user's, for a template), or at the client's stop strings.

tinylm's models are plain language models, not dialogue models: they continue a transcript
as they would any text.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tinylm.errors import UserError
from tinylm.serve.protocol import (
    MAX_LOGPROBS,
    ApiError,
    Request,
    check_fields,
    check_model,
    flag,
    integer,
    parse_common,
)
from tinylm.serve.scoring import chat_logprobs
from tinylm.tasks import Prompt

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
TURN_MARKERS = ["\nUser:", "\nAssistant:", "\nSystem:"]

CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "top_k", "stop", "n", "seed", "stream", "stream_options", "logprobs",
               "top_logprobs"}  # fmt: skip
CHAT_IGNORED = {
    "user": None,
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": None,
    "store": (None, False),
    "metadata": None,
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
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.",
                       "messages")  # fmt: skip
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}] must have a role of system, user or assistant, not {json.dumps(role)} (tools are not supported).", "messages")  # fmt: skip
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):  # fmt: skip
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts.",
                           "messages")  # fmt: skip
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def transcript(messages: list[dict]) -> str:
    return "".join(f"{ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"


class Chat:
    """How messages become a prompt for one run (see the module docstring)."""

    def __init__(self, run_path: Path, task):
        self.task, self.tokenizer = task, task.tokenizer
        config = read_json(Path(run_path) / "tokenizer_config.json")
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        jinja_file = Path(run_path) / "chat_template.jinja"
        if source is None and jinja_file.is_file():
            source = jinja_file.read_text()
        self.specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                         if isinstance(config.get(k), str)}  # fmt: skip
        self.template = compile_template(source) if isinstance(source, str) else None
        self.stops = TURN_MARKERS if self.template is None else self._template_marker()

    def prompt(self, messages: list[dict]):
        """The model input for `messages`; ApiError (400) for what this run cannot read."""
        try:
            if self.template is None:
                return self.task.prompt(transcript(messages))
            for i, m in enumerate(messages):
                found = [s for s in self.tokenizer.special_tokens() if s in m["content"]]
                if found:
                    raise UserError(f"messages[{i}] contains {found[0]}, a special token of this model's chat template; it cannot be sent as text.")  # fmt: skip
            text = self._render(messages, True)
        except UserError as e:
            raise ApiError(400, str(e), "messages") from None
        ids = self.tokenizer.encode_template(text)
        if not ids or ids[0] != self.tokenizer.bos_id:
            ids.insert(0, self.tokenizer.bos_id)  # a text is read after the start token
        return Prompt(text, ids)

    def _render(self, messages: list[dict], generation: bool) -> str:
        import jinja2

        try:
            return self.template.render(messages=messages, add_generation_prompt=generation,
                                        **self.specials)  # fmt: skip
        except jinja2.TemplateError as e:
            raise UserError(f"The run's chat template refused these messages: {e}") from None

    def _template_marker(self) -> list[str]:
        """What the template writes between an assistant's message and the next user's
        (special tokens, which never appear in decoded text, left out)."""
        probe = [{"role": "user", "content": "\x00a"}, {"role": "assistant", "content": "\x00b"},
                 {"role": "user", "content": "\x00c"}]  # fmt: skip
        try:
            text = self._render(probe, False)
            between = text[text.index("\x00b") + 2 : text.index("\x00c")]
        except (UserError, ValueError):
            return []
        for special in self.tokenizer.special_tokens():
            between = between.replace(special, "")
        return [between.rstrip()] if between.strip() else []


def compile_template(source: str):
    """A chat template compiled as transformers compiles it (sandboxed jinja2)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)  # fmt: skip

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])  # fmt: skip
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise UserError(f"The run's chat template does not compile: {e}") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ChatShape:
    """OpenAI's chat bodies (`message`) and chunks (`delta`, the first one with the role)."""

    lstrip = True  # the model continues "Assistant:" with a space

    def __init__(self, model_name: str, req: ChatRequest, names, pieces, stop_ids):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), model_name  # fmt: skip
        self.names, self.pieces, self.stop_ids = names, pieces, set(stop_ids)
        self.logprobs, self.include_usage = req.logprobs is not None, req.include_usage

    def _meta(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _logprobs(self, entries):
        if not self.logprobs:
            return None
        return chat_logprobs(self.names, self.pieces,
                             [e for e in entries if e.token not in self.stop_ids])  # fmt: skip

    def body(self, results, usage: dict) -> dict:
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": self._logprobs(r.entries), "finish_reason": r.finish, **r.extra}
                   for i, r in enumerate(results)]  # fmt: skip
        return {**self._meta("chat.completion"), "choices": choices, "usage": usage}

    def _chunk(self, index: int, delta: dict, logprobs=None, finish=None) -> dict:
        return {**self._meta("chat.completion.chunk"),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                             "finish_reason": finish}],
                **({"usage": None} if self.include_usage else {})}  # fmt: skip

    def opening(self, n: int) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]

    def chunk(self, index: int, r) -> dict:
        delta = {"content": r.text} if r.text else {}
        return self._chunk(index, delta, self._logprobs(r.entries), r.finish)

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._meta("chat.completion.chunk"), "choices": [], "usage": usage}
