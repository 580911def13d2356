"""What differs between a word completer and a text generator, said once.

A run's task is decided from its saved config (`task_for`) and nowhere else. Every command
and the server ask the task how a prompt becomes model input, which tokens are never sampled,
where generation stops, and how generated tokens read as text. Three implementations share
one contract, as makemore's models share theirs:

    TextTask         a text generator (word-level or BPE tokens, or characters of running text)
    WordTask         a word completer on the decoder: `<sos> prefix` -> the rest, then `<eos>`
    Seq2SeqWordTask  the notebook's encoder-decoder: encoder reads `<sos> prefix <eos>`, the
                     decoder reads `<sos> prefix` and writes the rest, then `<eos>`
"""

from __future__ import annotations

from dataclasses import dataclass

from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.tokenizer import Tokenizer


@dataclass
class Prompt:
    """Model input for one prompt: what the decoder reads first (start token included), and
    for an encoder-decoder what its encoder reads."""

    text: str
    ids: list[int]
    encoder: list[int] | None = None
    start: bool = True  # ids begin with the start token tinylm put there (not the user's)

    @property
    def tokens(self) -> int:
        """Prompt tokens as a user counts them (without the start token)."""
        if self.encoder:
            return len(self.encoder) - 2
        return len(self.ids) - (1 if self.start else 0)


class Task:
    """The contract: see the module docstring."""

    kind: str  # what the model card and `info` call it
    default_max_tokens: int

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.stop_ids: tuple[int, ...] = (tokenizer.eos_id,)

    @property
    def words(self) -> bool:
        return self.kind == "word completer"

    def prompt(self, text: str) -> Prompt:
        raise NotImplementedError

    @property
    def banned(self) -> tuple[int, ...]:
        """Tokens never sampled."""
        raise NotImplementedError

    def max_new_tokens(self, prompt: Prompt, requested: int | None) -> int:
        return self.default_max_tokens if requested is None else requested

    def reader(self) -> TextReader:
        """Turns this task's generated ids into text pieces, one call per token."""
        return TextReader(self.tokenizer)


class TextTask(Task):
    kind = "text generator"
    default_max_tokens = 25  # the text notebook's

    def prompt(self, text: str) -> Prompt:
        """The start token, then the prompt's tokens (a prompt longer than the context keeps
        its last tokens: see the engine's window policy)."""
        self.tokenizer.check_chars(text)
        return Prompt(text, [self.tokenizer.bos_id, *self.tokenizer.encode(text)])

    def prompt_ids(self, ids: list[int]) -> Prompt:
        """A prompt given as token ids: the model reads exactly these (no start token added;
        a client that wants one puts `bos_token`'s id first, as lm-evaluation-harness does)."""
        vocab = self.tokenizer.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise UserError(f"Token id {bad[0]} is not in this model's vocabulary (0 to {vocab - 1}).")  # fmt: skip
        return Prompt(self.tokenizer.decode(ids), list(ids), start=False)

    @property
    def banned(self) -> tuple[int, ...]:
        """Padding, and `<UNK>`, which says nothing to a reader."""
        tok = self.tokenizer
        return tuple(i for i in (tok.pad_id, tok.unk_id) if i is not None)


class WordTask(Task):
    kind = "word completer"

    @property
    def max_len(self) -> int:
        return self.cfg.data.max_len

    @property
    def default_max_tokens(self) -> int:
        return self.max_len

    def letters(self, prefix: str) -> list[int]:
        tok = self.tokenizer
        bad = sorted({c for c in prefix if c not in tok.characters})
        if bad:
            raise UserError(
                f"The prefix '{prefix}' has {', '.join(repr(c) for c in bad)}, which this model "
                f"does not know (it knows {tok.characters})."
            )
        if len(prefix) >= self.max_len:
            raise UserError(
                f"The prefix '{prefix}' has {len(prefix)} letters; this model completes words "
                f"of at most {self.max_len}."
            )
        return tok.encode(prefix)

    def prompt(self, text: str) -> Prompt:
        return Prompt(text, [self.tokenizer.bos_id, *self.letters(text)])

    @property
    def banned(self) -> tuple[int, ...]:
        """Padding, the start token and the space: never inside a word."""
        tok = self.tokenizer
        space = tok.tok.token_to_id(" ")
        return tuple(i for i in (tok.pad_id, tok.bos_id, space) if i is not None)

    def max_new_tokens(self, prompt: Prompt, requested: int | None) -> int:
        """Letters still allowed in a word (the closing `<eos>` is not counted)."""
        left = self.max_len - len(prompt.text)
        return left if requested is None else min(requested, left)

    def reader(self) -> TextReader:
        return LetterReader(self.tokenizer)


class Seq2SeqWordTask(WordTask):
    def prompt(self, text: str) -> Prompt:
        """The encoder reads `<sos> prefix <eos>`; the decoder reads `<sos> prefix` too (as it
        was trained) and writes the rest."""
        tok, letters = self.tokenizer, self.letters(text)
        return Prompt(text, [tok.bos_id, *letters], encoder=[tok.bos_id, *letters, tok.eos_id])


def task_for(cfg: RunConfig, tokenizer: Tokenizer) -> Task:
    """The one place that decides what a run is, from its saved config."""
    if cfg.data.kind == "text":
        return TextTask(cfg, tokenizer)
    if cfg.model.arch == "seq2seq":
        return Seq2SeqWordTask(cfg, tokenizer)
    return WordTask(cfg, tokenizer)


class TextReader:
    """Generated ids to text pieces as they come: each piece is the new part of the decoded
    text, so word-level tokens come with their spaces and a UTF-8 character split over
    byte-level tokens is held back until it is whole."""

    def __init__(self, tokenizer: Tokenizer):
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


class LetterReader(TextReader):
    def add(self, token: int) -> str:
        return self.tokenizer.decode([token])
