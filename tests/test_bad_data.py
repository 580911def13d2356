"""What users feed tinylm by mistake, through the real command line: every row of the table in
docs/data.md either stops with exit 2 and one sentence naming the file (and the line), or goes
on with exit 0 and one warning line saying what was skipped and how much. Never a traceback,
never exit 1."""

import gzip
import json
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_text_data import build_hub_cache, offline_hub

from conftest import TINY_MODEL, TINY_TEXT_MODEL, synthetic_documents, web2_sample
from tinylm.cli import main

DOCS = synthetic_documents(40, 60, seed=21)
RECORDS = [json.dumps({"text": d}) for d in DOCS]
TEXT_ARGS = ["--max-steps", "1", "--no-report", *TINY_TEXT_MODEL, "tokenizer.vocab_size=300"]
WORD_ARGS = ["--max-steps", "1", "--no-report", *TINY_MODEL]


def cli(capsys, *argv) -> tuple[int, list[str]]:
    """Exit code and stderr's lines (training's progress lines left out: they are not
    messages)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip() and _message(line)]


def _message(line: str) -> bool:
    return not line.startswith("Data: ") and "step [" not in line and "steps/s" not in line


def train_text(capsys, tmp_path, data, *extra):
    return cli(
        capsys, "train", "pile-bpe", "--data", data, "--out", tmp_path / "run", *TEXT_ARGS, *extra
    )


def stops(code: int, lines: list[str], *phrases: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("tinylm: "), lines
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def goes_on(code: int, lines: list[str], warning: str) -> None:
    assert code == 0, lines
    assert lines == [f"tinylm: {warning}"]


# --- text sources that stop ---------------------------------------------------------------------


TEXT_STOPS = {
    # name: (file name, its bytes, phrases of the one sentence)
    "latin-1 text": (
        "notes.txt",
        "\n\n".join([DOCS[0], "Un café, s'il vous plaît", *DOCS[1:]]).encode("latin-1"),
        ["notes.txt, line 3, is not UTF-8 (the byte 0xE9)", "iconv -f latin1 -t UTF-8"],
    ),
    "latin-1 JSON lines": (
        "data.jsonl",
        "\n".join([*RECORDS[:4], json.dumps({"text": "déjà"}, ensure_ascii=False)]).encode(
            "latin-1"
        ),
        ["data.jsonl, line 5, is not UTF-8 (the byte 0xE9)"],
    ),
    "UTF-16 text": (
        "notes.txt",
        "\n\n".join(DOCS).encode("utf-16"),  # with its byte-order mark
        ["notes.txt is UTF-16 text; tinylm reads UTF-8", "iconv -f UTF-16 -t UTF-8"],
    ),
    "UTF-16 JSON lines without a byte-order mark": (
        "data.jsonl",
        "\n".join(RECORDS).encode("utf-16-le"),
        ["data.jsonl is UTF-16 (without a byte-order mark) text"],
    ),
    "UTF-32 text": ("notes.txt", "\n\n".join(DOCS).encode("utf-32"), ["is UTF-32 text"]),
    "binary garbage": (
        "data.jsonl",
        random.Random(0).randbytes(5000).replace(b"\x00", b"\x01"),  # no NUL byte
        ["data.jsonl looks binary, not text"],
    ),
    "compressed text named .txt": (
        "notes.txt",
        gzip.compress("\n\n".join(DOCS).encode()),
        ["notes.txt looks binary"],
    ),
    "JSON lines with no JSON": (
        "data.jsonl",
        b"title,text\nfirst,a document\n",
        ["data.jsonl, line 1, is not a JSON object"],
    ),
    "JSON lines with no record holding the field": (
        "data.jsonl",
        "\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)).encode(),
        ["data.jsonl has no 'text' field with text (line 1: it has body, id)", "data.text_field"],
    ),
    "a JSON array that is not valid JSON": (
        "data.json",
        ("[\n" + ",\n".join(RECORDS[:3]) + '\n{"text": "no comma before me"}\n]').encode(),
        ["data.json is not valid JSON (line 5, column 1: expecting ',' or ']')"],
    ),
    "an empty file": ("data.jsonl", b"", ["data.jsonl holds no text"]),
    "documents that are all white space": (
        "data.jsonl",
        b'{"text": "   "}\n{"text": "\\n\\n"}\n',
        ["data.jsonl holds no text"],
    ),
}


@pytest.mark.parametrize("case", TEXT_STOPS, ids=str)
def test_text_sources_that_stop(capsys, tmp_path, case):
    name, content, phrases = TEXT_STOPS[case]
    path = tmp_path / name
    path.write_bytes(content)
    stops(*train_text(capsys, tmp_path, path), *phrases)
    assert not (tmp_path / "run").exists()


def parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_without_the_field_stops(capsys, tmp_path):
    path = parquet(tmp_path / "c.parquet", body=DOCS, id=list(range(len(DOCS))))
    stops(*train_text(capsys, tmp_path, path), "c.parquet has no column 'text' (it has body, id)")


def test_parquet_whose_field_is_not_text_stops(capsys, tmp_path):
    path = parquet(tmp_path / "c.parquet", text=list(range(len(DOCS))))
    stops(*train_text(capsys, tmp_path, path), "The column 'text' of", "holds int64, not text")


def test_a_file_that_is_not_parquet_stops(capsys, tmp_path):
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 10)
    stops(*train_text(capsys, tmp_path, path), "c.parquet is not a readable Parquet file")


def test_a_damaged_file_in_a_folder_stops_naming_it(capsys, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(RECORDS) + "\n")
    (folder / "b.txt").write_bytes("Un café".encode("latin-1"))
    stops(*train_text(capsys, tmp_path, folder), "b.txt, line 1, is not UTF-8")


# --- text sources that go on with one warning ---------------------------------------------------


def test_a_broken_json_line_is_skipped(capsys, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([*RECORDS[:16], '{"text": "a line cut sho', *RECORDS[16:]]) + "\n")
    warning = f"skipped 1 of 41 lines of {path} that are not JSON (first: line 17)"
    goes_on(*train_text(capsys, tmp_path, path), warning)


def test_records_without_text_are_skipped(capsys, tmp_path):
    path = tmp_path / "data.jsonl"
    bad = ['{"text": null}', '{"text": 42}', '{"title": "no text here"}', '["a", "list"]']
    path.write_text("\n".join([*RECORDS[:5], *bad, *RECORDS[5:]]) + "\n")
    warning = f"skipped 4 of 44 lines of {path} with no text in 'text' (first: line 6)"
    goes_on(*train_text(capsys, tmp_path, path), warning)


def test_records_of_a_json_array_without_text_are_skipped(capsys, tmp_path):
    path = tmp_path / "data.json"
    records = [{"text": d} for d in DOCS]
    records[4:4] = [{"text": None}, {"meta": 1}]
    path.write_text(json.dumps(records, indent=1))
    warning = f"skipped 2 of 42 records of {path} with no text in 'text' (first: record 5)"
    goes_on(*train_text(capsys, tmp_path, path), warning)


def test_null_parquet_values_are_skipped(capsys, tmp_path):
    path = parquet(tmp_path / "c.parquet", text=[DOCS[0], None, *DOCS[1:], None])
    warning = f"skipped 2 of 42 rows of {path} with no text in 'text' (first: row 2)"
    goes_on(*train_text(capsys, tmp_path, path), warning)


def test_an_empty_file_among_others_is_skipped(capsys, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(RECORDS) + "\n")
    (folder / "b.jsonl").write_text("")
    (folder / "c.txt").write_text("\n\n".join(DOCS))
    warning = f"skipped 1 of 3 files of {folder} that are empty (first: {folder / 'b.jsonl'})"
    goes_on(*train_text(capsys, tmp_path, folder), warning)


def test_a_second_run_on_the_same_data_says_it_again(capsys, tmp_path):
    """From the token cache, what the first run's reading skipped (the run trains on it)."""
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([*RECORDS[:3], "not json", *RECORDS[3:]]) + "\n")
    warning = f"skipped 1 of 41 lines of {path} that are not JSON (first: line 4)"
    goes_on(*train_text(capsys, tmp_path, path), warning)
    out = ["--out", tmp_path / "second"]
    goes_on(*cli(capsys, "train", "pile-bpe", "--data", path, *TEXT_ARGS, *out), warning)


# --- hub datasets -------------------------------------------------------------------------------


def test_an_unreachable_hub_stops_within_seconds(capsys, tmp_path, unreachable_hub):
    start = time.perf_counter()
    stops(
        *train_text(capsys, tmp_path, "hf:NeelNanda/pile-10k"), "Cannot reach the Hugging Face hub"
    )
    assert time.perf_counter() - start < 5


@pytest.fixture
def hub(tmp_path, monkeypatch, capsys):
    """Offline, with a datasets cache holding someone/tiny in two configurations."""
    docs = {"first": DOCS[:20], "second": DOCS[20:]}
    columns = {
        "first": {"text": [*docs["first"][:3], None, *docs["first"][3:]]},
        "second": {"text": docs["second"], "id": list(range(20))},
    }
    cache = tmp_path / "datasets"
    build_hub_cache(cache, "someone/tiny", columns)
    offline_hub(monkeypatch, cache)
    capsys.readouterr()  # what building the cache printed
    return docs


def test_a_hub_dataset_trains_offline_from_the_cache(capsys, tmp_path, hub):
    warning = (
        "skipped 1 of 21 records of hf:someone/tiny:first with no text in 'text' (first: record 4)"
    )
    goes_on(*train_text(capsys, tmp_path, "hf:someone/tiny:first"), warning)
    record = json.loads((tmp_path / "run/split/split.json").read_text())
    assert sum(record["counts"].values()) == 20


@pytest.mark.parametrize(
    "source,extra,phrases",
    [
        (
            "hf:someone/other",
            [],
            ["hf:someone/other is not in the local datasets cache", "offline"],
        ),
        (
            "hf:someone/tiny",
            [],
            ["hf:someone/tiny has several configurations", "hf:someone/tiny:CONFIG"],
        ),
        ("hf:someone/tiny:third", [], ["hf:someone/tiny has no configuration 'third'", "'first'"]),
        ("hf:someone/tiny:first", ["data.hf_split=test"], ["has no split 'test' (it has train)"]),
        (
            "hf:someone/tiny:second",
            ["data.text_field=body"],
            ["has no field 'body' (it has text, id)"],
        ),
        ("hf:someone/tiny:first", ["data.hf_config=second"], ["give one of them"]),
    ],
    ids=[
        "not cached",
        "which configuration",
        "no such configuration",
        "no such split",
        "no such field",
        "two configurations",
    ],
)
def test_hub_mistakes_stop(capsys, tmp_path, hub, source, extra, phrases):
    start = time.perf_counter()
    stops(*train_text(capsys, tmp_path, source, *extra), *phrases)
    assert time.perf_counter() - start < 10


# --- word lists ---------------------------------------------------------------------------------


def train_words(capsys, tmp_path, data):
    return cli(capsys, "train", "words", "--data", data, "--out", tmp_path / "run", *WORD_ARGS)


def test_a_word_list_with_junk_lines_goes_on(capsys, tmp_path):
    words = web2_sample(300, seed=5)
    lines = [w.encode() for w in words]
    lines[2:2] = [b"\x00\x01\x02\xff\xfe", "naïve".encode("latin-1")]
    path = tmp_path / "words.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    warning = f"skipped 2 of 302 lines of {path} that are not UTF-8 text (first: line 3)"
    goes_on(*train_words(capsys, tmp_path, path), warning)


@pytest.mark.parametrize(
    "content,phrases",
    [
        (b"123\n4567\nx-ray\n", ["has no usable words (alphabetic, 3-15 letters, one a line)"]),
        (bytes(range(256)) * 40, ["words.txt looks binary"]),
        ("\n".join(["apple", "banana", "cherry"]).encode("utf-16"), ["words.txt is UTF-16 text"]),
        (b"\n\n  \n", ["words.txt is empty"]),
    ],
    ids=["no usable word", "binary", "UTF-16", "empty"],
)
def test_word_lists_that_stop(capsys, tmp_path, content, phrases):
    path = tmp_path / "words.txt"
    path.write_bytes(content)
    stops(*train_words(capsys, tmp_path, path), *phrases)


# --- damaged run directories --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny word run, text run and encoder-decoder run, each trained for a few steps."""
    from conftest import tiny_config, train_run

    root = tmp_path_factory.mktemp("trained")
    words = root / "words.txt"
    words.write_text("\n".join(web2_sample(500, seed=7)) + "\n")
    text = root / "text.jsonl"
    text.write_text("\n".join(RECORDS) + "\n")
    runs = {}
    for name, preset, data, extra in (
        ("words", "words", words, []),
        ("seq2seq", "words-seq2seq", words, []),
        ("text", "pile-bpe", text, [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300"]),
    ):
        cfg = tiny_config(preset, data=data, steps=4, extra=[*extra, "train.eval_every=2"])
        runs[name], _ = train_run(cfg, root / name)
    return runs


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of one of the trained runs, to damage."""
    import shutil

    def copy(name: str):
        shutil.copytree(trained[name].path, tmp_path / name)
        return tmp_path / name

    return copy


def cut(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path) -> None:
    path.write_bytes(random.Random(1).randbytes(3000))


USES = {  # a command that reads each kind of run, and what it is given
    "words": [("info",), ("eval",), ("complete", "fin")],
    "text": [("info",), ("eval",), ("generate", "The", "--max-new-tokens", "3")],
    "seq2seq": [("complete", "fin")],
}


@pytest.mark.parametrize(
    "run,damage,phrases",
    [
        (
            "words",
            lambda r: garbage(r / "tinylm.yaml"),
            ["tinylm.yaml is damaged (not UTF-8 text)"],
        ),
        (
            "text",
            lambda r: (r / "tinylm.yaml").write_text("data: [a\n"),
            ["tinylm.yaml is damaged"],
        ),
        (
            "words",
            lambda r: (r / "tinylm.yaml").write_text("- a\n"),
            ["(not a mapping of settings)"],
        ),
        ("words", lambda r: (r / "tinylm.yaml").unlink(), ["is not a tinylm run directory"]),
        ("text", lambda r: (r / "tokenizer.json").unlink(), ["has no tokenizer.json"]),
        ("words", lambda r: garbage(r / "tokenizer.json"), ["tokenizer.json is damaged"]),
        ("text", lambda r: cut(r / "model.safetensors"), ["model.safetensors is unreadable"]),
        ("words", lambda r: garbage(r / "model.safetensors"), ["model.safetensors is unreadable"]),
        ("words", lambda r: (r / "model.safetensors").unlink(), ["has no trained weights yet"]),
        ("seq2seq", lambda r: garbage(r / "config.json"), ["config file", "is not a valid JSON"]),
        ("seq2seq", lambda r: (r / "config.json").unlink(), ["(it has no config.json)"]),
    ],
    ids=[
        "tinylm.yaml not UTF-8",
        "tinylm.yaml not YAML",
        "tinylm.yaml not settings",
        "tinylm.yaml missing",
        "tokenizer.json missing",
        "tokenizer.json damaged",
        "model.safetensors cut",
        "model.safetensors garbage",
        "model.safetensors missing",
        "config.json damaged (encoder-decoder)",
        "config.json missing (encoder-decoder)",
    ],
)
def test_a_damaged_run_file_stops_every_command_that_reads_it(capsys, copy, run, damage, phrases):
    path = copy(run)
    damage(path)
    for command, *args in USES[run]:
        stops(*cli(capsys, command, path, *args), str(path), *phrases)


def test_files_tinylm_does_not_read_do_not_stop_it(capsys, copy):
    """config.json of a decoder is for transformers; tokenizer_config.json for Hugging Face."""
    path = copy("text")
    garbage(path / "config.json")
    garbage(path / "tokenizer_config.json")
    code, lines = cli(capsys, "generate", path, "The", "--max-new-tokens", "3")
    assert code == 0 and lines == []


def resume(capsys, path):
    return cli(capsys, "train", "--resume", "--out", path, "--max-steps", "6", "--no-report")


@pytest.mark.parametrize(
    "damage,phrases",
    [
        (garbage, ["The checkpoint", "checkpoint.safetensors is unreadable"]),
        (cut, ["checkpoint.safetensors is unreadable", "incomplete metadata"]),
        (None, ["checkpoint.safetensors does not fit this run's model", "size mismatch"]),
        (lambda p: p.unlink(), ["has no checkpoint to resume from"]),
    ],
    ids=["garbage", "cut", "of another run", "missing"],
)
def test_a_damaged_checkpoint_is_refused_and_nothing_is_written(
    capsys, copy, trained, damage, phrases
):
    path = copy("words")
    checkpoint = path / "checkpoint.safetensors"
    if damage is None:  # the text run's: another vocabulary, another model
        checkpoint.write_bytes((trained["text"].path / "checkpoint.safetensors").read_bytes())
    else:
        damage(checkpoint)
    files = [p for p in path.rglob("*") if p.is_file() and p.name != "tinylm.yaml"]
    before = {p: p.read_bytes() for p in files}
    stops(*resume(capsys, path), *phrases)
    assert {p: p.read_bytes() for p in path.rglob("*") if p in before} == before
    assert sorted(p for p in path.rglob("*") if p.is_file() and p.name != "tinylm.yaml") == sorted(
        files
    )
    # tinylm.yaml records the budget asked for before the checkpoint is read (lifecycle.reopen)


def test_resuming_beside_damaged_weights_goes_on_from_the_checkpoint(capsys, copy):
    path = copy("words")
    cut(path / "model.safetensors")
    code, lines = resume(capsys, path)
    assert code == 0 and len(lines) == 1
    assert lines[0].startswith(f"tinylm: {path / 'model.safetensors'} is damaged (")
    assert "training goes on from the checkpoint" in lines[0]


def test_a_metrics_log_with_lines_that_are_not_records_goes_on(capsys, copy):
    path = copy("words")
    log = path / "metrics.jsonl"
    lines = log.read_bytes().split(b"\n")
    n = len([line for line in lines if line])
    log.write_bytes(b"\n".join([lines[0], b"\xff\xfe not a record", *lines[1:]]))
    warning = f"skipped 1 of {n + 1} lines of {log} that are not JSON records (first: line 2)"
    goes_on(*cli(capsys, "info", path), warning)
    log.write_bytes(log.read_bytes() + b'{"step": 9, "lo')  # a last line cut by a crash
    assert cli(capsys, "info", path) == (0, [])  # said once a process; a cut last line never


@pytest.mark.parametrize(
    "run,name,command,phrases",
    [
        ("text", "split/split.json", "eval", ["split.json is damaged (not UTF-8 text)"]),
        ("text", "split/split.json", "info", ["split.json is damaged"]),
        ("words", "split/test.txt", "eval", ["split/test.txt is damaged (not UTF-8 text)"]),
        ("words", "eval.json", "info", ["eval.json is damaged", "tinylm eval RUN"]),
        ("text", "eval.json", "report", ["eval.json is damaged", "tinylm eval RUN"]),
    ],
    ids=[
        "split.json, eval",
        "split.json, info",
        "a word run's split, eval",
        "eval.json, info",
        "eval.json, report",
    ],
)
def test_damaged_records_of_a_run_stop_the_commands_that_need_them(
    capsys, copy, run, name, command, phrases
):
    path = copy(run)
    (path / name).parent.mkdir(exist_ok=True)
    garbage(path / name)
    stops(*cli(capsys, command, path), str(path / name), *phrases)
