"""Autocomplete latency: the top-5 likeliest words for 3-letter prefixes on a word run, p50 and
p99 milliseconds per prefix (the exact best-first search of inference/search.py). Prints one
JSON line, and the top-5 lists of the seven demo prefixes.

    python bench/suggest.py --run runs/words          # a trained word run
    python bench/suggest.py --run runs/words --compile   # the search's waves compiled
    python bench/suggest.py                           # first trains the default words preset (300 s)

With --compile the first search compiles (its seconds are printed as `compile_s`, not counted
in the percentiles), and each search's words are compared with the eager search's
(`differ_from_eager` counts the prefixes whose lists differ: only near-ties could).

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
    p.add_argument(
        "--compile", action="store_true", help="compiled waves (tinylm complete --compile)"
    )
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    run = args.run or train_default()
    loaded = load(run, "cpu")
    words = [w for w in loaded.run.read_split("val") if len(w) >= 4]
    prefixes = [w[:3] for w in random.Random(0).sample(words, min(args.prefixes, len(words)))]

    def search(prefix):
        return likeliest_words(loaded.model, loaded.task, prefix, args.k, compile=args.compile)

    t0 = time.perf_counter()
    search(prefixes[0])  # warm up (and compile)
    compile_s = time.perf_counter() - t0
    times, inexact, differ = [], 0, 0
    for prefix in prefixes:
        t0 = time.perf_counter()
        found = search(prefix)
        times.append((time.perf_counter() - t0) * 1000)
        inexact += not found.exact
        if args.compile:
            eager = likeliest_words(loaded.model, loaded.task, prefix, args.k)
            differ += [s.word for s in found.words] != [s.word for s in eager.words]
    demo = {
        prefix: [(s.word, round(s.probability, 4)) for s in
                 likeliest_words(loaded.model, loaded.task, prefix, args.k).words]
        for prefix in DEMO
    }  # fmt: skip
    print(json.dumps({
        "bench": "suggest", "run": str(run), "k": args.k, "prefixes": len(prefixes),
        "compiled": args.compile, "compile_s": round(compile_s, 1) if args.compile else None,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(statistics.quantiles(times, n=100)[98], 2),
        "inexact": inexact, "differ_from_eager": differ, "demo": demo,
    }))  # fmt: skip


def train_default() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-suggest-")) / "words"
    cmd = [sys.executable, "-m", "tinylm.cli", "train", "words", "--out", str(out), "--no-report"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    main()
