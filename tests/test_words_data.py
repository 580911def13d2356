import zipfile

import pytest

from conftest import SHARED
from tinylm.data.words import builtin_words, clean_words, load_words, split_words
from tinylm.errors import UserError


def test_clean_filters_like_the_notebook():
    raw = ["Apple", "apple", "ab", "x-ray", "naïve", "abcdefghijklmnop", " tree ", "it's", "Zoo"]
    assert clean_words(raw, 3, 15) == ["apple", "naïve", "tree", "zoo"]


def test_split_is_deterministic_and_disjoint():
    words = [f"w{'a' * (i % 7)}{chr(97 + i % 26)}" for i in range(1000)]
    words = sorted(set(words))
    a = split_words(words, 0.1, 0.1)
    b = split_words(list(reversed(words)), 0.1, 0.1)
    assert a == b  # the order of the input does not matter
    parts = [set(a[k]) for k in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(words)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def fresh_words_loader(monkeypatch, nltk_data):
    """NLTK caches a loaded corpus; give each test a loader that looks in `nltk_data` only."""
    import nltk
    from nltk.corpus.reader import WordListCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(nltk.data, "path", [str(nltk_data)])
    loader = LazyCorpusLoader("words", WordListCorpusReader, r"(?!README|\.).*", encoding="ascii")
    monkeypatch.setattr(nltk.corpus, "words", loader)


def test_builtin_words_from_english_words_when_nltk_has_no_corpus(monkeypatch, tmp_path):
    fresh_words_loader(monkeypatch, tmp_path)  # an empty NLTK data folder
    words = load_words("words")
    assert 200_000 < len(words) < 260_000 and "financial" in words


@pytest.mark.skipif(not (SHARED / "data/nltk_data").is_dir(), reason="no shared NLTK data")
def test_builtin_words_from_nltk_corpus(monkeypatch, tmp_path):
    # NLTK's own layout, with one marker word added, so we know which source was read.
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    with zipfile.ZipFile(SHARED / "data/nltk_data/corpora/words.zip") as src:
        en = src.read("words/en").decode() + "qqqzzzmarker\n"
        with zipfile.ZipFile(corpora / "words.zip", "w") as dst:
            dst.writestr("words/", "")
            dst.writestr("words/en", en)
            dst.writestr("words/README", "test copy")
    fresh_words_loader(monkeypatch, tmp_path)
    assert "qqqzzzmarker" in builtin_words()


def test_bad_files_get_one_sentence(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02abc\xff")
    nothing = tmp_path / "digits.txt"
    nothing.write_text("123\n4567\n")
    cases = {
        empty: "empty",
        binary: "binary",
        nothing: "no usable words",
        tmp_path / "nope.txt": "does not exist",
        tmp_path: "folder",
    }
    for path, phrase in cases.items():
        with pytest.raises(UserError, match=phrase):
            load_words(str(path))


def test_packed_word_batches_hold_each_word_once_an_epoch_in_one_shape(words_file):
    """Decoder batches: rows of packed words, all one shape, each word `<sos> w` predicting
    `w <eos>` at positions 0..len(w); over an epoch every word is read about once."""
    from collections import Counter

    from tinylm.data.batching import PackedWordBatches
    from tinylm.tokenizer import build_char

    words = words_file.read_text().split()
    tok = build_char(words)
    data = PackedWordBatches(words, tok, 512, seed=3)
    seen = Counter()
    for step in range(data.steps_per_epoch):
        batch = data.batch(step)
        assert {k: tuple(v.shape) for k, v in batch.items()} == {
            k: (data.rows_per_batch, data.row) for k in ("input_ids", "targets", "position_ids")
        }
        for x, y, p in zip(
            batch["input_ids"], batch["targets"], batch["position_ids"], strict=True
        ):
            starts = [i for i, v in enumerate(p.tolist()) if v == 0 and y[i] != -100]
            for a in starts:
                n = next((i for i in range(a + 1, len(p)) if p[i] == 0), len(p)) - a
                assert x[a] == tok.bos_id and y[a + n - 1] == tok.eos_id
                assert p[a : a + n].tolist() == list(range(n))
                assert x[a + 1 : a + n].tolist() == y[a : a + n - 1].tolist()
                seen[tok.decode(y[a : a + n - 1].tolist())] += 1
    assert set(seen) <= set(words)
    assert len(seen) >= 0.99 * len(words) and max(seen.values()) <= 2
    filled = sum(len(w) + 1 for w in seen.elements())
    assert filled / (data.steps_per_epoch * data.rows_per_batch * data.row) >= 0.9
    assert data.batch(5)["input_ids"].equal(
        PackedWordBatches(words, tok, 512, 3).batch(5)["input_ids"]
    )
