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


def test_offline_hub_fails_fast_with_one_sentence(unreachable_hub):
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


# --- streaming: the same as reading the whole corpus ------------------------------------------


def whole_corpus_reference(folder, val_fraction, test_fraction):
    """What tinylm did before it streamed, written out independently: every document in
    memory (files sorted; .jsonl / .json / .parquet records, .txt cut at blank lines), split by
    the SHA-1 of its text, the last training document held out when no document went to val."""
    import hashlib

    docs = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jsonl":
            docs += [json.loads(line)["text"] for line in path.read_text().splitlines()]
        elif path.suffix == ".json":
            docs += [r["text"] for r in json.loads(path.read_text())]
        elif path.suffix == ".parquet":
            docs += pq.read_table(path).column("text").to_pylist()
        elif path.suffix == ".txt":  # paragraphs joined up to 16,000 characters
            pieces, current, length = [], [], 0
            for para in path.read_text().split("\n\n"):
                if length and length + len(para) > 16_000:
                    pieces.append("\n\n".join(current))
                    current, length = [], 0
                current.append(para)
                length += len(para) + 2
            docs += [*pieces, "\n\n".join(current)]
    docs = [d for d in docs if d.strip()]
    split = {"train": [], "val": [], "test": []}
    for doc in docs:
        u = int.from_bytes(hashlib.sha1(doc.encode()).digest()[:8], "big") / 2**64
        name = (
            "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        )
        split[name].append(doc)
    if not split["val"]:
        split["val"].append(split["train"].pop())
    return split


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_streaming_gives_the_split_tokenizer_and_tokens_of_the_whole_corpus(
    tmp_path, monkeypatch, kind
):
    """Read in blocks of 64 bytes and tokenized in chunks of 2,000 characters, every format
    gives the documents, split, tokenizer and packed tokens of reading it whole (the code
    before streaming, written out in whole_corpus_reference)."""
    import numpy as np

    from tinylm.data import files, splits
    from tinylm.tokenizer import train_tokenizer

    docs = synthetic_documents(60, 30, seed=4) + synthetic_documents(100, 60, seed=5)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))
    (folder / "b.json").write_text(json.dumps([{"text": d} for d in docs[20:35]]))
    pq.write_table(pa.table({"text": docs[35:50]}), folder / "c.parquet")
    (folder / "d.txt").write_text("\n\n".join(docs[50:]))  # ~27,000 characters: 2 pieces
    monkeypatch.setattr(files, "BLOCK", 64)
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 2000)

    extra = [*TINY_TEXT_MODEL, f"tokenizer.kind={kind}", "tokenizer.vocab_size=300"]
    cfg = tiny_config("pile-bpe", data=folder, extra=extra)
    data = splits.TextData.new(cfg)
    tokenizer, _ = data.build_tokenizer(cfg)
    meta = data.tokens(tokenizer)

    ref = whole_corpus_reference(folder, 0.1, 0.1)
    assert data.documents("test") == ref["test"] and data.documents("val") == ref["val"]
    assert data.split["counts"] == {k: len(v) for k, v in ref.items()}
    assert tokenizer.tok.to_str() == train_tokenizer(kind, ref["train"], 300).tok.to_str()
    for name, part in ref.items():
        want = [i for doc in part for i in (tokenizer.eos_id, *tokenizer.encode(doc))]
        assert prepare.open_tokens(meta, name).tolist() == want, name
        assert meta["tokens"][name] == len(want)
    assert prepare.open_tokens(meta, "train").dtype == np.uint16


def test_the_tiny_corpus_rule_moves_the_last_training_document_in_the_files(tmp_path):
    from tinylm.data.splits import TextData

    path = tmp_path / "three.jsonl"
    docs = ["alpha beta gamma " * 20, "delta epsilon " * 30, "zeta eta theta " * 25]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = tiny_config("pile-word", data=path, extra=[*TINY_TEXT_MODEL, "data.val_fraction=0.0"])
    cfg.data.test_fraction = 0.0
    data = TextData.new(cfg)
    tokenizer, _ = data.build_tokenizer(cfg)
    meta = data.tokens(tokenizer)
    assert data.split["counts"] == {"train": 2, "val": 1, "test": 0} and data.split["val"] == [2]
    val = prepare.open_tokens(meta, "val").tolist()
    assert val == [tokenizer.eos_id, *tokenizer.encode(docs[2])]
    train = prepare.open_tokens(meta, "train").tolist()
    assert train == [t for d in docs[:2] for t in (tokenizer.eos_id, *tokenizer.encode(d))]
    assert data.documents("val") == docs[2:] and data.documents("train") == docs[:2]


def test_the_tokenizer_sample_is_bounded_uniform_and_order_free(tmp_path, monkeypatch):
    from tinylm.data import text

    docs = synthetic_documents(300, 20, seed=6)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    b.write_text("".join(json.dumps({"text": d}) + "\n" for d in reversed(docs)))
    limit = sum(len(d) for d in docs) // 4
    monkeypatch.setattr(text, "SAMPLE_CHARS", limit)
    sample = text.training_sample(open_corpus(str(a)), 0.1, 0.1)
    assert limit - max(map(len, docs)) < sum(map(len, sample)) <= limit
    train = split_documents(docs, 0.1, 0.1)["train"]
    assert set(sample) < {docs[i] for i in train}
    assert sample == [d for d in docs if d in set(sample)]  # in corpus order
    assert sorted(text.training_sample(open_corpus(str(b)), 0.1, 0.1)) == sorted(sample)
    monkeypatch.setattr(text, "SAMPLE_CHARS", 10**9)  # a corpus that fits: every train doc
    assert text.training_sample(open_corpus(str(a)), 0.1, 0.1) == [docs[i] for i in train]


def test_txt_documents_do_not_depend_on_where_blocks_end():
    from tinylm.data.files import cut_stream

    lines = "\n".join(["one line"] * 400)  # 3,599 characters without a blank line
    paragraphs = synthetic_documents(30, 15, seed=8)
    text = "\n\n".join([*paragraphs, lines, "x" * 700, "end"])
    whole = list(cut_stream([text], 500))
    for size in (1, 7, 64, 499, 501, 5000):
        blocks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(cut_stream(blocks, 500)) == whole
    assert all(len(d) <= 500 for d in whole if "\n\n" not in d)
    # a paragraph longer than a piece is cut after a line end (55 lines are 494 characters),
    # or with no line end every 500 characters; what is left of it starts the next document
    start = whole.index("\n".join(["one line"] * 55))
    assert whole[start:] == [
        *["\n".join(["one line"] * 55)] * 7,
        "\n".join(["one line"] * 15),
        "x" * 500,
        "x" * 200 + "\n\nend",
    ]
    assert "\n\n".join(whole[:start]) == "\n\n".join(paragraphs)


def test_a_corpus_changed_since_training_is_refused(tmp_path, text_file, capsys):
    from tinylm.cli import main

    path = tmp_path / "c.jsonl"
    path.write_bytes(text_file.read_bytes())
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300"]
    run, _ = train_run(tiny_config("pile-bpe", data=path, steps=1, extra=extra), tmp_path / "r")
    with open(path, "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    assert main(["eval", str(run.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"tinylm: The data at {path} changed since {run.path} was trained on it; its split "
        "would not be the same."
    )


# --- hub datasets: hf:NAME:CONFIG, and a populated local cache offline ------------------------


def test_hf_name_and_configuration():
    from tinylm.config import RunConfig
    from tinylm.data.hub import parse

    assert parse("hf:NeelNanda/pile-10k", None) == ("NeelNanda/pile-10k", None)
    assert parse("hf:wikitext:wikitext-103-raw-v1", None) == ("wikitext", "wikitext-103-raw-v1")
    assert parse("hf:wikitext", "wikitext-2-raw-v1") == ("wikitext", "wikitext-2-raw-v1")
    assert parse("hf:wikitext:a", "a") == ("wikitext", "a")
    with pytest.raises(UserError, match="names the configuration 'a' and data.hf_config is 'b'"):
        parse("hf:wikitext:a", "b")
    with pytest.raises(UserError, match="names no dataset"):
        parse("hf::a", None)
    cfg = RunConfig.from_dict({"task": "text", "tokenizer": {"kind": "bpe"}, "data": {}})
    assert cfg.data.hf_config is None
    cfg = RunConfig.from_dict(
        {"task": "text", "tokenizer": {"kind": "bpe"}, "data": {"hf_config": "wikitext-2-raw-v1"}}
    )
    assert cfg.data.hf_config == "wikitext-2-raw-v1"


def build_hub_cache(cache, name: str, configs: dict[str, dict[str, list]]):
    """The `datasets` cache a download of hub dataset `name` leaves (one folder per
    configuration, arrow files and dataset_info.json), built without the network by the parquet
    builder a hub download runs, from local parquet files."""
    import shutil

    from datasets.packaged_modules.parquet.parquet import Parquet

    *owner, short = name.split("/")
    for config, columns in configs.items():
        table = cache.parent / f"{config}.parquet"
        pq.write_table(pa.table(columns), table)
        builder = Parquet(
            cache_dir=str(cache / "build"),
            dataset_name=short,
            config_name=config,
            hash="0123456789abcdef",
            data_files={"train": [str(table)]},
        )
        builder.download_and_prepare()
        built = next((cache / "build" / short).iterdir())  # config-<hash of the data files>
        shutil.move(built, cache / "___".join([*owner, short]) / config)
    shutil.rmtree(cache / "build")


def offline_hub(monkeypatch, cache) -> None:
    """HF_HUB_OFFLINE=1 with `cache` as the datasets cache, for libraries imported already."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


def test_a_hub_dataset_streams_from_a_populated_cache_offline(tmp_path, monkeypatch):
    a, b = synthetic_documents(8, 20, seed=11), synthetic_documents(6, 20, seed=12)
    cache = tmp_path / "datasets"
    build_hub_cache(cache, "someone/tiny", {"first": {"text": a}, "second": {"text": b}})
    offline_hub(monkeypatch, cache)
    start = time.perf_counter()
    second = open_corpus("hf:someone/tiny:second")
    assert list(second.stream()) == b
    first = open_corpus("hf:someone/tiny", hf_config="first")
    assert list(first.stream()) == a
    assert time.perf_counter() - start < 20
    assert first.fingerprint != second.fingerprint
    assert open_corpus("hf:someone/tiny", hf_config="first").fingerprint == first.fingerprint
    assert first.description == "hf:someone/tiny (first, split train)"


def test_every_command_on_the_data_page_runs(tmp_path, monkeypatch, capsys):
    """docs/data.md's commands, the hub's too (tests/test_docs.py runs the page's ```bash
    blocks, not its ```shell ones), with a tiny model and budget: local sources from a folder
    made here, hub sources offline from a datasets cache holding the names the page uses."""
    import re
    import shlex
    from pathlib import Path

    from tinylm.cli import main

    page = Path(__file__).resolve().parents[1] / "docs" / "data.md"
    blocks = re.findall(r"```(?:bash|shell)\n(.*?)```", page.read_text(), flags=re.S)
    commands = [line for b in blocks for line in b.splitlines() if line.startswith("tinylm ")]
    assert len(commands) >= 5 and any("hf:wikitext:" in c for c in commands)
    docs = synthetic_documents(30, 40, seed=13)
    (tmp_path / "my_texts").mkdir()
    (tmp_path / "my_texts/texts.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in docs)
    )
    cache = tmp_path / "datasets"
    build_hub_cache(cache, "NeelNanda/pile-10k", {"default": {"text": docs, "meta": docs}})
    build_hub_cache(cache, "wikitext", {"wikitext-103-raw-v1": {"text": docs}})
    offline_hub(monkeypatch, cache)
    monkeypatch.chdir(tmp_path)
    for n, line in enumerate(commands):
        tiny = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "--max-steps", "1", "--no-report"]
        code = main([*shlex.split(line)[1:], "--out", f"run-{n}", *tiny])
        assert code == 0, (line, capsys.readouterr().err[-2000:])


def test_a_hub_run_recorded_before_streaming_still_reloads(tmp_path, monkeypatch, capsys):
    """Its fingerprint was of datasets' arrow cache: not comparable, so not compared (the
    split's counts are); a fingerprint of today's kind that differs is a changed dataset."""
    from tinylm.cli import main

    docs = synthetic_documents(20, 40, seed=14)
    cache = tmp_path / "datasets"
    build_hub_cache(cache, "someone/tiny", {"default": {"text": docs}})
    offline_hub(monkeypatch, cache)
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300"]
    cfg = tiny_config("pile-bpe", data="hf:someone/tiny", steps=1, extra=extra)
    run, _ = train_run(cfg, tmp_path / "r")
    path = run.path / "split/split.json"
    record = json.loads(path.read_text())
    old_rule = "by document: SHA-1 of its text, as a fraction of 2**64, below test_fraction -> "
    old_rule += "test, below test_fraction + val_fraction -> val"
    path.write_text(json.dumps({**record, "fingerprint": "hf-f00dfeedf00dfeed", "rule": old_rule}))
    assert main(["eval", str(run.path)]) == 0
    path.write_text(json.dumps({**record, "fingerprint": "hf-f00dfeedf00dfeed"}))
    assert main(["eval", str(run.path)]) == 2
    assert "changed since" in capsys.readouterr().err
