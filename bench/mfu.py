"""Model FLOPs utilisation of the training step, for a GPU: a preset's decoder (at GPU scale
through overrides) stepped as `train.fit` steps it — the same batches (random windows of a token
stream, here random tokens), micro-batches, autocast, compile and fused AdamW — timed over many
steps with one synchronize at each end, as the loop runs (it never waits for the device).

FLOPs per step are counted, not estimated: torch's FlopCounterMode records every matmul and
attention kernel of one uncompiled forward + backward (attention counted over the full T x T
square, as PaLM's and nanoGPT's MFU do). The peak is the datasheet's dense bf16 rate where the
GPU is known (H100/H200: 989 TFLOP/s), and a large bf16 matmul is timed beside it, so both
ratios are printed. One JSON line per setting.

    python bench/mfu.py --preset pile-bpe model.d_model=512 model.n_layers=6 ...
    python bench/mfu.py --device cpu --steps 3 model.d_model=64     # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinylm.data.batching import TokenWindows
from tinylm.data.splits import TextData
from tinylm.device import autocast, autocast_dtype, pick_device
from tinylm.distributed import current
from tinylm.models import Decoder, param_breakdown
from tinylm.optim import make_optimizer
from tinylm.preset import apply_overrides, load_preset
from tinylm.training.loop import forward_backward, prepare_model

DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16.items() if k in name), None)


def measured_peak(device: torch.device, n: int = 8192) -> float:
    """FLOP/s of an n^3 bf16 matmul on random data (fp32 on a CPU, smaller), median of 10."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(13):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))


def step_flops(model, batch, device, dtype) -> int:
    with FlopCounterMode(display=False) as counter:
        with autocast(device, dtype):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(cfg, device: torch.device, steps: int, warmup: int) -> dict:
    t = cfg.train
    vocab = cfg.tokenizer.vocab_size
    torch.manual_seed(0)
    model = Decoder(cfg.model, vocab).to(device).train()  # random tokens: no tokenizer needed
    tokens = np.random.default_rng(0).integers(0, vocab, 4_000_000, dtype=np.int64)
    windows = TokenWindows(tokens.astype(np.uint16), cfg.model.context_length, t.batch_tokens, 0)
    _, micro = TextData.batch_split(cfg, 1)
    dtype = autocast_dtype(t.precision, device)
    flops = step_flops(model, windows.batch(0), device, dtype)
    optimizer = make_optimizer(model, t)
    ddp, step_model = prepare_model(model, t, device, current())

    def one(i: int) -> None:
        forward_backward(ddp, step_model, windows.batch(i), micro, device, dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for i in range(warmup):  # compiles here
        one(i)
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        one(warmup + i)
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    peak, timed = datasheet_peak(device), measured_peak(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params": param_breakdown(model)["total"],
        "batch_tokens": t.batch_tokens,
        "micro_batch_tokens": micro,
        "context": cfg.model.context_length,
        "compile": t.compile,
        "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        "step_ms": round(1000 * dt, 2),
        "tokens_per_s": round(t.batch_tokens / dt),
        "tflop_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(flops / dt / 1e12, 2),
        "matmul_peak_tflops": round(timed / 1e12, 1),
        "mfu_of_matmul_peak": round(flops / dt / timed, 4),
        "mfu_of_datasheet": round(flops / dt / peak, 4) if peak else None,
        "warmup_s": round(warm, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="pile-bpe")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    device = pick_device(args.device)
    result = measure(cfg, device, args.steps, args.warmup)
    print(
        json.dumps({"bench": "mfu", "preset": args.preset, "overrides": args.overrides, **result})
    )


if __name__ == "__main__":
    main()
