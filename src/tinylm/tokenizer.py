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

import json
from collections import Counter
from collections.abc import Iterable, Sequence
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
