import importlib
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY_TEXT_MODEL, synthetic_documents, tiny_config, train_run
from tinylm.data import prepare
from tinylm.data.text import cut_text, open_corpus, split_documents
from tinylm.errors import UserError

DOCS = synthetic_documents(12, 40)


def documents(source: str) -> list[str]:
    return list(open_corpus(source).stream())


def test_every_source_format_gives_the_same_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": d, "meta": 1}) + "\n" for d in DOCS[:4])
    )
    (tmp_path / "b.json").write_text(json.dumps([{"text": d} for d in DOCS[4:8]]))
    pq.write_table(pa.table({"text": DOCS[8:]}), tmp_path / "c.parquet")
    whole = documents(str(tmp_path))  # a folder: every file, sorted
    assert whole == DOCS
    assert documents(str(tmp_path / "*.json*")) == DOCS[:8]  # a glob
    assert documents(str(tmp_path / "c.parquet")) == DOCS[8:]
    (tmp_path / "d.txt").write_text("\n\n".join(DOCS))
    assert "".join(documents(str(tmp_path / "d.txt"))).replace("\n\n", "") == "".join(DOCS)


def test_text_files_are_cut_at_paragraphs():
    paragraphs = [f"paragraph {i} " + "x" * 3000 for i in range(20)]
    pieces = cut_text("\n\n".join(paragraphs), size=16_000)
    assert len(pieces) == 4 and all(len(p) <= 16_000 for p in pieces)
    assert "\n\n".join(pieces) == "\n\n".join(paragraphs)
    assert cut_text("short") == ["short"]


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "one"}) + "\n")
    first = open_corpus(str(path)).fingerprint
    assert open_corpus(str(path)).fingerprint == first
    path.write_text(json.dumps({"text": "two"}) + "\n")
    assert open_corpus(str(path)).fingerprint != first


def test_split_is_by_document_deterministic_and_order_free():
    docs = synthetic_documents(200, 10)
    a = split_documents(docs, 0.1, 0.1)
    b = split_documents(list(reversed(docs)), 0.1, 0.1)
    names = lambda s, ds: {k: sorted(ds[i] for i in v) for k, v in s.items()}  # noqa: E731
    assert names(a, docs) == names(b, list(reversed(docs)))
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(200))
    assert 5 < len(a["val"]) < 40 and 5 < len(a["test"]) < 40


@pytest.mark.parametrize(
    "content,phrase",
    [
        ("", "no text"),
        ('{"body": "x"}\n', "no 'text' field"),
        ("not json\n", "not a JSON object"),
    ],
)
def test_bad_corpora_get_one_sentence(tmp_path, content, phrase):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=phrase):
        documents(str(path))


def test_unsupported_and_missing_sources(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported"):
        open_corpus(str(tmp_path / "x.csv"))
    with pytest.raises(UserError, match="does not exist"):
        open_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="No .* file matches"):
        open_corpus(str(tmp_path / "*.parquet"))


def test_offline_hub_fails_fast_with_one_sentence(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "dataset_info", unreachable)
    start = time.perf_counter()
    with pytest.raises(UserError, match="Cannot reach the Hugging Face hub"):
        open_corpus("hf:NeelNanda/pile-10k")
    assert time.perf_counter() - start < 5


def test_unknown_hub_dataset(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    def missing(*args, **kwargs):
        # the HTTP library huggingface_hub is built on (httpx or its successor)
        http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])
        request = http.Request("GET", "https://huggingface.co/api/datasets/someone/nothing")
        raise RepositoryNotFoundError("404", response=http.Response(404, request=request))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "dataset_info", missing)
    with pytest.raises(UserError, match="no dataset 'someone/nothing'"):
        open_corpus("hf:someone/nothing")


def test_token_cache_makes_a_second_run_start_at_once(tmp_path, text_file, monkeypatch):
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=200"]
    cfg = tiny_config("pile-word", data=text_file, steps=2, extra=extra)
    train_run(cfg, tmp_path / "first", show_progress=False)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(prepare, "pack_corpus", no_tokenizing)
    cfg = tiny_config("pile-word", data=text_file, steps=2, extra=extra)
    run, _ = train_run(cfg, tmp_path / "second", show_progress=False)
    assert (run.path / "tokenizer.json").read_text() == (
        tmp_path / "first/tokenizer.json"
    ).read_text()


def test_packed_tokens_start_each_document_with_end_of_text(tmp_path, text_file):
    from tinylm.data.splits import TextData

    cfg = tiny_config(
        "pile-bpe", data=text_file, steps=1, extra=[*TINY_TEXT_MODEL, "tokenizer.vocab_size=300"]
    )
    run, _ = train_run(cfg, tmp_path / "r", show_progress=False)
    cfg = run.config()
    data = TextData.reload(run, cfg)
    tokenizer = run.tokenizer(cfg)
    train, _, _ = data.batches(cfg, tokenizer, None, cfg.train.batch_tokens, 0)
    tokens = train.tokens
    assert tokens.dtype.name == "uint16"
    eos = tokenizer.eos_id
    assert tokens[0] == eos
    train_docs = data.documents("train")
    assert int((tokens == eos).sum()) == len(train_docs)  # one per document
    first_doc = train_docs[0]
    n = len(tokenizer.encode(first_doc))
    assert tokenizer.decode(tokens[1 : n + 1].tolist()) == first_doc


def test_corpus_shorter_than_one_sequence(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"text": f"word{i} and more"}) + "\n" for i in range(12)))
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=280", "model.context_length=512"]
    cfg = tiny_config("pile-bpe", data=path, steps=2, extra=extra)
    with pytest.raises(UserError, match="fewer than one training sequence"):
        train_run(cfg, tmp_path / "r", show_progress=False)


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"text": "   "}) + "\n")
    cfg = tiny_config("pile-bpe", data=path, steps=2, extra=TINY_TEXT_MODEL)
    with pytest.raises(UserError, match="no text"):
        train_run(cfg, tmp_path / "r", show_progress=False)


def test_jsonl_is_split_on_newlines_only(tmp_path):
    # U+2028, U+2029 and U+0085 may stand unescaped inside a JSON string; str.splitlines()
    # would cut the line there and lose the document.
    docs = ["one\u2028line separator", "para\u2029graph", "next\x85line", "plain\r\nwindows"]
    path = tmp_path / "c.jsonl"
    rows = [json.dumps({"text": d}, ensure_ascii=False) for d in docs]
    path.write_text("\r\n".join(rows[:2]) + "\r\n" + "\n".join(rows[2:]) + "\n", newline="")
    assert "\u2028" in path.read_text()  # written raw, not escaped
    assert documents(str(path)) == docs
