"""Batch-1 generation speed: tinylm's engine, plain and with its decode step compiled
(`--compile`), against stock transformers' `generate` on the same run directory, the same prompt
and length, greedy, all with a key/value cache. Prints one JSON line (tokens per second of each,
their ratios, and the seconds the first compiled generation took), after checking how many of
the tokens agree with transformers'.

    python bench/generate.py --run runs/pile-bpe
    python bench/generate.py --run runs/pile-bpe --tokens 200 --repeat 5

Target (issue 13): tinylm at least 2x transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import tinylm
from tinylm.inference import Engine, Sampling

PROMPT = "The history of the"


def tinylm_tokens(loaded, n: int, compile: bool = False) -> list[int]:
    job = loaded.job(PROMPT, Sampling(0.0), max_tokens=n)
    job.stop_ids, job.banned = (), ()  # exactly n tokens, plain greedy as transformers does
    engine = Engine(loaded.net, compile=compile)
    return [e.token for e in engine.generate([job]) if e.token is not None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    from transformers import AutoModelForCausalLM

    loaded = tinylm.load(args.run, "cpu")
    hf = AutoModelForCausalLM.from_pretrained(args.run).eval()
    ids = torch.tensor([loaded.task.prompt(PROMPT).ids])
    n = min(args.tokens, loaded.cfg.model.context_length - ids.shape[1])  # no window slide

    def hf_tokens():
        with torch.no_grad():
            out = hf.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=loaded.tokenizer.eos_id,
            )
        return out[0, ids.shape[1] :].tolist()

    mine, theirs = tinylm_tokens(loaded, n), hf_tokens()
    t0 = time.perf_counter()
    compiled = tinylm_tokens(loaded, n, compile=True)  # the first call compiles
    compile_s = time.perf_counter() - t0
    runs = {
        "tinylm": lambda: tinylm_tokens(loaded, n),
        "tinylm_compiled": lambda: tinylm_tokens(loaded, n, compile=True),
        "transformers": hf_tokens,
    }
    rates = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
    rate = {name: statistics.median(r) for name, r in rates.items()}
    ref = rate["transformers"]
    print(
        json.dumps(
            {
                "bench": "generate",
                "run": str(args.run),
                "new_tokens": n,
                "same_tokens": sum(a == b for a, b in zip(mine, theirs, strict=True)),
                "same_tokens_compiled": sum(a == b for a, b in zip(compiled, theirs, strict=True)),
                "tinylm_tokens_per_s": round(rate["tinylm"], 1),
                "tinylm_compiled_tokens_per_s": round(rate["tinylm_compiled"], 1),
                "transformers_tokens_per_s": round(ref, 1),
                "ratio": round(rate["tinylm"] / ref, 2),
                "ratio_compiled": round(rate["tinylm_compiled"] / ref, 2),
                "first_compiled_generation_s": round(compile_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
