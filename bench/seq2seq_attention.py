"""Why the encoder-decoder runs Hugging Face's "eager" attention (matmul + softmax) and not
"sdpa" (the fused kernel, transformers' default): time training steps of the `words-seq2seq`
preset's model on real batches of the word list with each, alternately, and check that both
give the same loss. Prints one JSON line per round and one with the medians.

    python bench/seq2seq_attention.py [--steps N] [section.field=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import shared_data  # bench/shared_data.py: where the benchmark data lies
import torch

from tinylm.data.batching import PrefixWordBatches
from tinylm.data.words import load_words
from tinylm.models import build_model
from tinylm.optim import make_optimizer
from tinylm.preset import apply_overrides, load_preset
from tinylm.tokenizer import build_char

WORDS = shared_data.WORDS / "train.txt"
IMPLEMENTATIONS = ("sdpa", "eager")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    cfg = apply_overrides(load_preset("words-seq2seq"), args.overrides)
    words = load_words(str(WORDS) if WORDS.is_file() else "words")
    tok = build_char(words)
    cfg.model.context_length = cfg.data.max_len + 1
    data = PrefixWordBatches(words, tok, cfg.train.batch_tokens, seed=0)
    models, optimizers = {}, {}
    for impl in IMPLEMENTATIONS:
        torch.manual_seed(0)
        models[impl] = build_model(cfg.model, tok)
        models[impl].hf.set_attn_implementation(impl)
        optimizers[impl] = make_optimizer(models[impl], cfg.train)
    first = {impl: float(models[impl](**data.batch(0)).loss) for impl in IMPLEMENTATIONS}
    print(json.dumps({"loss_at_step_0": first}), flush=True)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    step = 0
    for r in range(args.rounds):
        for impl in IMPLEMENTATIONS:
            model, opt = models[impl], optimizers[impl]
            for i in range(args.steps + 5):
                batch = data.batch(step + i)
                t0 = time.perf_counter()
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= 5:  # the first steps of a round warm up
                    times[impl].append(time.perf_counter() - t0)
            print(
                json.dumps(
                    {
                        "round": r,
                        "attention": impl,
                        "ms_per_step": round(
                            1000 * statistics.median(times[impl][-args.steps :]), 1
                        ),
                    }
                ),
                flush=True,
            )
        step += args.steps + 5
    medians = {impl: round(1000 * statistics.median(t), 1) for impl, t in times.items()}
    print(json.dumps({"median_ms_per_step": medians}), flush=True)


if __name__ == "__main__":
    main()
