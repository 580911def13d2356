"""The tokenizer of a GGUF export: tinylm's byte-level BPE and character vocabularies as
llama.cpp's BPE ("gpt2" model, "gpt-2" pre-tokenizer), so that llama.cpp cuts a text into the
ids tinylm does (see gguf.py's docstring for why each choice)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from tinylm.errors import UserError
from tinylm.tokenizer import BYTE_OF

# tokenizer.json's parts as tinylm writes them for each kind llama.cpp can read faithfully
BYTE_LEVEL_PRE = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
CHAR_PRE = {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False}
CHAR_OF = {b: c for c, b in BYTE_OF.items()}  # GPT-2's byte-level alphabet: a byte as a char


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str]
    bos: int
    eos: int
    pad: int | None
    end_token: str  # the end token's text, Ollama's stop string


def read_json(run_dir: Path, name: str) -> dict:
    path = run_dir / name
    if not path.is_file():
        raise UserError(f"{run_dir} has no {name}, so it is not a trained tinylm run directory.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}).") from None


def read_vocab(run_dir: Path, settings: dict, vocab_size: int) -> Vocab:
    """The run's tokenizer files as llama.cpp's vocabulary; refused unless they are the
    tokenizer tinylm builds for a kind llama.cpp can read faithfully."""
    tok = read_json(run_dir, "tokenizer.json")
    tok_config = read_json(run_dir, "tokenizer_config.json")
    kind = (settings.get("tokenizer") or {}).get("kind") or _guess_kind(tok)
    if kind == "word":
        raise UserError(
            f"{run_dir}'s word-level tokenizer lowercases, turns punctuation into spaces and maps unknown words to <UNK>, which no llama.cpp tokenizer does, so llama.cpp would read text differently."
        )
    if kind not in ("bpe", "char"):
        raise UserError(
            f"{run_dir}'s tokenizer is of kind '{kind}'; GGUF export knows bpe and char."
        )
    model = tok.get("model") or {}
    faithful = is_tinylms(tok, kind)
    if not faithful:
        raise UserError(
            f"{run_dir}/tokenizer.json is not the {kind} tokenizer tinylm builds, so llama.cpp's would not split text as it does."
        )
    special = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    by_id = {i: t for t, i in model["vocab"].items()}
    by_id.update({t["id"]: t["content"] for t in tok.get("added_tokens", [])})
    if len(by_id) != vocab_size or set(by_id) != set(range(vocab_size)):
        raise UserError(
            f"{run_dir}/tokenizer.json has {len(by_id)} tokens; config.json's vocab_size is {vocab_size}."
        )
    tokens, types, merges = [], [], []
    for i in range(vocab_size):
        text = by_id[i]
        if text in special:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.NORMAL)
            if kind == "char":  # its vocabulary holds characters; llama.cpp's holds byte pieces
                text = "".join(CHAR_OF[b] for b in text.encode("utf-8"))
                merges += [f"{text[:n]} {text[n]}" for n in range(1, len(text))]
        tokens.append(text)
    if kind == "bpe":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, t in by_id.items()}
    named = {k: tok_config.get(f"{k}_token") for k in ("bos", "eos", "pad")}
    named = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in named.items()}
    if not named["bos"] or not named["eos"] or named["bos"] not in ids or named["eos"] not in ids:
        raise UserError(
            f"{run_dir}/tokenizer_config.json names no start and end tokens of its vocabulary."
        )
    if not merges:
        # llama.cpp refuses a BPE without merges, and GGUFWriter writes no empty array: a
        # merge of two special tokens' texts, which never are pieces of split text, never applies
        merges = [f"{named['bos']} {named['eos']}"]
    return Vocab(
        tokens=tokens,
        types=[int(t) for t in types],
        merges=merges,
        bos=ids[named["bos"]],
        eos=ids[named["eos"]],
        pad=ids.get(named["pad"]) if named["pad"] else None,
        end_token=named["eos"],
    )


def _guess_kind(tok: dict) -> str:
    """A tokenizer's kind from tokenizer.json, for a run directory without tinylm.yaml."""
    model_type = (tok.get("model") or {}).get("type")
    if model_type == "BPE":
        return "bpe"
    if model_type == "WordLevel" and (tok.get("pre_tokenizer") or {}).get("type") == "Split":
        return "char"
    return "word" if model_type == "WordLevel" else str(model_type)


def is_tinylms(tok: dict, kind: str) -> bool:
    """Whether tokenizer.json is the tokenizer tinylm builds of this kind: nothing added
    (dropout, prefixes, a normalizer, other pre-tokenizers) that llama.cpp would not do."""
    model, pre = tok.get("model") or {}, tok.get("pre_tokenizer") or {}
    if kind == "bpe":
        return (
            model.get("type") == "BPE"
            and not any(
                model.get(k)
                for k in (
                    "dropout",
                    "continuing_subword_prefix",
                    "end_of_word_suffix",
                    "byte_fallback",
                    "ignore_merges",
                )
            )
            and tok.get("normalizer") is None
            and all(pre.get(k) == v for k, v in BYTE_LEVEL_PRE.items())
            and (tok.get("decoder") or {}).get("type") == "ByteLevel"
        )
    return (
        model.get("type") == "WordLevel"
        and tok.get("normalizer") is None
        and all(pre.get(k) == v for k, v in CHAR_PRE.items())
    )
