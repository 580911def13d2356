"""Word lists for the word completer: where they come from, how they are cleaned and split."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

from tinylm.data.files import CONTROLS, SNIFF, check_wide, warn
from tinylm.errors import UserError

SPLIT_SEED = 1337  # fixed, so runs with different training seeds share one split
JUNK = b"\x00" + CONTROLS  # bytes no line of a word list holds: it is binary


def load_words(source: str, min_len: int = 3, max_len: int = 15) -> list[str]:
    """Cleaned, deduplicated, sorted words from `source` ("words" or a one-word-a-line file)."""
    raw = builtin_words() if source == "words" else read_word_file(Path(source))
    words = clean_words(raw, min_len, max_len)
    if not words:
        raise UserError(
            f"{source} has no usable words (alphabetic, {min_len}-{max_len} letters, one a line)."
        )
    return words


def builtin_words() -> list[str]:
    """NLTK's `words` corpus if installed (NLTK_DATA is honoured), else the same web2 list from
    the `english-words` package, which works offline."""
    try:  # imported here: nltk takes ~3 s to import, and only the built-in word list needs it
        from nltk.corpus import words

        return words.words("en")
    except (ImportError, LookupError, OSError):
        pass
    try:
        from english_words import get_english_words_set

        return sorted(get_english_words_set(["web2"], lower=True, alpha=True))
    except ImportError:
        raise UserError(
            "No word list found: install NLTK's corpus (python -m nltk.downloader words) "
            "or the english-words package (pip install english-words), or pass --data FILE."
        ) from None


def read_word_file(path: Path) -> list[str]:
    """The file's lines. A line that is not UTF-8 text (binary junk, another encoding) is
    skipped with one warning; a file of mostly such lines is refused as binary."""
    if not path.exists():
        raise UserError(f"Data file {path} does not exist.")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a text file with one word a line.")
    data = path.read_bytes()
    if not data.strip():
        raise UserError(f"Data file {path} is empty.")
    check_wide(path, data[:SNIFF])
    lines, junk, first = [], 0, 0
    for n, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = None
        if line is None or any(c in raw for c in JUNK):
            junk, first = junk + 1, first or n
        else:
            lines.append(line)
    given = junk + sum(1 for line in lines if line.strip())
    if junk * 2 > given:
        raise UserError(f"{path} looks binary; give a UTF-8 text file with one word a line.")
    if junk:
        warn(
            f"skipped {junk:,} of {given:,} lines of {path} that are not UTF-8 text "
            f"(first: line {first})"
        )
    return lines


def clean_words(raw, min_len: int, max_len: int) -> list[str]:
    """As the original notebook: lowercase, alphabetic only, min_len..max_len letters; unique."""
    out = set()
    for w in raw:
        w = w.strip().lower()
        if w.isalpha() and min_len <= len(w) <= max_len:
            out.add(w)
    return sorted(out)


def split_words(
    words: list[str], val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Deterministic train / val / test split: sort, shuffle with a fixed seed, then cut."""
    if len(words) < 3:
        raise UserError(f"Only {len(words)} usable words; at least 3 are needed to split.")
    order = sorted(set(words))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test = round(len(order) * test_fraction) if test_fraction > 0 else 0
    n_val = max(1, round(len(order) * val_fraction))
    n_test = min(n_test, len(order) - n_val - 1)
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
