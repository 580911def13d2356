"""Character, word-level and byte-level BPE tokenizers, all built on the `tokenizers` library.

Each is saved in the Hugging Face format (tokenizer.json + tokenizer_config.json) so that
`AutoTokenizer.from_pretrained(run_dir)` works.

The start token. A text model reads every document after its start token (the end-of-text
token, which is also `bos_token`), and tinylm places it by id. Encoding text adds no special
token, as GPT-2's tokenizer does: that is the convention lm-evaluation-harness expects (it puts
`bos_token` before a document itself; a tokenizer that added one too would score an extra
end-of-text per document). A character tokenizer (the word completers) still prepends `<sos>`
for Hugging Face users, since every word the model reads starts with it.

Special tokens typed as text are text: `<|endoftext|>` in a prompt or a document encodes as
the characters it is made of (`encode_special_tokens`, and `split_special_tokens` for
Hugging Face), so only tinylm, by id, ever places a special token.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from tinylm.errors import UserError

# Special tokens per kind: (pad, bos, eos, unk); None where a kind has no such token.
SPECIALS = {
    "char": {"pad": "<pad>", "bos": "<sos>", "eos": "<eos>", "unk": None},
    "word": {"pad": None, "bos": "<EOS>", "eos": "<EOS>", "unk": "<UNK>"},
    "bpe": {"pad": None, "bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": None},
}
KINDS = tuple(SPECIALS)
# The rule each kind is built by, part of the key of cached tokenizers: a new rule (the word
# tokenizer's vocabulary ranked by bytes covered, not frequency) is not served an old one's.
RULES = {"char": "1", "word": "bytes-covered", "bpe": "1"}


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of its special tokens."""

    def __init__(self, tok: HFTokenizer, kind: str):
        if kind not in SPECIALS:
            raise UserError(f"Unknown tokenizer kind '{kind}'; choose one of {', '.join(KINDS)}.")
        tok.encode_special_tokens = True  # a literal "<|endoftext|>" is text
        self.tok, self.kind = tok, kind
        self._with_specials: HFTokenizer | None = None
        ids = {name: (tok.token_to_id(t) if t else None) for name, t in SPECIALS[kind].items()}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            ids["pad"],
            ids["bos"],
            ids["eos"],
            ids["unk"],
        )
        self.special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_template(self, text: str) -> list[int]:
        """Text written by a chat template, whose special-token strings are special tokens
        (as transformers' apply_chat_template reads them); never use it for user text."""
        if self._with_specials is None:
            self._with_specials = HFTokenizer.from_str(self.tok.to_str())
            self._with_specials.encode_special_tokens = False
        return self._with_specials.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_text(self, i: int) -> str:
        """One token on its own, as text (special tokens by name)."""
        return self.tok.decode([i], skip_special_tokens=False)

    def token_bytes(self, i: int) -> bytes:
        """The bytes a token stands for (a special token: its name's). A byte-level BPE
        token may hold part of a UTF-8 character; the others are whole text."""
        name = self.tok.id_to_token(i)
        if self.kind == "bpe" and i not in self.special_ids:
            return bytes(BYTE_OF[c] for c in name)
        return name.encode("utf-8")

    def label(self, i: int) -> str:
        """A token as a person reads it: its text with spaces shown as ␣, or a special name."""
        if i in self.special_ids:
            return self.tok.id_to_token(i)
        text = self.token_bytes(i).decode("utf-8", errors="replace")
        return text.replace(" ", "␣") or self.tok.id_to_token(i)

    def detokenizer(self, joined: bool = False) -> Detokenizer:
        """Generated ids to text, one token at a time (see Detokenizer). `joined`: the tokens
        continue a text, so a word-level token takes its joining space from the first one."""
        return Detokenizer(self, joined)

    def special_tokens(self) -> list[str]:
        return [t.content for t in self.tok.get_added_tokens_decoder().values() if t.special]

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    @property
    def characters(self) -> str:
        """A character model's letters and signs, sorted (not the space, not special tokens)."""
        return "".join(sorted(c for c in self.tok.get_vocab() if len(c) == 1 and c != " "))

    def check_chars(self, text: str) -> None:
        """Character models: say in one sentence which characters the vocabulary lacks."""
        if self.kind != "char":
            return
        vocab = self.tok.get_vocab()
        missing = sorted({c for c in text if c not in vocab})
        if missing:
            raise UserError(
                f"'{text}' contains {', '.join(repr(c) for c in missing)}, which this model's "
                f"vocabulary ({self.characters}) does not have."
            )

    def save(self, folder: Path, model_max_length: int | None = None) -> None:
        folder = Path(folder)
        self.tok.save(str(folder / "tokenizer.json"))
        names = SPECIALS[self.kind]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": True,  # as tinylm encodes: see the module docstring
        }
        for name in ("bos", "eos", "pad", "unk"):
            if names[name]:
                config[f"{name}_token"] = names[name]
        if model_max_length:
            config["model_max_length"] = model_max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, kind: str) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        try:
            return cls(HFTokenizer.from_file(str(path)), kind)
        except Exception as e:  # missing or unreadable file
            raise UserError(f"Cannot read the tokenizer {path} ({e}).") from None


def _start_with(tok: HFTokenizer, token: str) -> None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", special_tokens=[(token, tok.token_to_id(token))]
    )


def build_char(words: Iterable[str]) -> Tokenizer:
    """One token per character seen in the data, plus <pad>, <sos>, <eos> and space."""
    chars = sorted({c for w in words for c in w} - {" "})
    specials = ["<pad>", "<sos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + [" "] + chars)}
    tok = HFTokenizer(models.WordLevel(vocab))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    _start_with(tok, "<sos>")
    return Tokenizer(tok, "char")


def build_word(texts: Iterable[str], vocab_size: int = 10_000):
    """The notebook's word-level tokenizer: lowercase, punctuation dropped, split on whitespace;
    `vocab_size - 2` words plus <UNK> and <EOS>.

    The words kept are those that cover the most bytes of the training text (count × UTF-8
    length), not the most frequent ones: a word left out costs its bytes spelt out (8 bits a
    byte, benchmark T's charge for an `<UNK>`), so "minorities" seen 300 times is worth more
    than "vp" seen 600. On the development corpus this trades fragments, numbers and single
    letters for whole words, and takes 0.035 bits a byte off the `<UNK>` charge of the held-out
    text (0.726 against 0.761; `<UNK>` 7.2 % of the tokens against 7.0 %; bench/README.md)."""
    normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    counts: Counter[str] = Counter()
    for text in texts:
        # str.split() cuts where WhitespaceSplit does once the normalizer has run: the control
        # characters only Python counts as whitespace (\x1c-\x1f) are replaced by then
        counts.update(normalizer.normalize_str(text).split())
    unk, eos = SPECIALS["word"]["unk"], SPECIALS["word"]["eos"]
    specials = [unk, eos]
    ranked = sorted(counts, key=lambda w: (-counts[w] * len(w.encode()), -counts[w], w))
    vocab = {t: i for i, t in enumerate(specials + ranked[: max(0, vocab_size - len(specials))])}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    return Tokenizer(tok, "word")  # no start token added: see the module docstring


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int = 0) -> Tokenizer:
    """A new tokenizer of `kind` from `texts`: char takes the characters seen; word and bpe
    keep `vocab_size` entries (0: 10,000 and 4,096)."""
    if kind == "char":
        return build_char(texts)
    if kind == "word":
        return build_word(texts, vocab_size or 10_000)
    return build_bpe(texts, vocab_size or 4096, length=len(texts))


def build_bpe(texts: Iterable[str], vocab_size: int = 4096, length: int | None = None):
    """Byte-level BPE (GPT-2 style): every string encodes, nothing is unknown."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return Tokenizer(tok, "bpe")  # no start token added: see the module docstring


def byte_table() -> dict[str, int]:
    """Byte-level BPE's characters back to the bytes they stand for: GPT-2's table, which the
    `tokenizers` library's ByteLevel pre-tokenizer uses (printable bytes stand for
    themselves, the others are shifted past 255)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = dict(zip(printable, printable, strict=True)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


BYTE_OF = byte_table()


@dataclass
class Piece:
    """What one token adds to a text: `text` (a UTF-8 character split over byte-level tokens
    belongs to the token that completes it; special tokens add none), the `bytes` the token
    stands for, and `offset`, where the token's own text starts in the text so far, counted
    in characters (a word-level token's text comes after the space that joins it)."""

    text: str
    bytes: bytes
    offset: int


class Detokenizer:
    """Token ids to text one token at a time, in time independent of the text's length: the
    one way tinylm turns ids into text (generation, the server's echo and log-probabilities,
    attention labels). Word-level tokens are joined by spaces; byte-level BPE tokens go
    through an incremental UTF-8 decoder; special tokens add no text."""

    def __init__(self, tokenizer: Tokenizer, joined: bool = False):
        self.tokenizer, self.joined = tokenizer, joined
        self.spaced = tokenizer.kind == "word"  # words are joined by spaces
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.length = 0  # characters given so far

    def add(self, token: int) -> Piece:
        tok = self.tokenizer
        data = tok.token_bytes(token)
        if token in tok.special_ids:
            return Piece("", data, self.length)
        text = self.utf8.decode(data)
        start = self.length
        if self.spaced and self.joined:
            text, start = " " + text, start + 1
        self.joined = True
        self.length += len(text)
        return Piece(text, data, start)

    def flush(self) -> str:
        """What an unfinished UTF-8 character at the end decodes to (U+FFFD), or nothing."""
        text = self.utf8.decode(b"", final=True)
        self.length += len(text)
        return text
