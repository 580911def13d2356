"""Shared fixtures: small word lists and one tiny trained run, built once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tinylm.config import apply_overrides, load_preset

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


def tiny_config(preset="words", data=None, steps=150, extra=()):
    cfg = apply_overrides(load_preset(preset), [*TINY_MODEL, *extra])
    cfg.train.time, cfg.train.max_steps = None, steps
    if data is not None:
        cfg.data.source = str(data)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, words_file):
    """A decoder trained for 150 steps on 4,000 words (a few seconds)."""
    from tinylm.train import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    run, summary = train_run(tiny_config(data=words_file), out, show_progress=False)
    return run
