"""Batch-1 generation speed: tinylm's engine, plain and with its decode step compiled
(`load(run, compile=True)`), against llama.cpp (llama-cpp-python) running the f32 GGUF export of
the same run (tinylm.export), the same prompt and length, greedy, all with a key/value cache.
Prints one JSON line: tokens per second of each, their ratios to llama.cpp, the seconds the
first compiled generation took, and how many of the tokens agree with llama.cpp's.

    python bench/llamacpp.py --run runs/pile-bpe
    python bench/llamacpp.py --run runs/pile-bpe --tokens 200 --repeat 5 --threads 2

llama.cpp keeps its key/value cache in f32 here (its default is f16), so that both compute the
same function and the tokens can be compared; `--kv f16` measures its default instead. Needs
`pip install gguf llama-cpp-python` (the latter compiles llama.cpp: ~10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import tinylm
from tinylm.inference import Engine, Sampling

PROMPT = "The history of the"


def tinylm_tokens(loaded, n: int, compile: bool = False) -> list[int]:
    job = loaded.job(PROMPT, Sampling(0.0), max_tokens=n)
    job.stop_ids, job.banned = (), ()  # exactly n tokens, plain greedy as llama.cpp's loop does
    engine = Engine(loaded.net, compile=compile)
    return [e.token for e in engine.generate([job]) if e.token is not None]


def llama_tokens(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()  # no reuse of the last run's cache: the prompt is read again, as tinylm does
    out = []
    for token in llm.generate(prompt, temp=0.0):
        out.append(token)
        if len(out) == n:
            return out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=int(os.environ.get("TINYLM_THREADS", "2")))
    p.add_argument("--kv", choices=("f32", "f16"), default="f32", help="llama.cpp's cache type")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import llama_cpp

    loaded = tinylm.load(args.run, "cpu", compile=True)  # .compiled: False where it cannot
    prompt = loaded.task.prompt(PROMPT).ids
    ctx = loaded.cfg.model.context_length
    n = min(args.tokens, ctx - len(prompt))  # no window slide
    with tempfile.TemporaryDirectory() as tmp:
        path = tinylm.export_gguf(args.run, Path(tmp) / "model-f32.gguf", dtype="f32")
        kv = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}[args.kv]
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=ctx,
            n_batch=ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            type_k=kv,
            type_v=kv,
            verbose=False,
        )
        gguf_bytes = path.stat().st_size
    if llm.tokenize(PROMPT.encode(), add_bos=True) != prompt:
        raise SystemExit("llama.cpp tokenizes the prompt differently from tinylm")

    theirs, mine = llama_tokens(llm, prompt, n), tinylm_tokens(loaded, n)
    t0 = time.perf_counter()
    compiled = tinylm_tokens(loaded, n, compile=loaded.compiled)  # the first call compiles
    compile_s = time.perf_counter() - t0
    runs = {
        "tinylm": lambda: tinylm_tokens(loaded, n),
        "tinylm_compiled": lambda: tinylm_tokens(loaded, n, compile=loaded.compiled),
        "llamacpp": lambda: llama_tokens(llm, prompt, n),
    }
    rates = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
    rate = {name: statistics.median(r) for name, r in rates.items()}
    ref = rate["llamacpp"]
    print(
        json.dumps(
            {
                "bench": "llamacpp",
                "run": str(args.run),
                "new_tokens": n,
                "threads": args.threads,
                "llama_cpp_python": llama_cpp.__version__,
                "kv_cache": args.kv,
                "gguf_bytes": gguf_bytes,
                "same_tokens": sum(a == b for a, b in zip(mine, theirs, strict=True)),
                "same_tokens_compiled": sum(a == b for a, b in zip(compiled, theirs, strict=True)),
                "tinylm_tokens_per_s": round(rate["tinylm"], 1),
                "tinylm_compiled_tokens_per_s": round(rate["tinylm_compiled"], 1),
                "llamacpp_tokens_per_s": round(ref, 1),
                "ratio": round(rate["tinylm"] / ref, 2),
                "ratio_compiled": round(rate["tinylm_compiled"] / ref, 2),
                "first_compiled_generation_s": round(compile_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
