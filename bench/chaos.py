"""Chaos for `--resume`: start a training run, kill -9 it at a random moment (every other time
the moment a checkpoint is being written), then `tinylm train --resume --out RUN` with nothing
else, and compare the end with an uninterrupted run. Prints one JSON line: how many resumed
runs ended bit-identical (weights, AdamW state, random state, log) and how many run
directories were left corrupt (the bare resume failed, or a half-written file stayed).
Goal: identical = kills, corrupt = 0.

    python bench/chaos.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tinylm.runs import RunDir

MODEL = [
    "--max-steps",
    "120",
    "--no-report",
    "train.batch_tokens=512",
    "train.eval_every=10",
    "train.log_every=5",
    "train.warmup_steps=10",
    "model.dropout=0.1",
]
ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default threads


def train(*argv) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinylm.cli", "train", *map(str, argv)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_at_random(p: subprocess.Popen, seconds: float) -> str:
    try:
        p.wait(timeout=seconds)
        return "finished first"
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return "random moment"


def kill_while_writing(p: subprocess.Popen, out: Path) -> str:
    """Kill the moment a checkpoint's temporary file shows up (or give up when it ends)."""
    while p.poll() is None:
        if out.is_dir() and any(e.name.startswith(".checkpoint.") for e in os.scandir(out)):
            p.send_signal(signal.SIGKILL)
            p.wait()
            return "checkpoint write"
        time.sleep(0.0002)
    return "finished first"


def same(a: Path, b: Path) -> bool:
    ca, cb = load_file(a / "checkpoint.safetensors"), load_file(b / "checkpoint.safetensors")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    keys = ("step", "tokens", "loss", "val_loss", "lr")
    log = lambda d: [tuple(r.get(k) for k in keys) for r in RunDir(d).metrics()]  # noqa: E731
    return (
        ca.keys() == cb.keys()
        and all(torch.equal(ca[k], cb[k]) for k in ca)
        and all(torch.equal(wa[k], wb[k]) for k in wa)
        and log(a) == log(b)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    from tinylm.data.words import builtin_words

    words = sorted(w for w in set(builtin_words()) if w.isalpha() and 3 <= len(w) <= 15)
    (work / "words.txt").write_text("\n".join(random.Random(0).sample(words, 4000)) + "\n")
    base = ["words", "--data", work / "words.txt", *MODEL]
    t0 = time.perf_counter()
    ref = train(*base, "--out", work / "ref")
    assert ref.wait() == 0, ref.stderr.read().decode()[-2000:]
    whole = time.perf_counter() - t0
    moments, identical, corrupt = [], 0, 0
    for i in range(args.kills):
        out = work / f"run{i}"
        victim = train(*base, "--out", out)
        moment = (
            kill_while_writing(victim, out)
            if i % 2
            else kill_at_random(victim, rng.uniform(0, whole))
        )
        if not (out / "tinylm.yaml").is_file():  # killed before the run existed: start again
            moment += ", before the run existed"
            again = train(*base, "--out", out)
            assert again.wait() == 0, again.stderr.read().decode()[-2000:]
        resumed = train("--resume", "--out", out, "--no-report")
        code = resumed.wait()
        left = [e.name for e in out.iterdir() if e.name.endswith(".tmp")] if out.is_dir() else []
        ok = code == 0 and not left
        corrupt += not ok
        identical += ok and same(work / "ref", out)
        moments.append(moment)
        print(f"kill {i + 1}: {moment}; resume exit {code}", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "bench": "chaos",
                "kills": args.kills,
                "identical": identical,
                "corrupt": corrupt,
                "checkpoint_writes_hit": sum("write" in m for m in moments),
                "before_creation": sum("before" in m for m in moments),
                "finished_before_kill": sum("finished" in m for m in moments),
                "uninterrupted_run_s": round(whole, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
