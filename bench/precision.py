"""Training throughput of the default word model in fp32 and under bf16 autocast on this CPU
(and with torch.compile), on the packed batches of real words that training reads. Prints one JSON line per
setting: tokens per second, best of three rounds.

    python bench/precision.py
"""

from __future__ import annotations

import json
import os
import time

import shared_data  # bench/shared_data.py: where the benchmark data lies
import torch

from tinylm.data.batching import PackedWordBatches
from tinylm.data.words import load_words
from tinylm.device import autocast
from tinylm.models import build_model
from tinylm.optim import make_optimizer
from tinylm.preset import load_preset
from tinylm.tokenizer import build_char

WORDS = shared_data.WORDS / "train.txt"


def throughput(dtype, compiled: bool, steps: int = 40) -> tuple[float, float]:
    cfg = load_preset("words")
    source = os.environ.get("TINYLM_BENCH_WORDS_FILE", str(WORDS) if WORDS.is_file() else "words")
    words = load_words(source)
    tok = build_char(words)
    cfg.model.context_length = 16
    data = PackedWordBatches(words, tok, cfg.train.batch_tokens, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, tok)
    opt = make_optimizer(model, cfg.train)
    step_model = torch.compile(model) if compiled else model
    device = torch.device("cpu")

    def step(i):
        batch = data.batch(i)
        with autocast(device, dtype):
            loss = step_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int((batch["targets"] != -100).sum())  # letters and <eos>, not padding

    t0 = time.perf_counter()
    for i in range(5):  # compiles the one shape of packed rows
        step(i)
    warmup = time.perf_counter() - t0
    best, i = 0.0, 100
    for _ in range(3):
        t0, n = time.perf_counter(), 0
        for _ in range(steps):
            n += step(i)
            i += 1
        best = max(best, n / (time.perf_counter() - t0))
    return best, warmup


def main() -> None:
    torch.set_num_threads(2)
    for name, dtype, compiled in (
        ("fp32", None, False),
        ("bf16 autocast", torch.bfloat16, False),
        ("bf16 autocast + compile", torch.bfloat16, True),
    ):
        rate, warmup = throughput(dtype, compiled)
        print(
            json.dumps(
                {"setting": name, "tokens_per_s": round(rate), "warmup_s": round(warmup, 1)}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
