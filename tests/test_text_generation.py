import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY_TEXT_MODEL, tiny_config, train_run
from tinylm import load
from tinylm.cli import main
from tinylm.inference import Engine, Sampling
from tinylm.runs import RunDir


def greedy_tokens(loaded, prompt_ids, n):
    job = loaded.job("", Sampling(0.0), max_tokens=n)
    job.prompt, job.banned = prompt_ids, ()  # plain greedy, as transformers does it
    return [e.token for e in Engine(loaded.net).generate([job]) if e.token is not None]


@pytest.mark.parametrize("preset", ["pile-word", "pile-bpe"])
def test_transformers_loads_the_run_and_computes_the_same(text_runs, preset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = text_runs[preset]
    ours = run.load_model()
    hf = AutoModelForCausalLM.from_pretrained(run.path).eval()
    tok = AutoTokenizer.from_pretrained(run.path)
    ids = tok("the quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ours(ids).logits, hf(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # greedy generation: transformers' generate and tinylm's engine agree token for token
    out = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    mine = greedy_tokens(load(run.path), ids[0].tolist(), 8)
    assert mine and out[0, ids.shape[1] :].tolist()[: len(mine)] == mine


def test_generation_respects_max_new_tokens_and_goes_past_the_context(text_runs):
    loaded = load(text_runs["pile-bpe"].path)
    loaded.task.stop_ids = ()  # nothing ends it early
    pieces = list(loaded.stream("a", max_new_tokens=7, temperature=1.0, top_p=1.0, seed=0))
    assert 1 <= len(pieces) <= 7  # a piece holds one token or more (a split UTF-8 character)
    ctx = loaded.cfg.model.context_length
    job = loaded.job("a", Sampling(1.0), max_tokens=2 * ctx, seed=0)
    steps = [e for e in Engine(loaded.net).generate([job]) if e.token is not None]
    assert len(steps) == 2 * ctx  # the window slides, generation goes on


def test_generation_stops_at_end_of_text(text_runs, monkeypatch):
    from tinylm.inference import engine

    loaded = load(text_runs["pile-word"].path)
    calls = []

    def end_after_three_words(logits, *args):  # the sampler draws end-of-text the 4th time
        calls.append(1)
        return loaded.tokenizer.eos_id if len(calls) > 3 else choose(logits, *args)

    choose = engine.choose
    monkeypatch.setattr(engine, "choose", end_after_three_words)
    pieces = list(loaded.stream("the", max_new_tokens=20, temperature=1.0, top_p=1.0, seed=0))
    assert len(pieces) == 3 and all(p.startswith(" ") for p in pieces)


def test_generate_command_streams_text(text_runs, capsys):
    code = main(
        [
            "generate",
            str(text_runs["pile-bpe"].path),
            "Once",
            "--seed",
            "1",
            "--max-new-tokens",
            "12",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("Once") and len(out) > len("Once\n")
    again = main(
        [
            "generate",
            str(text_runs["pile-bpe"].path),
            "Once",
            "--seed",
            "1",
            "--max-new-tokens",
            "12",
        ]
    )
    assert again == 0 and capsys.readouterr().out == out  # a seed makes it reproducible


def test_chat_loop_through_stdin(text_runs):
    run = text_runs["pile-word"]
    cmd = [sys.executable, "-m", "tinylm.cli", "chat", str(run.path), "--seed", "0"]
    result = subprocess.run(
        cmd,
        input="hello there\n\n   \nthe dog\nquit\nnever read\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("> ") == 5  # two answers, two empty lines ignored, then quit
    assert "hello there" in result.stdout and "the dog" in result.stdout
    assert "never read" not in result.stdout
    eof = subprocess.run(cmd, input="hello\n", capture_output=True, text=True, timeout=120)
    assert eof.returncode == 0 and eof.stdout.count("> ") == 2  # Ctrl-D ends it too


def test_text_eval_is_honest_about_unknown_words(text_runs):
    word = load(text_runs["pile-word"].path).evaluate().to_dict()
    bpe = load(text_runs["pile-bpe"].path).evaluate().to_dict()
    for r in (word, bpe):
        assert r["tokens"] > 100 and r["bytes"] > 1000
        assert 0 < r["top1_accuracy"] <= r["top5_accuracy"] <= 1
        assert r["perplexity"] == pytest.approx(2.718281828 ** r["loss_per_token"], rel=1e-6)
    assert bpe["unk_rate"] == 0 and bpe["unk_bits_per_byte"] == 0
    assert word["unk_rate"] > 0.01  # the synthetic corpus has rare words by design
    assert word["unk_bits_per_byte"] > 0
    for r in (word, bpe):
        assert r["bits_per_byte"] < r["baselines"]["unigram"]["bits_per_byte"]


def test_eval_command_on_another_source(text_runs, text_file, capsys):
    code = main(["eval", str(text_runs["pile-bpe"].path), "--data", str(text_file), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["documents"] == 80 and result["data"] == str(text_file)


def test_plot_several_runs(text_runs, tmp_path, capsys):
    out = tmp_path / "both.png"
    code = main(["plot", *(str(r.path) for r in text_runs.values()), "-o", str(out), "--x", "time"])
    assert code == 0 and out.stat().st_size > 5000


def test_continued_training_keeps_the_tokenizer_and_starts_from_the_weights(text_runs, tmp_path):
    source = text_runs["pile-bpe"]
    new_text = tmp_path / "mine.txt"
    new_text.write_text(
        ("Domain words: enzyme kinetics, substrate, catalysis. " * 40 + "\n\n") * 30
    )
    out = tmp_path / "adapted"
    code = main(
        [
            "train",
            "--init-from",
            str(source.path),
            "--data",
            str(new_text),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "train.lr=0",
            "--no-report",
        ]
    )
    assert code == 0
    assert (out / "tokenizer.json").read_text() == (source.path / "tokenizer.json").read_text()
    a, b = (
        source.load_model().state_dict(),
        RunDir.open(out).load_model().state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the weights are the source's
    code = main(
        ["train", "--init-from", str(source.path), "--data", str(new_text), "model.d_model=64"]
    )
    assert code == 2


def test_text_run_resume_is_exact(tmp_path, text_file):
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "train.eval_every=10"]
    whole, _ = train_run(
        tiny_config("pile-bpe", data=text_file, steps=30, extra=extra),
        tmp_path / "whole",
        show_progress=False,
    )
    train_run(
        tiny_config("pile-bpe", data=text_file, steps=30, extra=extra),
        tmp_path / "part",
        should_stop=lambda s: s.step == 13,
        show_progress=False,
    )
    part, _ = train_run(
        tiny_config("pile-bpe", data=text_file, steps=30, extra=extra),
        tmp_path / "part",
        resume=True,
        show_progress=False,
    )
    from safetensors.torch import load_file

    a, b = load_file(whole.checkpoint_path), load_file(part.checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
