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
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tinylm.errors import UserError
from tinylm.serve.requests import ApiError
from tinylm.tasks import Prompt

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
TURN_MARKERS = ["\nUser:", "\nAssistant:", "\nSystem:"]


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
        self.specials = {
            k: config[k]
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if isinstance(config.get(k), str)
        }
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
                    raise UserError(
                        f"messages[{i}] contains {found[0]}, a special token of this model's chat template; it cannot be sent as text."
                    )
            text = self._render(messages, True)
        except UserError as e:
            raise ApiError(400, str(e), "messages") from None
        ids = self.tokenizer.encode_template(text)
        if not ids or ids[0] != self.tokenizer.bos_id:
            ids.insert(0, self.tokenizer.bos_id)  # a text is read after the start token
        return Prompt(text, ids)

    def _render(self, messages: list[dict], generation: bool) -> str:
        try:
            return self.template.render(
                messages=messages, add_generation_prompt=generation, **self.specials
            )
        except jinja2.TemplateError as e:
            raise UserError(f"The run's chat template refused these messages: {e}") from None

    def _template_marker(self) -> list[str]:
        """What the template writes between an assistant's message and the next user's
        (special tokens, which never appear in decoded text, left out)."""
        probe = [
            {"role": "user", "content": "\x00a"},
            {"role": "assistant", "content": "\x00b"},
            {"role": "user", "content": "\x00c"},
        ]
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

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
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
