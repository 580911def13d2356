"""Character, word-level and byte-level BPE tokenizers, all built on the `tokenizers` library.

Each is saved in the Hugging Face format (tokenizer.json + tokenizer_config.json) so that
`AutoTokenizer.from_pretrained(run_dir)` works. The post-processor prepends the start token
(`<sos>` for characters, the end-of-text token for text, as GPT-2 does), so a Hugging Face
user who tokenizes a prompt gets exactly the model input tinylm uses. tinylm itself encodes
without special tokens and places them where it needs them.
"""

from __future__ import annotations

import json
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


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of its special tokens."""

    def __init__(self, tok: HFTokenizer, kind: str):
        if kind not in SPECIALS:
            raise UserError(f"Unknown tokenizer kind '{kind}'; choose one of {', '.join(KINDS)}.")
        self.tok, self.kind = tok, kind
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

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def check_chars(self, text: str) -> None:
        """Character models: say in one sentence which characters the vocabulary lacks."""
        if self.kind != "char":
            return
        vocab = self.tok.get_vocab()
        missing = sorted({c for c in text if c not in vocab})
        if missing:
            known = "".join(sorted(c for c in vocab if len(c) == 1 and c != " "))
            raise UserError(
                f"'{text}' contains {', '.join(repr(c) for c in missing)}, which this model's "
                f"vocabulary ({known}) does not have."
            )

    def save(self, folder: Path, model_max_length: int | None = None) -> None:
        folder = Path(folder)
        self.tok.save(str(folder / "tokenizer.json"))
        names = SPECIALS[self.kind]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
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


def build_word(texts: Iterable[str], vocab_size: int = 10_000, length: int | None = None):
    """The notebook's word-level tokenizer: lowercase, punctuation dropped, split on whitespace;
    the most frequent `vocab_size - 2` words plus <UNK> and <EOS>."""
    tok = HFTokenizer(models.WordLevel(unk_token="<UNK>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=["<UNK>", "<EOS>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer, length=length)
    _start_with(tok, "<EOS>")
    return Tokenizer(tok, "word")


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
    _start_with(tok, "<|endoftext|>")
    return Tokenizer(tok, "bpe")
