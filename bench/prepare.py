"""Preparing a corpus larger than memory: generate local .jsonl corpora of 100 MB and 400 MB
(documents of 2 KB to 100 KB, log-uniform, as NeelNanda/pile-10k's, made of shuffled paragraphs
of the shared development corpus), then prepare each (the tokenizer, then the packed token
cache) in a fresh cache in a child process. Prints one JSON line: for each corpus its MB/s
(corpus MB over the seconds of both steps), the steps' seconds, the child's CPU seconds (all
of it, imports included: steadier than time on a shared machine), and its peak resident
memory (ru_maxrss, torch's import included); and the ratio of the largest corpus's peak memory
to the smallest's.

    python bench/prepare.py                          # 100 and 400 MB, preset pile-bpe
    python bench/prepare.py --sizes 5 20             # a smoke run
    python bench/prepare.py --src /path/to/main/src  # another tree's code, measured the same way

Run it alone on the machine: it measures throughput. `--max-memory-gb` caps each child's
address space (default 12) so that code that does not stream fails alone, not the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import shared_data  # bench/shared_data.py: where the benchmark data lies

SRC = Path(__file__).resolve().parents[1] / "src"


def paragraphs(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    return [p for doc in docs for p in doc.split("\n\n") if p.strip()]


def generate(out: Path, megabytes: float, paras: list[str], seed: int) -> None:
    """Documents of 2-100 KB (log-uniform) of random paragraphs until `megabytes` of JSON."""
    rng = random.Random(seed)
    target, written = megabytes * 1e6, 0
    with open(out, "w", encoding="utf-8") as f:
        while written < target:
            size, parts, n = math.exp(rng.uniform(math.log(2e3), math.log(1e5))), [], 0
            while n < size:
                parts.append(rng.choice(paras))
                n += len(parts[-1]) + 2
            line = json.dumps({"text": "\n\n".join(parts), "meta": {"n": len(parts)}}) + "\n"
            written += len(line.encode("utf-8"))
            f.write(line)


def child(corpus: str, preset: str) -> None:
    """Prepare `corpus` as `tinylm train` does, in this process; print the steps' seconds."""
    # imported in the child only: it measures whichever tree --src put on its path
    from tinylm.data.splits import TextData
    from tinylm.preset import load_preset

    cfg = load_preset(preset)
    cfg.data.source = corpus
    t0 = time.perf_counter()
    data = TextData.new(cfg)
    tokenizer, _ = data.build_tokenizer(cfg)
    t1 = time.perf_counter()
    meta = data.tokens(tokenizer)
    t2 = time.perf_counter()
    tokens = sum(meta["tokens"].values())
    print(json.dumps({"tokenizer_s": t1 - t0, "tokens_s": t2 - t1, "tokens": tokens}))


def measure(corpus: Path, preset: str, src: Path, cache: Path, max_gb: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TINYLM_CACHE": str(cache)}
    limit = int(max_gb * 2**30)

    def cap():  # in the child, before it starts
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, __file__, "--child", str(corpus), "--preset", preset]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, preexec_fn=cap)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    mb = corpus.stat().st_size / 1e6
    result = {
        "corpus_mb": round(mb, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),  # steadier than time when shared
    }
    if os.waitstatus_to_exitcode(status) != 0:
        return {**result, "failed": f"exit {os.waitstatus_to_exitcode(status)}", "wall_s": wall}
    steps = json.loads(out.decode().strip().splitlines()[-1])
    seconds = steps["tokenizer_s"] + steps["tokens_s"]
    return {
        **result,
        "mb_per_s": round(mb / seconds, 2),
        "seconds": round(seconds, 1),
        "tokenizer_s": round(steps["tokenizer_s"], 1),
        "tokens_s": round(steps["tokens_s"], 1),
        "tokens": steps["tokens"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[100, 400], help="corpus MB")
    p.add_argument("--preset", default="pile-bpe")
    p.add_argument("--src", type=Path, default=SRC, help="the tinylm source tree to measure")
    p.add_argument("--data", type=Path, default=shared_data.TEXT, help="paragraphs from here")
    p.add_argument("--work", type=Path, help="keep the corpora and caches here")
    p.add_argument("--max-memory-gb", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.preset)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    paras = paragraphs(args.data / "train.jsonl")
    results = []
    try:
        for i, mb in enumerate(args.sizes):
            corpus = work / f"corpus-{mb:g}MB.jsonl"
            if not corpus.is_file():
                generate(corpus, mb, paras, args.seed + i)
            cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
            results.append(measure(corpus, args.preset, args.src, cache, args.max_memory_gb))
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    peaks = [r["peak_rss_mb"] for r in results]
    print(
        json.dumps(
            {
                "bench": "prepare",
                "preset": args.preset,
                "src": str(args.src),
                "results": results,
                "memory_ratio": round(peaks[-1] / peaks[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
