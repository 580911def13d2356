"""What the commands show a user: the report after training, word suggestions and samples,
and a run's description. The commands in cli.py parse and dispatch; the printing lives here."""

from __future__ import annotations

import json
import math

from tinylm.errors import UserError
from tinylm.inference import LoadedRun, Sampling, load

DEMO_TEMPERATURES = (0.5, 1.0, 1.5)


def report(run) -> None:
    """What a user wants to see after training: test figures and a few samples."""
    from tinylm.evaluate import evaluate_run, format_text_table, format_word_table

    loaded = load(run.path)
    if loaded.caveat:
        print(f"Note: {loaded.caveat}")
    if loaded.cfg.data.test_fraction > 0:
        result = evaluate_run(run)
        print(format_word_table(result) if loaded.task.words else format_text_table(result))
    demo = loaded.cfg.demo
    if demo and loaded.task.words:
        print("the likeliest words:")
        print_suggestions(loaded, demo, k=5, as_json=False)
        for t in DEMO_TEMPERATURES:
            print(f"temperature {t}:")
            print_samples(loaded, demo, Sampling(t), num=5, seed=0, as_json=False)
    for prompt in demo if not loaded.task.words else ():
        text = "".join(loaded.stream(prompt, Sampling(0.8, top_p=0.95), seed=0))
        print(f"  {prompt}{text}")


def print_suggestions(loaded, prefixes, k, as_json, max_length=None) -> None:
    results = [loaded.likeliest(p, k, max_length) for p in prefixes]
    for r in results:
        if as_json:
            for s in r.words:
                print(json.dumps({"prefix": r.prefix, "completion": s.word,
                                  "probability": round(s.probability, 6)}))  # fmt: skip
        else:
            words = "  ".join(f"{s.word} {s.probability:.1%}" for s in r.words)
            print(f"  {r.prefix:<8} {words}" + ("" if r.exact else "  (search budget reached)"))


def print_samples(loaded, prefixes, sampling, num, seed, as_json, max_length=None) -> None:
    limits = [max_length and max_length - len(p) for p in prefixes]
    outs = loaded.sample(prefixes, sampling, n=num, seed=seed, max_tokens=limits)
    for i, prefix in enumerate(prefixes):
        mine = outs[i * num : (i + 1) * num]
        if as_json:
            for c in mine:
                p = math.exp(c.logprob) if c.finished else None
                print(json.dumps({"prefix": prefix, "completion": prefix + c.text,
                                  "probability": p and round(p, 6)}))  # fmt: skip
        else:
            words = " ".join(prefix + c.text + ("" if c.finished else "…") for c in mine)
            print(f"  {prefix:<8} {words}")


def print_info(loaded: LoadedRun) -> None:
    from tinylm.models import param_breakdown

    run, cfg = loaded.run, loaded.cfg
    print(f"Run {run.path}: a {loaded.task.kind}")
    if loaded.caveat:
        print(f"Note: {loaded.caveat}")
    print("\nConfiguration (tinylm.yaml):")
    print("  " + cfg.to_yaml().strip().replace("\n", "\n  "))
    print("\nParameters:")
    for part, n in param_breakdown(loaded.model).items():
        print(f"  {part:<16}{n:>12,}")
    split = run.read_json("split/split.json")
    if split:
        print("\nSplit: " + ", ".join(f"{k} {v:,}" for k, v in split["counts"].items()))
    vals = [r for r in run.metrics() if "val_loss" in r]
    if vals:
        best = min(vals, key=lambda r: r["val_loss"])
        print(
            f"\nBest validation loss {best['val_loss']:.4f} nats at step {best['step']:,} "
            f"({best['time']:.0f} s, {best['tokens']:,} targets); {len(vals)} validations."
        )
    result = run.read_json("eval.json")
    if result and "bits_per_byte" in result:
        print(
            f"Test: {result['bits_per_byte']:.3f} bits/byte, {result['loss_per_token']:.3f} "
            f"nats/token, {result['top1_accuracy']:.1%} top-1 accuracy."
        )
    if result and "bits_per_char" in result:
        print(
            f"Test: {result['bits_per_char']:.3f} bits/char, "
            f"{result['next_char_accuracy']:.1%} next-character accuracy."
        )


def print_tokens(tokens, as_json: bool) -> None:
    """Token by token: id, piece and surprise; coloured on a terminal (not with NO_COLOR)."""
    import os
    import sys

    from tinylm.explain import color_tokens

    if as_json:
        print(json.dumps([t.to_json() for t in tokens]))
        return
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        print(color_tokens(tokens) + "  (green: expected, red: surprising)")
    for t in tokens:
        mark = "  <UNK>" if t.unk else ""
        print(f"{t.id:>7}  {t.piece or '(end)'!r:<16} {t.bits:6.2f} bits{mark}")
    total = sum(t.bits for t in tokens)
    print(f"{len(tokens)} tokens, {total:.2f} bits in all ({total / len(tokens):.3f} per token)")


def plot_runs(paths, out, x: str = "tokens"):
    """The loss curves of several runs in one picture."""
    from tinylm.plots import plot_losses
    from tinylm.runs import Run

    curves = []
    for path in paths:
        records = Run.open(path).metrics()
        if not records:
            raise UserError(f"{path} has no metrics yet (metrics.jsonl is empty).")
        curves.append((str(path), records))
    return plot_losses(curves, out, x=x)
