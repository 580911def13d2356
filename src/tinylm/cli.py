"""tinylm <command>: one entry point; each command maps to one module.

Exit codes: 0 success, 1 an unexpected failure, 2 a user mistake (one sentence on stderr),
130 interrupted with Ctrl-C (the last checkpoint is kept).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from tinylm.errors import UserError

DEMO_TEMPERATURES = (0.5, 1.0, 1.5)


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake gets one sentence and exit code 2, not the usage block."""

    def error(self, message):
        print(f"tinylm: {message} (see `{self.prog} --help`).", file=sys.stderr)
        sys.exit(2)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1")
    return value


def build_parser() -> Parser:
    p = Parser(prog="tinylm", description="Train your own small language model from scratch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model from a preset")
    t.add_argument("preset", nargs="?", help="preset name or YAML file (default: words)")
    t.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.lr=1e-3")
    t.add_argument("--data", help="data source (words: a one-word-a-line file)")
    t.add_argument("--out", type=Path, help="run directory (default: runs/PRESET[-N])")
    t.add_argument("--time", help="training time budget: seconds or 90s / 5m / 1h")
    t.add_argument("--max-steps", type=positive_int, help="optimizer-step budget")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out exactly as it started; --time / --max-steps set a new "
        "total budget",
    )
    t.add_argument(
        "--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps"
    )
    t.add_argument("--seed", type=int, help="training seed (data order, initialisation)")
    t.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN",
        help="continue training RUN's model on --data (keeps its tokenizer and shape)",
    )
    t.add_argument("--no-report", action="store_true", help="skip the evaluation after training")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run on held-out data")
    e.add_argument("run", type=Path)
    e.add_argument("--data", help="other data to evaluate on (default: the run's test split)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--samples", type=int, default=1000, help="words to sample for novelty")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("complete", help="complete word prefixes (character models)")
    c.add_argument("run", type=Path)
    c.add_argument("prefixes", nargs="+")
    c.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    c.add_argument("--num", type=positive_int, default=3, help="completions per prefix")
    c.add_argument("--max-length", type=positive_int, help="longest word, in letters")
    c.add_argument("--seed", type=int, help="sampling seed")
    c.set_defaults(func=cmd_complete)

    g = sub.add_parser("generate", help="continue a prompt (text models)")
    g.add_argument("run", type=Path)
    g.add_argument("prompt", nargs="?", default="")
    add_sampling_options(g)
    g.set_defaults(func=cmd_generate)

    ch = sub.add_parser("chat", help="interactive prompt loop (text models); `quit` ends it")
    ch.add_argument("run", type=Path)
    add_sampling_options(ch)
    ch.set_defaults(func=cmd_chat)

    pl = sub.add_parser("plot", help="loss curves of one or more runs on one picture")
    pl.add_argument("runs", type=Path, nargs="+")
    pl.add_argument("-o", "--output", type=Path, default=Path("loss-curves.png"))
    pl.add_argument("--x", choices=["tokens", "time", "step"], default="tokens")
    pl.set_defaults(func=cmd_plot)

    sv = sub.add_parser("serve", help="HTTP API (OpenAI completions format) and playground page")
    sv.add_argument("run", type=Path)
    sv.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-tokens", type=positive_int, default=256, help="most tokens per request")
    sv.add_argument(
        "--max-active", type=positive_int, default=64, help="requests generated at once"
    )
    sv.add_argument(
        "--max-queue", type=positive_int, default=256, help="requests waiting; then 503"
    )
    sv.add_argument("--api-key", help="require Authorization: Bearer KEY (default: TINYLM_API_KEY)")
    sv.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="configuration, parameters, split and best metrics of a run")
    i.add_argument("run", type=Path)
    i.set_defaults(func=cmd_info)
    return p


def add_sampling_options(p) -> None:
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    p.add_argument("--max-new-tokens", type=positive_int, default=25)
    p.add_argument("--seed", type=int, help="sampling seed")


# --- commands -----------------------------------------------------------------------------


def cmd_train(args) -> int:
    from tinylm import distributed as dist
    from tinylm.launch import plan
    from tinylm.train import train_run

    cfg, out = plan(args.preset, args.overrides, out=args.out, data=args.data, seed=args.seed,
                    time=args.time, max_steps=args.max_steps, init_from=args.init_from,
                    resume=args.resume)  # fmt: skip
    with dist.session(args.device) as env:  # under torchrun: every rank trains, then all leave
        run, summary = train_run(cfg, out, resume=args.resume, device=args.device)
    if not env.is_main:
        return 130 if summary["reason"] == "interrupted" else 0
    print(
        f"Stopped ({summary['reason']}) after {summary['step']:,} steps, "
        f"{summary['elapsed']:.0f} s, {summary['unit_per_s']:,.0f} targets/s; "
        f"best validation loss {summary['best_val']:.4f} nats."
    )
    if summary["reason"] == "interrupted":
        print(f"Checkpoint kept; continue with: tinylm train --resume --out {run.path}")
        print(f"Loss curve: {run.loss_plot_path}")
        return 130
    if not args.no_report:
        report(run)
    print(f"Loss curve: {run.loss_plot_path}")
    return 0


def report(run) -> None:
    """What a user wants to see after training: test figures and a few samples."""
    from tinylm.evaluate import evaluate_run, format_text_table, format_word_table

    cfg = run.config()
    if cfg.data.test_fraction > 0:
        result = evaluate_run(run)
        print(format_text_table(result) if cfg.data.kind == "text" else format_word_table(result))
    if cfg.demo and cfg.tokenizer.kind == "char":
        print_completions(run, cfg.demo, DEMO_TEMPERATURES, num=5, max_length=None, seed=0)
    elif cfg.demo:
        from tinylm.generate import generate_text, make_generator

        model, tokenizer = run.load_model(cfg), run.tokenizer(cfg)
        generator = make_generator(0)
        for prompt in cfg.demo:
            pieces = generate_text(model, tokenizer, prompt, temperature=0.8, top_p=0.95,
                                   generator=generator)  # fmt: skip
            print(f"  {prompt}{''.join(pieces)}")


def print_completions(run, prefixes, temperatures, num, max_length, seed) -> None:
    from tinylm.generate import complete, make_generator

    cfg = run.config()
    tokenizer = run.tokenizer(cfg)
    model = run.load_model(cfg, tokenizer)
    for prefix in prefixes:
        tokenizer.check_chars(prefix)
    generator = make_generator(seed)
    for t in temperatures:
        if len(temperatures) > 1:
            print(f"temperature {t}:")
        for prefix in prefixes:
            outs = complete(
                model,
                tokenizer,
                prefix,
                num=num,
                temperature=t,
                max_length=max_length or cfg.data.max_len,
                generator=generator,
            )
            words = [o.word + ("" if o.finished else "…") for o in outs]
            print(f"  {prefix:<8} {' '.join(words)}")


def cmd_eval(args) -> int:
    import json

    from tinylm.evaluate import evaluate_run, format_text_table, format_word_table
    from tinylm.runs import Run

    result = evaluate_run(Run.open(args.run), data=args.data, samples=args.samples)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_text_table(result) if "bits_per_byte" in result else format_word_table(result))
    return 0


def cmd_complete(args) -> int:
    from tinylm.runs import Run

    run = Run.open(args.run)
    print_completions(run, args.prefixes, (args.temperature,), args.num, args.max_length, args.seed)
    return 0


def load_for_sampling(path: Path):
    from tinylm.device import pick_device
    from tinylm.runs import Run

    run = Run.open(path)
    cfg = run.config()
    tokenizer = run.tokenizer(cfg)
    return run.load_model(cfg, tokenizer).to(pick_device()), tokenizer


def stream(model, tokenizer, prompt: str, args, generator) -> None:
    from tinylm.generate import generate_text

    print(prompt, end="", flush=True)
    for piece in generate_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    ):
        print(piece, end="", flush=True)
    print()


def cmd_generate(args) -> int:
    from tinylm.generate import check_sampling, make_generator

    check_sampling(args.temperature, args.top_k, args.top_p)
    model, tokenizer = load_for_sampling(args.run)
    stream(model, tokenizer, args.prompt, args, make_generator(args.seed))
    return 0


def cmd_chat(args) -> int:
    """The notebook's prompt loop: `> `, an answer streamed per prompt; quit / Ctrl-D ends."""
    from tinylm.generate import check_sampling, make_generator

    check_sampling(args.temperature, args.top_k, args.top_p)
    model, tokenizer = load_for_sampling(args.run)
    generator = make_generator(args.seed)
    if sys.stdin.isatty():
        print("Type a prompt and press Enter; `quit` or Ctrl-D ends. Each prompt stands alone.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        prompt = line.strip()
        if not prompt:
            continue
        if prompt.lower() in ("quit", "exit"):
            return 0
        try:
            stream(model, tokenizer, prompt, args, generator)
        except UserError as e:  # e.g. a character the model does not know: say so, go on
            print(f"tinylm: {e}")


def cmd_plot(args) -> int:
    from tinylm.plots import plot_losses
    from tinylm.runs import Run

    curves = []
    for path in args.runs:
        run = Run.open(path)
        records = run.metrics()
        if not records:
            raise UserError(f"{path} has no metrics yet (metrics.jsonl is empty).")
        curves.append((str(path), records))
    print(plot_losses(curves, args.output, x=args.x))
    return 0


def cmd_serve(args) -> int:
    import os

    from tinylm.serve import Limits, serve

    limits = Limits(
        max_tokens=args.max_tokens, max_active=args.max_active, max_queue=args.max_queue
    )
    serve(args.run, args.host, args.port, limits, args.api_key or os.environ.get("TINYLM_API_KEY"))
    return 0


def cmd_info(args) -> int:
    from tinylm.models import param_breakdown
    from tinylm.runs import Run

    run = Run.open(args.run)
    cfg = run.config()
    print(f"Run {run.path}\n\nConfiguration (tinylm.yaml):")
    print("  " + cfg.to_yaml().strip().replace("\n", "\n  "))
    model = run.load_model(cfg)
    print("\nParameters:")
    for part, n in param_breakdown(model).items():
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
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides (key=value) may come after options; anything else unknown is a mistake.
    unknown = [x for x in extra if x.startswith("-") or "=" not in x or args.command != "train"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides += extra
    try:
        return args.func(args)
    except UserError as e:
        print(f"tinylm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntinylm: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception:
        traceback.print_exc()
        print("tinylm: unexpected failure (traceback above); please report it.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
