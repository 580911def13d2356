"""Batch-1 generation speed: tinylm's engine, plain and with its decode step compiled
(`load(run, compile=True)`), against llama.cpp (llama-cpp-python) running the f32 GGUF export of
the same run (tinylm.export), the same prompt and length, greedy, all with a key/value cache.
Prints one JSON line: tokens per second of each, their ratios to llama.cpp, the seconds the
first compiled generation took, and how many of the tokens agree with llama.cpp's. `--profile`
adds a markdown table on stderr of where one decode step of tinylm's goes (see `profile`).

    python bench/llamacpp.py --run runs/pile-bpe
    python bench/llamacpp.py --run runs/pile-bpe --tokens 200 --repeat 5 --threads 2
    python bench/llamacpp.py --run runs/pile-bpe --profile   # + where a decode step goes (stderr)

llama.cpp keeps its key/value cache in f32 here (its default is f16), so that both compute the
same function and the tokens can be compared; `--kv f16` measures its default instead. Needs
`pip install gguf llama-cpp-python` (the latter compiles llama.cpp: ~10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import tinylm
from tinylm.inference import Engine, Sampling
from tinylm.inference import engine as engine_module
from tinylm.models import decoder_runtime

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
    p.add_argument("--profile", action="store_true", help="where a decode step goes (stderr)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:  # each compiled C++ kernel under a profiler label of its own (costs
        # ~nothing while no profiler runs), else the profiler cannot tell their time from Python's
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
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
    if args.profile:
        profile(loaded, {name: 1e6 / r for name, r in rate.items()})
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


def profile(loaded, per_token_us: dict[str, float], steps: int = 100, warmup: int = 10) -> None:
    """`--profile`: where one batch-1 decode step (`Engine.step`: the greedy choice, then the
    model's step with its cache) goes, eager and compiled, as a markdown table on stderr.

    `steps` steps after `warmup` are timed plainly, then the same steps of a fresh job run
    under torch.profiler (CPU activities; no Python stacks, which slow operators down further).
    A group's time is the self CPU time, per step, of the operators (aten ops; compiled, also
    inductor's C++ kernels, which main has inductor label, and the C++ wrapper's calls of
    ATen's matrix products) under an outermost operator of that group; the profiled eager
    steps run with record_function labels around sampling's `choose` and the rotary `turn`.
    "Python and dispatch overhead" = the plain wall time per step minus the sum of all those
    self times: the interpreter (engine, backend, modules), argument parsing and dispatch
    outside the operators' bodies, compiled code's guards and wrappers. The profiler's own
    cost (~1 µs an operator, views included) lands partly in the operators' self times, so
    this is a lower bound; the profiled wall time minus the same sum, which keeps the rest of
    the profiler's cost, an upper bound (both only on a quiet machine: the two timings are
    taken one after the other). Shares are of the plain wall time per step."""
    from unittest import mock

    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    def labelled(owner, name: str, label: str):
        fn = getattr(owner, name)

        def run(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)

        static = isinstance(vars(owner).get(name), staticmethod)
        return mock.patch.object(owner, name, staticmethod(run) if static else run)

    labels = [(engine_module, "choose", "sampling"), (decoder_runtime, "turn", "rotary")]
    marks = {label for _, _, label in labels}
    linear = ("aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm")
    linear += ("aoti_torch_cpu_mm_out", "aoti_torch_cpu_addmm_out")  # (compiled: extern calls)

    def group(op: str, label: str | None) -> str:
        if label in ("sampling", "rotary"):
            return label
        if "cpp_fused" in op:
            return "compiled kernels"
        if op in ("aten::index_put_", "aten::_index_put_impl_"):
            return "cache writes"
        if op in ("aten::rms_norm", "aten::_fused_rms_norm"):
            return "norms"
        if op in ("aten::softmax", "aten::_softmax"):
            return "softmax"
        return "matmuls" if op in linear else "other aten ops"

    def is_op(e) -> bool:
        name = e.name
        return (
            "::" in name
            and not name.startswith("profiler::")
            or name.startswith(("aoti_", "graph_0_cpp_fused", "cpp_fused"))
        )

    n = min(steps, loaded.cfg.model.context_length - len(loaded.task.prompt(PROMPT).ids) - warmup)
    groups = ["matmuls", "softmax", "norms", "rotary", "sampling", "cache writes"]
    groups += ["compiled kernels", "other aten ops"]
    table = {}
    for mode, compile in [("eager", False), ("compiled", True)][: 1 + loaded.compiled]:
        wall = []
        for profiler in (None, torch_profile(activities=[ProfilerActivity.CPU])):
            job = loaded.job(PROMPT, Sampling(0.0), max_tokens=warmup + n + 1)
            job.stop_ids, job.banned = (), ()
            engine = Engine(loaded.net, compile=compile)
            engine.add([job])
            for _ in range(warmup):
                engine.step()
            with contextlib.ExitStack() as stack:
                if profiler:  # compiled: no labels inside the model (it would compile again)
                    for owner, name, label in labels[:1] if compile else labels:
                        stack.enter_context(labelled(owner, name, label))
                    stack.enter_context(profiler)
                t0 = time.perf_counter()
                for _ in range(n):
                    engine.step()
                wall.append((time.perf_counter() - t0) / n * 1e6)
        us = dict.fromkeys(groups, 0.0)
        for e in profiler.events():
            if not is_op(e):
                continue
            top, label, up = e, None, e.cpu_parent
            while up is not None:  # the outermost op above e, and the nearest label above it
                if is_op(up):
                    top, label = up, None
                elif label is None and up.name in marks:
                    label = up.name
                up = up.cpu_parent
            us[group(top.name, label)] += e.self_cpu_time_total / n
        ops = sum(us.values())
        us["Python and dispatch overhead"] = wall[0] - ops
        us["the same, from the profiled wall (upper bound)"] = wall[1] - ops
        us["wall per step, plain timing"], us["wall per step, under the profiler"] = wall
        table[mode] = us
    head = "".join(f" {m} µs/step | share |" for m in table)
    lines = [f"| per decode step ({n} steps, batch 1) |{head}", "|---" * (1 + 2 * len(table)) + "|"]
    for r in table["eager"]:
        cells = "".join(
            f" {us[r]:.1f} | {us[r] / us['wall per step, plain timing']:.0%} |"
            for us in table.values()
        )
        lines.append(f"| {r} |{cells}")
    names = {"tinylm": "tinylm eager", "tinylm_compiled": "compiled", "llamacpp": "llama.cpp"}
    whole = ", ".join(f"{names[k]} {v:.1f}" for k, v in per_token_us.items())
    lines.append(
        f"\nµs per token over whole generations (the timed runs, prefill included): {whole}"
    )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
