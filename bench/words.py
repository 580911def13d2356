"""Benchmark W (BENCHMARKS.md): train a word preset for 300 s on the shared train list, then
score its validation split (carved from train.txt: tune on these figures) and all 10,000 test
words (report these, once per setting kept). Prints one JSON line.

    python bench/words.py                       # the default preset, 300 s
    python bench/words.py --preset words-seq2seq
    python bench/words.py --time 60 model.d_model=192   # any override, for experiments
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import shared_data  # bench/shared_data.py: where the benchmark data lies
import torch

import tinylm
from tinylm.data.words import load_words
from tinylm.evaluate import evaluate_words
from tinylm.inference import Engine, Sampling
from tinylm.models import param_breakdown
from tinylm.preset import apply_overrides, load_preset

DEMO = ["fin", "inv", "tra", "mar", "ban", "com", "acc"]
VAL_PREFIXES = 500


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="words")
    p.add_argument("--time", type=float, default=300.0, help="training seconds")
    p.add_argument("--max-steps", type=int, help="a step budget instead (for experiments)")
    p.add_argument("--data", type=Path, default=shared_data.WORDS)
    p.add_argument("--out", type=Path, help="keep the run here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))

    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    cfg.data.source = str(args.data / "train.txt")
    cfg.data.test_fraction = 0.0  # the benchmark's test list is separate; never train on it
    cfg.train.time, cfg.train.max_steps, cfg.train.seed = args.time, args.max_steps, args.seed
    if args.max_steps:
        cfg.train.time = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-words-"))
    out = args.out or scratch / "run"
    # torch.compile into an empty cache, as a user's first `tinylm train`: warm from an earlier
    # run of the same shapes, the first step took 3 s against 17-34 s, a tenth of the budget
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch / "compile-cache"))
    trained = tinylm.train(cfg, out=out, progress=sys.stderr.isatty())
    run, summary = trained.dir, trained.summary

    loaded = trained.load()
    model, tokenizer = loaded.net, loaded.tokenizer
    test = load_words(str(args.data / "test.txt"))
    train = run.read_split("train")
    val = evaluate_words(model, tokenizer, run.read_split("val"), train).to_dict()
    result = evaluate_words(model, tokenizer, test, train).to_dict()
    dictionary = set(train) | set(run.read_split("val")) | set(test)
    demo = [words.words[0].word for words in loaded.complete(DEMO, 1)]
    greedy = [p + loaded.sample([p], Sampling(0))[0].text for p in DEMO]
    # The demo's seven greedy words move a lot from run to run: tune on this instead, the share
    # of greedy completions that are words, over the distinct 3-letter prefixes of validation words.
    val_prefixes = sorted({w[:3] for w in run.read_split("val")})
    val_prefixes = random.Random(0).sample(val_prefixes, min(VAL_PREFIXES, len(val_prefixes)))
    greedy_rest = loaded.sample(val_prefixes, Sampling(0))
    val_greedy = [p + c.text for p, c in zip(val_prefixes, greedy_rest, strict=True)]
    in_dictionary = sum(w in dictionary for w in val_greedy)
    prefixes = [w[:3] for w in test[:200]]
    greedy_ms = latencies(
        lambda p: list(Engine(model).generate([loaded.job(p, Sampling(0))])), prefixes
    )
    top5_ms = latencies(lambda p: loaded.complete(p, 5), prefixes)

    print(
        json.dumps(
            {
                "bench": "W",
                "preset": args.preset,
                "overrides": args.overrides,
                "val_M1": round(val["bits_per_char"], 4),
                "val_M2": round(val["next_char_accuracy"], 4),
                "M1_bits_per_char": round(result["bits_per_char"], 4),
                "M2_next_char_accuracy": round(result["next_char_accuracy"], 4),
                "greedy_demo": greedy,
                "greedy_demo_in_dictionary": sum(w in dictionary for w in greedy),
                "val_greedy_in_dictionary": round(in_dictionary / len(val_greedy), 4),
                "likeliest_demo": demo,
                "params": param_breakdown(model)["total"],
                "train_seconds": round(summary["elapsed"], 1),
                "steps": summary["step"],
                "stopped": summary["reason"],
                "train_chars_per_s": round(summary["unit_per_s"]),
                "ms_per_completion": round(statistics.median(greedy_ms), 2),
                "top5_ms_p50": round(statistics.median(top5_ms), 2),
                "top5_ms_p99": round(statistics.quantiles(top5_ms, n=100)[98], 2),
                "test_words": result["words"],
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "run": str(run.path),
            }
        )
    )


def latencies(fn, prefixes) -> list[float]:
    """Milliseconds per call of fn(prefix), after one call to warm up."""
    fn(prefixes[0])
    times = []
    for prefix in prefixes:
        t0 = time.perf_counter()
        fn(prefix)
        times.append((time.perf_counter() - t0) * 1000)
    return times


if __name__ == "__main__":
    main()
