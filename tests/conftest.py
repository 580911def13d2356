"""Shared fixtures: small word lists and one tiny trained run, built once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tinylm.preset import apply_overrides, load_preset

SHARED = Path(__file__).resolve().parents[2] / "shared"

TINY_MODEL = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "train.batch_tokens=1024",
    "train.warmup_steps=10",
    "train.eval_every=50",
    "train.log_every=10",
    "train.precision=fp32",
    "train.compile=false",  # the text presets compile; a tiny test model is not worth it
]


def web2_sample(n: int, seed: int = 0) -> list[str]:
    from english_words import get_english_words_set

    words = sorted(
        w for w in get_english_words_set(["web2"], lower=True, alpha=True) if 3 <= len(w) <= 15
    )
    return random.Random(seed).sample(words, n)


@pytest.fixture(scope="session")
def words_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text("\n".join(web2_sample(4000)) + "\n")
    return path


def train_run(cfg, out, *, resume=False, should_stop=None, show_progress=False, device="auto"):
    """Train a test's config through the path `tinylm.train` takes, with the loop's test hook
    (`should_stop`, polled after every step); returns (run directory, summary)."""
    from tinylm import training

    p = training.plan(cfg, out=out, resume=resume)
    return training.run(p, should_stop=should_stop, show_progress=show_progress, device=device)


def tiny_config(preset="words", data=None, steps=150, extra=()):
    cfg = apply_overrides(load_preset(preset), [*TINY_MODEL, *extra])
    cfg.train.time, cfg.train.max_steps = None, steps
    if data is not None:
        cfg.data.source = str(data)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, words_file):
    """A decoder trained for 150 steps on 4,000 words (a few seconds)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run, summary = train_run(tiny_config(data=words_file), out, show_progress=False)
    return run


def synthetic_documents(n_docs: int = 80, words_per_doc: int = 120, seed: int = 0) -> list[str]:
    """Documents a model can learn: each of 300 common words is followed by one of three
    others (a Markov chain), with punctuation, capitals and a few rare words."""
    rng = random.Random(seed)
    common = web2_sample(300, seed=1)
    rare = web2_sample(2000, seed=2)
    table = random.Random(3)
    follows = {w: table.sample(common, 3) for w in common}
    docs = []
    for _ in range(n_docs):
        words, word = [], rng.choice(common)
        while len(words) < words_per_doc:
            sentence = []
            for _ in range(rng.randint(4, 10)):
                sentence.append(word)
                word = rng.choice(follows[word])
            if rng.random() < 0.3:
                sentence.append(rng.choice(rare))
            sentence[0] = sentence[0].capitalize()
            words.extend(sentence[:-1] + [sentence[-1] + rng.choice([".", "!", "?", ","])])
        docs.append(" ".join(words))
    return docs


TINY_TEXT_MODEL = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "model.context_length=32",
    "train.batch_tokens=512",
    "train.warmup_steps=5",
    "train.eval_every=20",
    "train.log_every=5",
    "train.precision=fp32",
    "data.val_fraction=0.1",
    "data.test_fraction=0.1",
]


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("text") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in synthetic_documents()))
    return path


@pytest.fixture(autouse=True, scope="session")
def token_cache(tmp_path_factory):
    """Keep the token cache of the tests out of the user's ~/.cache."""
    import os

    os.environ["TINYLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def text_runs(tmp_path_factory, text_file):
    """A tiny word-level and a tiny BPE run on the synthetic corpus."""
    runs = {}
    for preset, extra in (
        ("pile-word", ["tokenizer.vocab_size=400"]),
        ("pile-bpe", ["tokenizer.vocab_size=300"]),
    ):
        out = tmp_path_factory.mktemp("runs") / preset
        cfg = tiny_config(preset, data=text_file, steps=150, extra=[*TINY_TEXT_MODEL, *extra])
        runs[preset], _ = train_run(cfg, out, show_progress=False)
    return runs


@pytest.fixture(scope="module")
def text_server(text_runs):
    """The tiny BPE run served live (a module's tests share one server)."""
    from live_server import LiveServer

    from tinylm.serve import Limits, create_app

    with LiveServer(create_app(text_runs["pile-bpe"].path, Limits(max_tokens=64, max_n=4))) as s:
        yield s


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The Hugging Face hub as a machine without a network meets it: names do not resolve."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "dataset_info", unreachable)
