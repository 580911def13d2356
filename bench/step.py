"""Where one training step of the word model goes on this CPU, and which optimizer
implementation pays: forward + backward, gradient clipping (if the preset clips;
`train.grad_clip=1` times it for `words`, which does not) and the optimizer step timed apart,
for PyTorch's for-loop, `foreach` and `fused` AdamW, and for Muon (tinylm's, batched, and
torch's). Prints one JSON line per implementation (milliseconds
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

import shared_data  # bench/shared_data.py: where the benchmark data lies
import torch

from tinylm.data.batching import PackedWordBatches
from tinylm.data.words import load_words
from tinylm.device import autocast, autocast_dtype, pick_device, to_device
from tinylm.models import build_model
from tinylm.optim import MuonAdamW, param_groups
from tinylm.preset import apply_overrides, load_preset
from tinylm.tokenizer import build_char

WORDS = shared_data.WORDS / "train.txt"


def profile(cfg, words, impl: str, device: torch.device, steps: int = 150) -> dict:
    tok = build_char(words)
    cfg.model.context_length = 16
    data = PackedWordBatches(words, tok, cfg.train.batch_tokens, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, tok).to(device)
    opt = make_optimizer(model, cfg.train, impl)
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


def make_optimizer(model, t, impl: str):
    """AdamW three ways, or Muon (hidden matrices; fused AdamW for the rest) two ways: tinylm's,
    batched over matrices of one shape, and torch.optim.Muon, one matrix at a time."""
    if impl == "muon":
        return MuonAdamW(model, t)
    if impl == "muon-torch":
        opt = MuonAdamW(model, t)
        hidden = opt.parts[0].param_groups[0]["params"]
        opt.parts[0] = torch.optim.Muon(
            hidden, lr=t.lr, weight_decay=t.weight_decay, adjust_lr_fn="match_rms_adamw"
        )
        return opt
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    groups = param_groups(model, t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), **flags[impl])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="words")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--optimizers",
        default="loop,foreach,fused,muon,muon-torch",
        help="loop, foreach, fused (AdamW), muon (tinylm's), muon-torch",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    words = load_words(str(WORDS) if WORDS.is_file() else "words")
    device = pick_device(args.device)
    for impl in args.optimizers.split(","):
        ms = profile(cfg, words, impl, device)
        print(json.dumps({"optimizer": impl, "device": str(device), "ms": ms}), flush=True)


if __name__ == "__main__":
    main()
