import pytest

from conftest import synthetic_documents
from tinylm.tokenizer import Tokenizer, build_bpe, build_char, build_word

TEXT = "Héllo, wörld! The naïve café — 3.14 × 2 = 6.28; emoji 🙂 and tabs\tand\nnew lines."


def test_bpe_round_trips_any_text(tmp_path):
    tok = build_bpe(synthetic_documents(30, 50) + [TEXT], vocab_size=400)
    assert tok.vocab_size <= 400 and tok.unk_id is None
    for text in (TEXT, "   leading spaces", "", "日本語のテキスト", "x" * 500):
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path, "bpe")
    assert again.encode(TEXT) == tok.encode(TEXT) and again.eos_id == tok.eos_id


def test_word_tokenizer_is_the_notebooks():
    docs = ["The cat sat on the mat. The dog sat too!"] * 5 + ["A rare zebra appeared."]
    tok = build_word(docs, vocab_size=9)
    vocab = tok.tok.get_vocab()
    assert len(vocab) == 9 and {"<UNK>", "<EOS>"} <= set(vocab)
    assert tok.id_to_token(tok.unk_id) == "<UNK>" and tok.eos_id == tok.bos_id
    ids = tok.encode("THE Cat, sat!! on a zebra")
    words = [tok.id_to_token(i) for i in ids]
    assert words == ["the", "cat", "sat", "on", "<UNK>", "<UNK>"]  # lowercase, no punctuation
    assert tok.decode(tok.encode("The cat sat.")) == "the cat sat"
    assert build_word(synthetic_documents(50, 80), vocab_size=10_000).vocab_size <= 10_000


def test_word_tokenizer_keeps_the_words_that_cover_most_bytes():
    """A word left out is charged its bytes, so 'elephant' seen 3 times (24 bytes) beats 'ox'
    seen 10 (20 bytes), which beats 'cow' seen 6 (18)."""
    docs = ["ox " * 10, "Elephant, elephant! ELEPHANT.", "cow " * 6]
    assert set(build_word(docs, vocab_size=3).tok.get_vocab()) == {"<UNK>", "<EOS>", "elephant"}
    tok = build_word(docs, vocab_size=4)
    vocab = tok.tok.get_vocab()
    assert set(vocab) == {"<UNK>", "<EOS>", "elephant", "ox"}
    assert tok.encode("cow ox") == [vocab["<UNK>"], vocab["ox"]]


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = build_char(["apple", "banana", "zebra"])
    assert tok.decode(tok.encode("zebra")) == "zebra"
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {0, 1, 2}
    try:
        tok.check_chars("ap9le")
    except Exception as e:
        assert "'9'" in str(e) and "vocabulary" in str(e)
    else:
        raise AssertionError("an unknown character was accepted")


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_hugging_face_encodes_as_tinylm_and_adds_no_start_token(tmp_path, kind):
    """GPT-2's convention, which lm-evaluation-harness expects: encoding adds nothing, and
    `bos_token` names the token a document is read after."""
    from transformers import AutoTokenizer

    build = build_bpe if kind == "bpe" else build_word
    tok = build(synthetic_documents(10, 30), vocab_size=300)
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf("Hello world").input_ids == tok.encode("Hello world")
    assert hf.bos_token_id == tok.bos_id == tok.eos_id
    if kind == "bpe":
        assert hf.decode(tok.encode(TEXT)) == TEXT


def test_a_special_token_typed_as_text_is_text(tmp_path):
    from transformers import AutoTokenizer

    tok = build_bpe(synthetic_documents(10, 30), vocab_size=300)
    text = "one<|endoftext|>two"
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.decode(ids) == text
    assert tok.encode_batch([text]) == [ids]
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path, "bpe").encode(text) == ids
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == ids
    assert tok.encode_template("<|endoftext|>") == [tok.eos_id]  # a chat template's own
    assert tok.token_text(tok.eos_id) == "<|endoftext|>"


def test_the_character_tokenizer_still_starts_words_with_sos(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char(["apple", "banana", "zebra"])
    tok.save(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("zebra").input_ids == [
        tok.bos_id,
        *tok.encode("zebra"),
    ]


def test_the_byte_table_is_gpt2s_as_tokenizers_decodes_it():
    """Each byte-level character stands for the byte `tokenizers`' own ByteLevel decoder gives
    it (the detokenizer and the GGUF export read bytes through this table)."""
    from tokenizers import decoders, pre_tokenizers

    from tinylm.tokenizer import BYTE_OF

    assert sorted(BYTE_OF) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert BYTE_OF["Ġ"] == ord(" ") and BYTE_OF["Ċ"] == ord("\n") and BYTE_OF["a"] == ord("a")
    decoder = decoders.ByteLevel()
    for char, byte in BYTE_OF.items():
        if byte < 128:  # a lone byte of 128 or more is not UTF-8 text on its own
            assert decoder.decode([char]) == chr(byte)
