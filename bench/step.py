"""Where one training step of the word model goes on this CPU, and which AdamW implementation
pays: forward + backward, gradient clipping (if the preset clips; `train.grad_clip=1` times it
for `words`, which does not) and the optimizer step timed apart, for PyTorch's for-loop,
`foreach` and `fused` AdamW. Prints one JSON line per implementation (milliseconds
per step, median of the measured steps). On a GPU (`--device cuda`) each part is timed to the
end of its kernels (a synchronize before each clock reading, which the training loop does not do).

    python bench/step.py [--device auto|cpu|cuda|mps] [section.field=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from tinylm.config import apply_overrides, load_preset
from tinylm.data.batching import WordBatches
from tinylm.data.words import load_words
from tinylm.device import autocast, autocast_dtype, pick_device, to_device
from tinylm.models import build_model
from tinylm.optim import param_groups
from tinylm.tokenizer import build_char

WORDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "words" / "train.txt"


def profile(cfg, words, impl: str, device: torch.device, steps: int = 150) -> dict:
    tok = build_char(words)
    cfg.model.context_length = 16
    data = WordBatches(words, tok, cfg.train.batch_tokens, seed=0, arch="decoder")
    torch.manual_seed(0)
    model = build_model(cfg.model, tok).to(device)
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    groups = param_groups(model, cfg.train.weight_decay)
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=betas, **flags[impl])
    dtype = autocast_dtype(cfg.train.precision, device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    times = {"forward_backward": [], "clip": [], "optimizer": [], "step": []}
    for i in range(steps + 20):
        batch = to_device(data.batch(i), device)
        t0 = clock()
        with autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        t1 = clock()
        if cfg.train.grad_clip:  # the words preset clips no more: its "clip" reads 0
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        t2 = clock()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = clock()
        if i >= 20:  # warm-up steps first
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                times[k].append(v)
    return {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="words")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    words = load_words(str(WORDS) if WORDS.is_file() else "words")
    device = pick_device(args.device)
    for impl in ("loop", "foreach", "fused"):
        ms = profile(cfg, words, impl, device)
        print(json.dumps({"adamw": impl, "device": str(device), "ms": ms}), flush=True)


if __name__ == "__main__":
    main()
