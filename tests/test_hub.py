"""Runs on the Hugging Face Hub: what `tinylm push` sends (exactly), a run named
`hf:OWNER/NAME` read from a Hugging Face cache laid out as huggingface_hub lays out a download
(checked with its own scan_cache_dir), and one sentence within seconds when the Hub cannot be
reached. The upload itself needs the Hub and an account, so it is not run here."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, scan_cache_dir

import tinylm
from conftest import tiny_config, train_run
from tinylm import hub
from tinylm.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
REV = "4b1d5e7a0c9f8e6d5c4b3a29181716151413121a"  # a commit hash, as the Hub names revisions
SHARED = [
    "Modelfile",
    "README.md",
    "card.json",
    "config.json",
    "eval.json",
    "loss.png",
    "model-f32.gguf",
    "model.safetensors",
    "tinylm.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, words_file):
    """A trained word completer with everything a run directory may hold beside what it
    shares: the checkpoint, split, log, trackers' files, reports, temporaries."""
    out = tmp_path_factory.mktemp("hub") / "words"
    run, _ = train_run(tiny_config(data=words_file, steps=20), out)
    model = tinylm.load(out)
    model.evaluate(samples=0)  # eval.json, and the card
    tinylm.export_gguf(out)  # model-f32.gguf and its Modelfile
    model.report(out / "report.html")
    (out / "eval-other.json").write_text("{}\n")
    (out / "trackers.json").write_text('{"tensorboard": {"log_dir": "tensorboard"}}\n')
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    (out / "wandb").mkdir()
    (out / ".model.safetensors.8k2x.tmp").write_bytes(b"half a file")
    (out / ".save-3j1q.tmp").mkdir()
    return out


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_push_sends_what_a_user_shares_and_nothing_else(shared_run, capsys):
    assert {"checkpoint.safetensors", "metrics.jsonl", "split", "samples.txt"} <= {
        p.name for p in shared_run.iterdir()
    }
    code, out, err = run_cli(capsys, "push", shared_run, "me/words", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [*SHARED, f"Would send these {len(SHARED)} files."]
    assert hub.shared_files(shared_run) == SHARED
    assert tinylm.push(shared_run, "me/words", dry_run=True) == (SHARED, None)
    card = ModelCard.load(shared_run / "README.md")  # written again, for the repository
    assert card.data.model_name == "me/words" and "gguf" in card.data.tags
    assert 'tinylm.load("hf:me/words")' in card.text
    assert 'AutoModelForCausalLM.from_pretrained("me/words")' in card.text
    assert "hf download me/words model-f32.gguf Modelfile" in card.text


def test_push_refuses_a_bad_repository_name_and_a_run_without_weights(tmp_path, capsys):
    code, _, err = run_cli(capsys, "push", tmp_path, "just-a-name", "--dry-run")
    assert code == 2 and "write OWNER/NAME" in err
    with pytest.raises(tinylm.UserError, match="no trained weights"):
        hub.shared_files(tmp_path)


def hub_cache(root: Path, repo: str, run: Path, files: list[str]) -> None:
    """`files` of `run` as revision REV of model repository `repo` in the cache `root`, laid
    out as huggingface_hub lays out a download: each file a blob named by its hash, the
    snapshot of REV links to them, refs/main names REV."""
    folder = root / f"models--{repo.replace('/', '--')}"
    for name in files:
        data = (run / name).read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / REV / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REV)


def tinylm_offline(cache: Path, home: Path, *code_or_argv: str, offline: bool = True):
    """tinylm (a command, or `-c CODE`) in a fresh process, with HF_HUB_CACHE set."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_CACHE": str(cache), "HF_HOME": str(home)}
    for name in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT"):
        env.pop(name, None)
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    argv = code_or_argv if code_or_argv[0] == "-c" else ("-m", "tinylm.cli", *code_or_argv)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    return done, time.perf_counter() - start


def test_an_hf_run_in_the_cache_is_a_run_like_any_other(shared_run, tmp_path, capsys):
    cache = tmp_path / "hub"
    hub_cache(cache, "me/words", shared_run, hub.shared_files(shared_run))
    [repo] = scan_cache_dir(cache).repos  # huggingface_hub's own reading of the cache
    assert repo.repo_id == "me/words" and repo.repo_type == "model"
    [revision] = repo.revisions
    assert revision.commit_hash == REV and revision.refs == frozenset({"main"})
    assert sorted(f.file_name for f in revision.files) == SHARED

    local = run_cli(capsys, "complete", shared_run, "fin", "inv", "--json")[1]
    done, _ = tinylm_offline(cache, tmp_path, "complete", "hf:me/words", "fin", "inv", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == local
    code = (
        "import tinylm; m = tinylm.load('hf:me/words'); print(m.run.path); print(m.complete('fin'))"
    )
    done, _ = tinylm_offline(cache, tmp_path, "-c", code, offline=False)  # cached: not asked
    assert done.returncode == 0, done.stderr
    where, *shown = done.stdout.splitlines()
    assert Path(where) == cache / "models--me--words" / "snapshots" / REV
    assert "\n".join(shown) == str(tinylm.load(shared_run).complete("fin"))


def test_an_hf_run_not_in_the_cache_offline_is_one_sentence(tmp_path):
    done, seconds = tinylm_offline(tmp_path / "hub", tmp_path, "info", "hf:me/words")
    assert done.returncode == 2 and seconds < 60
    assert done.stderr == (
        "tinylm: hf:me/words is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset "
        "it to download it once.\n"
    )
    done, _ = tinylm_offline(tmp_path / "hub", tmp_path, "push", tmp_path, "me/words")
    assert done.returncode == 2 and done.stderr == (
        "tinylm: HF_HUB_OFFLINE is set, and pushing needs the Hugging Face Hub; unset it.\n"
    )
    done, _ = tinylm_offline(tmp_path / "hub", tmp_path, "push", tmp_path, "me/w", offline=False)
    assert done.returncode == 2 and done.stderr == (
        "tinylm: Log in to the Hugging Face Hub first: `hf auth login`, or set HF_TOKEN.\n"
    )


def test_a_hub_out_of_reach_is_one_sentence_within_seconds(monkeypatch):
    """This machine reaches no Hub: the question fails at once, in one sentence (a machine
    that reaches it hears that there is no such model, or that the token is refused; one
    with HF_HUB_OFFLINE set asks nothing)."""
    start = time.perf_counter()
    with pytest.raises(tinylm.UserError) as e:
        hub.local_copy("hf:tinylm-tests/no-such-run")
    assert time.perf_counter() - start < hub.TIMEOUT + 5
    assert str(e.value).startswith(
        (
            "Cannot reach the Hugging Face Hub to download hf:tinylm-tests/no-such-run",
            "There is no model tinylm-tests/no-such-run",
            "hf:tinylm-tests/no-such-run is not in the Hugging Face cache",
        )
    )
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    start = time.perf_counter()
    with pytest.raises(tinylm.UserError) as e:
        hub.login("tinylm-tests/no-such-run")
    assert time.perf_counter() - start < hub.TIMEOUT + 5
    assert str(e.value).startswith(
        ("Cannot reach the Hugging Face Hub to push", "The Hugging Face Hub refused", "HF_HUB_")
    )
