"""Autocomplete latency: the top-5 likeliest words for 3-letter prefixes on a word run, p50 and
p99 milliseconds per prefix (the exact best-first search of inference/search.py). Prints one
JSON line, and the top-5 lists of the seven demo prefixes.

    python bench/suggest.py --run runs/words          # a trained word run
    python bench/suggest.py                           # first trains the default words preset (300 s)

Target (issue 9): p50 under 20 ms on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinylm.inference import load
from tinylm.inference.search import likeliest_words

DEMO = ["fin", "inv", "tra", "mar", "ban", "com", "acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="a trained word run (default: train one)")
    p.add_argument("--prefixes", type=int, default=300, help="3-letter prefixes to time")
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    run = args.run or train_default()
    loaded = load(run, "cpu")
    words = [w for w in loaded.run.read_split("val") if len(w) >= 4]
    prefixes = [w[:3] for w in random.Random(0).sample(words, min(args.prefixes, len(words)))]
    likeliest_words(loaded.model, loaded.task, prefixes[0], args.k)  # warm up
    times, inexact = [], 0
    for prefix in prefixes:
        t0 = time.perf_counter()
        found = likeliest_words(loaded.model, loaded.task, prefix, args.k)
        times.append((time.perf_counter() - t0) * 1000)
        inexact += not found.exact
    demo = {
        prefix: [(s.word, round(s.probability, 4)) for s in
                 likeliest_words(loaded.model, loaded.task, prefix, args.k).words]
        for prefix in DEMO
    }  # fmt: skip
    print(json.dumps({
        "bench": "suggest", "run": str(run), "k": args.k, "prefixes": len(prefixes),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(statistics.quantiles(times, n=100)[98], 2),
        "inexact": inexact, "demo": demo,
    }))  # fmt: skip


def train_default() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-suggest-")) / "words"
    cmd = [sys.executable, "-m", "tinylm.cli", "train", "words", "--out", str(out), "--no-report"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    main()
