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


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake gets one sentence and exit code 2, not the usage block."""

    def error(self, message):
        print(f"tinylm: {message} (see `{self.prog} --help`).", file=sys.stderr)
        sys.exit(2)


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

    add_train_parser(sub)
    add_use_parsers(sub)
    add_serve_parser(sub)
    add_explain_parsers(sub)

    pl = sub.add_parser("plot", help="loss curves of one or more runs on one picture")
    pl.add_argument("runs", type=Path, nargs="+")
    pl.add_argument("-o", "--output", type=Path, default=Path("loss-curves.png"))
    pl.add_argument("--x", choices=["tokens", "time", "step"], default="tokens")
    pl.set_defaults(func=cmd_plot)

    i = sub.add_parser("info", help="configuration, parameters, split and best metrics of a run")
    i.add_argument("run", type=Path)
    add_device_option(i)
    i.set_defaults(func=cmd_info)
    return p


def add_train_parser(sub) -> None:
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
    add_device_option(t)
    t.add_argument("--seed", type=int, help="training seed (data order, initialisation)")
    t.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN",
        help="continue training RUN's model on --data (keeps its tokenizer and shape)",
    )
    t.add_argument("--no-report", action="store_true", help="skip the evaluation after training")
    t.set_defaults(func=cmd_train)


def add_use_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run on held-out data")
    e.add_argument("run", type=Path)
    e.add_argument("--data", help="other data to evaluate on (default: the run's test split)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--samples", type=int, default=1000, help="words to sample for novelty")
    add_device_option(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("complete", help="the likeliest words that complete each prefix")
    c.add_argument("run", type=Path)
    c.add_argument("prefixes", nargs="+")
    c.add_argument("--top", type=positive_int, default=5, help="how many words (default 5)")
    c.add_argument(
        "--temperature", type=float, help="sample words at this temperature instead (0: likeliest)"
    )
    c.add_argument("--num", type=positive_int, help="words per prefix (default: --top)")
    c.add_argument("--max-length", type=positive_int, help="longest word, in letters")
    c.add_argument("--seed", type=int, help="sampling seed")
    c.add_argument("--json", action="store_true", help="one JSON object a line")
    c.add_argument("--compile", action="store_true", help="compile the word search: 10-50 s to "
                   "start, then each search ~1.5x faster (worth it for many prefixes)")  # fmt: skip
    add_device_option(c)
    c.set_defaults(func=cmd_complete)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("run", type=Path)
    g.add_argument("prompt", nargs="?", default="")
    add_sampling_options(g)
    g.set_defaults(func=cmd_generate)

    ch = sub.add_parser("chat", help="interactive prompt loop; `quit` ends it")
    ch.add_argument("run", type=Path)
    add_sampling_options(ch)
    ch.set_defaults(func=cmd_chat)


def add_serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="HTTP API (OpenAI completions format) and playground page")
    sv.add_argument("run", type=Path)
    sv.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-tokens", type=positive_int, default=256, help="most tokens per request")
    sv.add_argument("--max-active", type=positive_int, default=64, help="requests generated at once")  # fmt: skip
    sv.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting; then 503")  # fmt: skip
    sv.add_argument("--name", help="the served model's name (default: the run folder's)")
    sv.add_argument("--api-key-file", type=Path, help="require Authorization: Bearer KEY, KEY read from FILE")  # fmt: skip
    sv.add_argument("--api-key", help="the key itself (visible in `ps`; prefer TINYLM_API_KEY)")
    sv.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="also answer web pages from ORIGIN (e.g. https://example.com; * for any)",
    )  # fmt: skip
    sv.add_argument("--compile", action="store_true", help="compile the decode step and the "
                    "word search while starting (~15-50 s), so that requests run faster (text "
                    "~3x, suggestions ~1.5x; decoder-only runs)")  # fmt: skip
    add_device_option(sv)
    sv.set_defaults(func=cmd_serve)


def add_explain_parsers(sub) -> None:
    a = sub.add_parser("attention", help="the model's attention weights for a prompt, as pictures")
    a.add_argument("run", type=Path)
    a.add_argument("prompt")
    a.add_argument("--out", type=Path, default=Path("attention.png"), help="the picture")
    a.add_argument("--json", action="store_true", help="print the weights as JSON instead")
    add_device_option(a)
    a.set_defaults(func=cmd_attention)

    k = sub.add_parser("tokens", help="how a text is cut into tokens, and the model's surprise")
    k.add_argument("run", type=Path)
    k.add_argument("text")
    k.add_argument("--json", action="store_true", help="a list of {id, piece, bits}")
    add_device_option(k)
    k.set_defaults(func=cmd_tokens)

    r = sub.add_parser("report", help="one self-contained HTML page about a run")
    r.add_argument("run", type=Path)
    r.add_argument("--out", type=Path, help="the page (default: RUN/report.html)")
    add_device_option(r)
    r.set_defaults(func=cmd_report)


def add_sampling_options(p) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 to 2; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold, (0, 1]")
    p.add_argument("--max-new-tokens", type=positive_int, default=25)
    p.add_argument("--seed", type=int, help="sampling seed: one seed, one text")
    p.add_argument("--compile", action="store_true", help="compile the decode step (complete: "
                   "the word search): slow to start (~15-50 s), then faster (text ~3x, "
                   "suggestions ~1.5x; decoder-only runs)")  # fmt: skip
    add_device_option(p)


def add_device_option(p) -> None:
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps"
    )


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
        from tinylm.show import report

        report(run)
    print(f"Loss curve: {run.loss_plot_path}")
    print(f"A page about this run: tinylm report {run.path}")
    return 0


def cmd_eval(args) -> int:
    import json

    from tinylm.evaluate import evaluate_run, format_text_table, format_word_table
    from tinylm.runs import Run

    result = evaluate_run(Run.open(args.run), data=args.data, samples=args.samples)
    if result.get("caveat"):
        print(f"tinylm: note: {result['caveat']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_text_table(result) if "bits_per_byte" in result else format_word_table(result))
    return 0


def cmd_complete(args) -> int:
    """The likeliest words (default), or sampled ones with --temperature above 0."""
    from tinylm.inference import load

    loaded = load(args.run, args.device, compile=args.compile)
    if not loaded.task.words:
        raise UserError(f"{args.run} is a text generator; use `tinylm generate RUN PROMPT`.")
    sampling = sampling_from(args, temperature=args.temperature or 0.0)
    for prefix in args.prefixes:
        loaded.task.prompt(prefix)  # every prefix checked before any work
    from tinylm.show import print_samples, print_suggestions

    if sampling.greedy:
        print_suggestions(loaded, args.prefixes, args.num or args.top, args.json, args.max_length)
    else:
        print_samples(loaded, args.prefixes, sampling, args.num or args.top, args.seed, args.json,
                      args.max_length)  # fmt: skip
    return 0


def sampling_from(args, temperature=None):
    """The sampling options, checked (one sentence naming the option, exit 2)."""
    from tinylm.inference import Sampling, SamplingError

    try:
        return Sampling(
            args.temperature if temperature is None else temperature,
            getattr(args, "top_k", 0),
            getattr(args, "top_p", 1.0),
        )
    except SamplingError as e:
        option = "--" + e.field.replace("_", "-")
        raise UserError(f"{option} {e.reason}") from None


def stream(loaded, prompt: str, args) -> None:
    print(prompt, end="", flush=True)
    for piece in loaded.stream(prompt, sampling_from(args), max_tokens=args.max_new_tokens,
                               seed=args.seed):  # fmt: skip
        print(piece, end="", flush=True)
    print()


def cmd_generate(args) -> int:
    from tinylm.inference import load

    sampling_from(args)  # checked before the model loads
    loaded = load(args.run, args.device, compile=args.compile)
    if loaded.caveat:
        print(f"tinylm: note: {loaded.caveat}", file=sys.stderr)
    stream(loaded, args.prompt, args)
    return 0


def cmd_chat(args) -> int:
    """The notebook's prompt loop: `> `, an answer streamed per prompt; quit / Ctrl-D ends."""
    from tinylm.inference import load

    sampling_from(args)
    loaded = load(args.run, args.device, compile=args.compile)
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
            stream(loaded, prompt, args)
        except UserError as e:  # e.g. a character the model does not know: say so, go on
            print(f"tinylm: {e}")


def cmd_plot(args) -> int:
    from tinylm.show import plot_runs

    print(plot_runs(args.runs, args.output, x=args.x))
    return 0


def cmd_serve(args) -> int:
    from tinylm.serve import Limits, read_api_key, serve

    limits = Limits(max_tokens=args.max_tokens, max_active=args.max_active, max_queue=args.max_queue)  # fmt: skip
    key = read_api_key(args.api_key_file, args.api_key)
    serve(args.run, args.host, args.port, limits, key, device=args.device, name=args.name,
          allow_origins=tuple(args.allow_origin), compile=args.compile)  # fmt: skip
    return 0


def cmd_attention(args) -> int:
    import json

    from tinylm.explain import attention
    from tinylm.inference import load
    from tinylm.plots import plot_attention

    maps = attention(load(args.run, args.device), args.prompt)
    if args.json:
        print(json.dumps({"maps": [m.to_json() for m in maps]}))
    else:
        print(plot_attention(maps, args.out, title=f"{args.run}: {args.prompt!r}"))
    return 0


def cmd_tokens(args) -> int:
    from tinylm.explain import surprise
    from tinylm.inference import load
    from tinylm.show import print_tokens

    print_tokens(surprise(load(args.run, args.device), args.text), as_json=args.json)
    return 0


def cmd_report(args) -> int:
    from tinylm.inference import load
    from tinylm.report import write_report

    loaded = load(args.run, args.device)
    print(write_report(loaded, args.out or loaded.run.path / "report.html"))
    return 0


def cmd_info(args) -> int:
    from tinylm.inference import load
    from tinylm.show import print_info

    print_info(load(args.run, args.device))
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
