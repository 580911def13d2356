"""Benchmark T (BENCHMARKS.md): train a text preset for 600 s on the shared development corpus,
then bits per byte on the validation documents carved from its training file (choose settings
on this) and on its held-out documents (report this, once per setting kept). Prints one JSON
line.

    python bench/text.py --preset pile-bpe
    python bench/text.py --preset pile-word
    python bench/text.py --preset pile-bpe --time 120 model.n_layers=6   # experiments

Also reported: preparation throughput (MB/s of tokenizing and packing, first run on a cold
cache), the seconds spent training the tokenizer before it (not in that MB/s), training tokens
per second, and generation tokens per second (batch 1, key/value cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import shared_data  # bench/shared_data.py: where the benchmark data lies
import torch

import tinylm
from tinylm.data.splits import TextData
from tinylm.data.text import open_corpus
from tinylm.evaluate import evaluate_text
from tinylm.inference import Engine, Sampling
from tinylm.models import param_breakdown
from tinylm.preset import apply_overrides, load_preset


def generation_speed(loaded, tokens: int = 200) -> float:
    """Batch-1 tokens per second through the engine (key/value cache), never stopping early."""
    loaded.task.stop_ids = ()
    sampling = Sampling(1.0)
    loaded.generate("The history of the", max_new_tokens=8, seed=0)  # warm up
    job = loaded.job("The history of the", sampling, max_tokens=tokens, seed=0)
    t0 = time.perf_counter()
    n = sum(e.token is not None for e in Engine(loaded.net).generate([job]))
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="pile-bpe")
    p.add_argument("--time", type=float, default=600.0, help="training seconds")
    p.add_argument("--data", type=Path, default=shared_data.TEXT)
    p.add_argument("--out", type=Path, help="keep the run here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument(
        "--warm-cache", action="store_true", help="reuse the token cache and torch.compile's"
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))

    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    cfg.data.source = str(args.data / "train.jsonl")
    cfg.data.test_fraction = 0.0  # the held-out documents are val.jsonl; never train on them
    cfg.train.time, cfg.train.max_steps, cfg.train.seed = args.time, None, args.seed
    scratch = Path(tempfile.mkdtemp(prefix="bench-text-"))
    out = args.out or scratch / "run"
    if not args.warm_cache:  # measure preparation and torch.compile from nothing
        os.environ["TINYLM_CACHE"] = str(scratch / "cache")
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch / "compile-cache"))
    t0 = time.perf_counter()
    trained = tinylm.train(cfg, out=out, progress=sys.stderr.isatty())
    run, summary = trained.dir, trained.summary
    wall = time.perf_counter() - t0

    loaded = trained.load()
    cfg, model, tokenizer = loaded.cfg, loaded.net, loaded.tokenizer
    held_out = list(open_corpus(str(args.data / "val.jsonl")).stream())
    data = TextData.reload(run, cfg)
    counts = data.train_token_counts(tokenizer)
    context = cfg.model.context_length
    result = evaluate_text(model, tokenizer, held_out, context=context, unigram_counts=counts)
    result = result.to_dict()
    # Choose settings on this: bits per byte on the validation documents carved from train.jsonl
    # (val.jsonl is the benchmark's held-out text, for the figure reported once per setting kept).
    val = evaluate_text(model, tokenizer, data.documents("val"), context=context).to_dict()

    print(
        json.dumps(
            {
                "bench": "T",
                "preset": args.preset,
                "overrides": args.overrides,
                "val_bits_per_byte": round(val["bits_per_byte"], 4),
                "bits_per_byte": round(result["bits_per_byte"], 4),
                "loss_per_token": round(result["loss_per_token"], 4),
                "perplexity": round(result["perplexity"], 2),
                "top1_accuracy": round(result["top1_accuracy"], 4),
                "unk_rate": round(result["unk_rate"], 4),
                "unigram_bits_per_byte": round(result["baselines"]["unigram"]["bits_per_byte"], 4),
                "params": param_breakdown(model)["total"],
                "prepare_mb_per_s": summary["preparation"]["mb_per_s"],  # tokenizing + packing
                "tokenizer_train_s": summary["preparation"].get("tokenizer_seconds"),
                "prepare_cached": summary["preparation"]["cached"],
                "train_seconds": round(summary["elapsed"], 1),
                "steps": summary["step"],
                "stopped": summary["reason"],
                "train_tokens_per_s": round(summary["unit_per_s"]),
                "generate_tokens_per_s": round(generation_speed(loaded), 1),
                "wall_seconds": round(wall, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "run": str(run.path),
            }
        )
    )


if __name__ == "__main__":
    main()
