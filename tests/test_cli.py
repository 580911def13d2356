import json
import shutil
import subprocess
import sys

import pytest

from conftest import TINY_MODEL
from tinylm.cli import main


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_prints_report_and_writes_run(tmp_path, words_file, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "words",
        "--data",
        words_file,
        "--out",
        out,
        "--max-steps",
        40,
        *TINY_MODEL,
    )
    assert code == 0, err
    assert "bits/char (M1)" in stdout and "bigram baseline" in stdout
    for t in ("0.5", "1.0", "1.5"):
        assert f"temperature {t}:" in stdout
    for prefix in ("fin", "inv", "tra", "mar", "ban", "com", "acc"):
        assert f"  {prefix} " in stdout
    assert f"Loss curve: {out / 'loss.png'}" in stdout
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m1 = json.loads((out / "eval.json").read_text())["bits_per_char"]
    assert f"{'model':<20}{m1:>16.3f}" in stdout  # the table shows the saved figures


def test_eval_json(tiny_run, capsys):
    code, stdout, _ = run_cli(capsys, "eval", tiny_run.path, "--json", "--samples", 20)
    assert code == 0
    result = json.loads(stdout)
    assert {"bits_per_char", "next_char_accuracy", "accuracy_per_letter", "baselines"} <= set(
        result
    )
    assert result["sampled_words"]["samples"] == 20


def test_eval_on_another_word_list(tiny_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("finance\ntrain\nbanana\nmarket\nx1y\nüber\n")
    code, stdout, _ = run_cli(capsys, "eval", tiny_run.path, "--data", other, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["words"] == 4 and result["skipped_words"] == 1  # x1y is not a word, über unknown
    assert json.loads((tiny_run.path / "eval-other.json").read_text()) == result
    assert result["targets"] == sum(len(w) + 1 for w in ("finance", "train", "banana", "market"))


def test_complete_gives_the_likeliest_distinct_words_with_probabilities(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "complete", tiny_run.path, "fin", "tra", "--top", 4, "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prefix"] for r in rows] == ["fin"] * 4 + ["tra"] * 4
    for prefix in ("fin", "tra"):
        mine = [r for r in rows if r["prefix"] == prefix]
        assert len({r["completion"] for r in mine}) == 4  # distinct words
        assert all(r["completion"].startswith(prefix) for r in mine)
        probs = [r["probability"] for r in mine]
        assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1
    # --temperature 0 --num N: the N likeliest words, not one word N times
    code, greedy, _ = run_cli(
        capsys, "complete", tiny_run.path, "fin", "--temperature", 0, "--num", 3, "--json"
    )
    assert [json.loads(x) for x in greedy.splitlines()] == rows[:3]


def test_sampled_completions_are_reproducible_and_respect_options(tiny_run, capsys):
    args = ("complete", tiny_run.path, "fin", "tra", "--temperature", 1, "--num", 4, "--seed", 7)
    code, first, _ = run_cli(capsys, *args)
    assert code == 0
    assert run_cli(capsys, *args)[1] == first
    lines = first.strip().splitlines()
    assert lines[0].split()[0] == "fin" and len(lines[0].split()) == 5
    assert all(w.startswith("fin") for w in lines[0].split()[1:])
    code, short, _ = run_cli(
        capsys,
        "complete",
        tiny_run.path,
        "ban",
        "--max-length",
        5,
        "--num",
        8,
        "--temperature",
        1.5,
    )
    assert code == 0 and all(len(w.rstrip("…")) <= 5 for w in short.split()[1:])


def test_info(tiny_run, capsys):
    code, stdout, _ = run_cli(capsys, "info", tiny_run.path)
    assert code == 0
    for phrase in (
        "Configuration",
        "Parameters:",
        "embeddings",
        "attention",
        "feed-forward",
        "total",
        "Split: test",
        "Best validation loss",
    ):
        assert phrase in stdout


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["info", "/nonexistent/run"], "does not exist"),
        (["complete", "RUN", "fin", "--temperature", "-1"], "--temperature must be"),
        (["generate", "RUN", "x", "--temperature", "nan"], "--temperature must be"),
        (["generate", "RUN", "x", "--top-p", "0"], "--top-p must be"),
        (["generate", "RUN", "x", "--top-k", "-2"], "--top-k must be"),
        (["generate", "RUN", "x", "--seed", str(10**30)], "seed must be"),
        (["complete", "RUN", "fi9"], "'9'"),
        (["train", "wrods"], "Unknown preset"),
        (["train", "words", "--bogus"], "unrecognized arguments"),
        (["train", "words", "--time", "soon"], "duration"),
        (["train", "words", "--out", "RUN"], "already holds a run"),
        (["eval", "RUN", "--data", "/nonexistent.txt"], "does not exist"),
    ],
)
def test_user_mistakes_get_one_sentence_and_exit_2(tiny_run, capsys, argv, phrase):
    argv = [str(tiny_run.path) if a == "RUN" else a for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert phrase in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_data_files_exit_2_and_create_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    for data in (empty, binary):
        out = tmp_path / f"run-{data.stem}"
        code, _, err = run_cli(capsys, "train", "words", "--data", data, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_corrupt_run_is_reported_and_left_untouched(tiny_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run.path, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in broken.iterdir())
    for argv in (["complete", broken, "fin"], ["eval", broken], ["info", broken]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "unreadable" in err
    (broken / "tinylm.yaml").unlink()
    code, _, err = run_cli(capsys, "complete", broken, "fin")
    assert code == 2 and "not a tinylm run directory" in err
    after = sorted((p.name, p.stat().st_mtime_ns) for p in broken.iterdir())
    assert after == [x for x in before if x[0] != "tinylm.yaml"]


def test_console_script_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tinylm.cli", "info", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr


BAD_SETTINGS = [
    (["train.lr=-1"], "train.lr"),
    (["train.lr=nan"], "train.lr"),
    (["train.lr=inf"], "train.lr"),
    (["train.lr=fast"], "train.lr"),
    (["train.eval_every=0"], "train.eval_every"),
    (["train.batch_tokens=0"], "train.batch_tokens"),
    (["train.warmup_steps=-5"], "train.warmup_steps"),
    (["train.cooldown=1.5"], "train.cooldown"),
    (["train.beta2=1.5"], "train.beta2"),
    (["train.nosuch=1"], "train.nosuch"),
    (["model.d_model=0"], "model.d_model"),
    (["model.d_model=12.5"], "model.d_model"),
    (["model.n_heads=7"], "model.n_heads"),
    (["model.dropout=1.0"], "model.dropout"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["data.min_len=10", "data.max_len=5"], "data.min_len"),
    (["tokenizer.vocab_size=-3"], "tokenizer.vocab_size"),
    (["train.precision=fp64"], "train.precision"),
]


@pytest.mark.parametrize("overrides,name", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_every_setting_is_checked_before_work_starts(
    tmp_path, monkeypatch, words_file, capsys, overrides, name
):
    monkeypatch.chdir(tmp_path)  # the default run directory would be runs/words here
    code, _, err = run_cli(capsys, "train", "--data", words_file, *overrides)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert name in err and ("must" in err or "has " in err), err  # the field, what is allowed
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing at all


def test_text_batches_that_cannot_divide_exactly_are_refused(tmp_path, text_file, capsys):
    from conftest import TINY_TEXT_MODEL

    out = tmp_path / "run"
    base = ["train", "pile-bpe", "--data", text_file, "--out", out, *TINY_MODEL, *TINY_TEXT_MODEL]
    for bad, phrase in (
        ("train.batch_tokens=500", "multiple of model.context_length (32)"),
        ("train.micro_batch_tokens=48", "divides the 512 tokens"),
    ):
        code, _, err = run_cli(capsys, *base, bad)
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_command_line_starts_without_the_heavy_libraries():
    """`tinylm --help` stays fast (under 0.5 s) because nothing heavy is imported up front."""
    code = (
        "import sys, tinylm.cli as c; c.build_parser().format_help(); "
        "print([m for m in ('torch', 'transformers', 'datasets', 'numpy', 'tinylm.train') "
        "if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "tinylm.cli", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--device" in result.stdout and "--resume" in result.stdout
