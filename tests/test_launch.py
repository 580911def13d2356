"""`tinylm train --resume` keeps its word: a resumed run continues exactly as it started, with
its own config, data and budget; only --time / --max-steps may change (a new total budget)."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TINY_MODEL
from tinylm.cli import main
from tinylm.errors import UserError
from tinylm.runs import RunDir
from tinylm.training import default_out


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def checkpoint_state(run_dir: Path) -> dict:
    import json

    with safe_open(run_dir / "checkpoint.safetensors", "pt") as f:
        return json.loads(f.metadata()["tinylm"])["meta"]["state"]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights, optimizer and random state, and the same log."""
    ca, cb = load_file(a / "checkpoint.safetensors"), load_file(b / "checkpoint.safetensors")
    assert ca.keys() == cb.keys()
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("step", "tokens", "loss", "val_loss", "lr")
    log = lambda d: [tuple(r.get(k) for k in keys) for r in RunDir(d).metrics()]  # noqa: E731
    assert log(a) == log(b)


@pytest.fixture
def small_run(tmp_path, words_file, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "words",
        "--data",
        words_file,
        "--out",
        out,
        "--max-steps",
        5,
        "--no-report",
        *TINY_MODEL,
    )
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["words-seq2seq"], "preset words"),
        (["train.lr=1e-4"], "train.lr is 0.003"),
        (["--data", "other.txt"], "--data is"),
        (["--seed", "7"], "--seed is 1337"),
        (["--init-from", "elsewhere"], "--init-from is None"),
        (["train.time=60"], "train.time is None"),
    ],
)
def test_arguments_that_contradict_the_saved_run_are_refused(small_run, capsys, argv, phrase):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in small_run.iterdir())
    code, _, err = run_cli(capsys, "train", *argv, "--resume", "--out", small_run)
    assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
    assert "--time or --max-steps" in err or "leave the preset out" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in small_run.iterdir()) == before


def test_agreeing_arguments_are_accepted_and_max_steps_extends_the_run(
    small_run, words_file, capsys
):
    code, _, err = run_cli(
        capsys,
        "train",
        "words",
        "--resume",
        "--out",
        small_run,
        "--data",
        words_file,
        "--seed",
        1337,
        "--max-steps",
        12,
        "train.lr=0.003",
        "--no-report",
    )
    assert code == 0, err
    assert checkpoint_state(small_run)["step"] == 12
    cfg = RunDir.open(small_run).config()
    assert cfg.train.max_steps == 12 and cfg.train.time is None  # the new total budget, saved


def test_a_bare_resume_keeps_the_saved_budget_not_the_presets(small_run, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", "--out", small_run, "--no-report")
    assert code == 0, err
    assert checkpoint_state(small_run)["step"] == 5  # it had finished: nothing more to do
    assert RunDir.open(small_run).config().train.time is None  # not the preset's 300 s


def test_resume_finds_runs_of_its_preset_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("words", "words-2", "words-seq2seq", "words-big"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "tinylm.yaml").write_text("preset: x\n")
        time.sleep(0.01)  # words-seq2seq and words-big are the newest
    assert default_out("words", resume=True) == Path("runs/words-2")
    assert default_out("words", resume=False) == Path("runs/words-3")
    assert default_out("words-seq2seq", resume=True) == Path("runs/words-seq2seq")
    with pytest.raises(UserError, match="No run of preset 'pile-bpe'"):
        default_out("pile-bpe", resume=True)


def test_a_time_budget_run_resumed_uses_the_time_it_had_left(tmp_path, words_file, capsys):
    out = tmp_path / "run"

    def ctrl_c_once_training(after: float):
        def press():
            while not (out / "checkpoint.safetensors").is_file():
                time.sleep(0.01)
            time.sleep(after)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=press, daemon=True).start()

    budget = 4
    ctrl_c_once_training(after=2.5)
    code, _, err = run_cli(
        capsys,
        "train",
        "words",
        "--data",
        words_file,
        "--out",
        out,
        "--time",
        budget,
        "--no-report",
        *TINY_MODEL,
    )
    assert code == 130, err
    first = checkpoint_state(out)["elapsed"]
    assert 1 < first < budget
    guard = threading.Timer(60, lambda: os.kill(os.getpid(), signal.SIGINT))  # not 300 s
    guard.start()
    try:
        t0 = time.perf_counter()
        code, _, err = run_cli(capsys, "train", "--resume", "--out", out, "--no-report")
        wall = time.perf_counter() - t0
    finally:
        guard.cancel()
    assert code == 0, err
    final = checkpoint_state(out)["elapsed"]
    # It trained to the budget and stopped far short of a fresh budget of its own
    # (first + budget): the slack is for a slow last step, as the budget is checked between steps.
    assert budget <= final < first + budget - 0.5
    assert wall >= budget - first - 0.1  # the resumed run trained for the time that was left


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(
    tmp_path, words_file, capsys, monkeypatch
):
    args = [
        "train",
        "words",
        "--data",
        words_file,
        "--max-steps",
        30,
        "--no-report",
        *TINY_MODEL,
        "train.eval_every=10",
        "model.dropout=0.1",
    ]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "whole")
    assert code == 0, err

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died right after creating the run

    monkeypatch.setattr("tinylm.training.fit", killed)
    assert run_cli(capsys, *args, "--out", tmp_path / "part")[0] == 130
    monkeypatch.undo()
    assert checkpoint_state(tmp_path / "part")["step"] == 0
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "part", "--no-report")
    assert code == 0, err
    assert_same_run(tmp_path / "whole", tmp_path / "part")


def test_a_creation_cut_short_leaves_no_run_and_is_cleaned_up(tmp_path, words_file, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stage = tmp_path / f".run.creating-{dead}-abc"  # what a kill -9 during creation leaves
    (stage / "split").mkdir(parents=True)
    (stage / "tinylm.yaml").write_text("preset: words\n")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "run")
    assert code == 2 and "does not exist" in err  # no half run to choke on
    code, _, err = run_cli(
        capsys,
        "train",
        "words",
        "--data",
        words_file,
        "--out",
        tmp_path / "run",
        "--max-steps",
        2,
        "--no-report",
        *TINY_MODEL,
    )
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "tinylm.cli", "train", *map(str, argv)]


def test_two_kills_then_a_bare_resume_end_bit_identical(tmp_path, words_file):
    """kill -9 at two random moments (the first once the run exists, the second anywhere in
    the resumed process), then `tinylm train --resume --out RUN` with nothing else; trained as
    the presets ship (torch.compile on, precision auto, the default threads), a small model."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    args = [
        "words",
        "--data",
        words_file,
        "--max-steps",
        150,
        "--no-report",
        *TINY_MODEL,
        "train.batch_tokens=512",
        "train.eval_every=20",
        "model.dropout=0.1",
        "train.compile=true",
        "train.precision=auto",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default threads
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    reference = subprocess.run(cli(*args, "--out", ref), timeout=300, **quiet)
    assert reference.returncode == 0, reference.stderr.decode()[-2000:]

    p = subprocess.Popen(cli(*args, "--out", victim), **quiet)
    deadline = time.time() + 120
    while not (victim / "tinylm.yaml").is_file():
        assert p.poll() is None and time.time() < deadline, p.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 1.0))  # within its ~150 steps of training
    p.kill()
    p.wait()
    p = subprocess.Popen(cli("--resume", "--out", victim, "--no-report"), **quiet)
    time.sleep(rng.uniform(0, 4))  # starting up (imports, data), or training
    p.kill()
    p.wait()
    final = subprocess.run(cli("--resume", "--out", victim, "--no-report"), timeout=300, **quiet)
    assert final.returncode == 0, (seed, final.stderr.decode()[-2000:])
    assert_same_run(ref, victim)
    assert not [p.name for p in victim.iterdir() if p.name.endswith(".tmp")], seed


def test_a_bare_resume_continues_a_run_of_any_preset(tmp_path, text_file, capsys):
    from conftest import TINY_TEXT_MODEL

    out = tmp_path / "bpe"
    args = [
        "train",
        "pile-bpe",
        "--data",
        text_file,
        "--out",
        out,
        "--max-steps",
        3,
        "--no-report",
        *TINY_MODEL,
        *TINY_TEXT_MODEL,
        "tokenizer.vocab_size=300",
    ]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    code, _, err = run_cli(
        capsys, "train", "--resume", "--out", out, "--max-steps", 5, "--no-report"
    )
    assert code == 0, err
    assert checkpoint_state(out)["step"] == 5


def test_a_refused_resume_writes_nothing(small_run, capsys):
    (small_run / "checkpoint.safetensors").write_bytes(b"\x00" * 64)
    before = {p.name: p.read_bytes() for p in small_run.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, "train", "--resume", "--out", small_run, "--max-steps", 9)
    assert code == 2 and "checkpoint" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in small_run.iterdir() if p.is_file()} == before
