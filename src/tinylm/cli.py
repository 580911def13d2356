"""tinylm <command>: one entry point; each command parses its arguments, calls the Python API
(tinylm/api.py) and prints what it returns.

Exit codes: 0 success, 1 an unexpected failure, 2 a user mistake (one sentence on stderr),
130 interrupted with Ctrl-C (the last checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

import tinylm
from tinylm.cli_parser import build_parser
from tinylm.errors import SamplingError, UserError

# --- commands -----------------------------------------------------------------------------


def cmd_train(args) -> int:
    run = tinylm.train(
        args.preset,
        data=args.data,
        time=args.time,
        max_steps=args.max_steps,
        out=args.out,
        seed=args.seed,
        overrides=args.overrides,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
    )
    s = run.summary
    if not run.main:
        return 130 if s["reason"] == "interrupted" else 0
    print(
        f"Stopped ({s['reason']}) after {s['step']:,} steps, {s['elapsed']:.0f} s, "
        f"{s['unit_per_s']:,.0f} targets/s; best validation loss {s['best_val']:.4f} nats."
    )
    if s["reason"] == "interrupted":
        print(f"Checkpoint kept; continue with: tinylm train --resume --out {run.path}")
        print(f"Loss curve: {run.dir.loss_plot_path}")
        return 130
    if not args.no_report:
        model = run.load()
        if model.caveat:
            print(f"Note: {model.caveat}")
        if model.cfg.data.test_fraction > 0:
            print(model.evaluate())
        print(model.demo())
    print(f"Loss curve: {run.dir.loss_plot_path}")
    print(f"A page about this run: tinylm report {run.path}")
    print(f"Its model card: {run.path / 'README.md'}; share it: tinylm push {run.path} OWNER/NAME")
    return 0


def cmd_eval(args) -> int:
    result = tinylm.load(args.run, args.device).evaluate(args.data, samples=args.samples)
    if result.caveat:
        print(f"tinylm: note: {result.caveat}", file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def cmd_complete(args) -> int:
    """The likeliest words (default), or sampled ones with --temperature above 0."""
    model = tinylm.load(args.run, args.device, compile=args.compile)
    with option_names():
        found = model.complete(
            args.prefixes,
            args.top,
            temperature=args.temperature or 0.0,
            num=args.num,
            max_length=args.max_length,
            seed=args.seed,
        )
    if args.json:
        print("\n".join(line for words in found for line in words.json_lines()))
    else:
        print(found)
    return 0


@contextlib.contextmanager
def option_names():
    """A sampling setting out of range, said with its option's name (--top-p, not top_p)."""
    try:
        yield
    except SamplingError as e:
        raise UserError(f"--{e.field.replace('_', '-')} {e.reason}") from None


def stream(model, prompt: str, args) -> None:
    print(prompt, end="", flush=True)
    with option_names():
        pieces = model.stream(
            prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
        )
        for piece in pieces:
            print(piece, end="", flush=True)
    print()


def cmd_generate(args) -> int:
    with option_names():
        tinylm.Sampling(args.temperature, args.top_k, args.top_p)  # checked before loading
    model = tinylm.load(args.run, args.device, compile=args.compile)
    if model.caveat:
        print(f"tinylm: note: {model.caveat}", file=sys.stderr)
    stream(model, args.prompt, args)
    return 0


def cmd_chat(args) -> int:
    """The notebook's prompt loop: `> `, an answer streamed per prompt; quit / Ctrl-D ends."""
    with option_names():
        tinylm.Sampling(args.temperature, args.top_k, args.top_p)
    model = tinylm.load(args.run, args.device, compile=args.compile)
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
            stream(model, prompt, args)
        except UserError as e:  # e.g. a character the model does not know: say so, go on
            print(f"tinylm: {e}")


def cmd_plot(args) -> int:
    print(tinylm.plot(args.runs, x=args.x).save(args.output))
    return 0


def cmd_serve(args) -> int:
    # imported here: the server's modules (starlette, uvicorn, the API and so torch) are for
    # `tinylm serve` alone, and the other commands' --help and mistakes answer without them
    from tinylm.serve import Limits, read_api_key, serve

    limits = Limits(
        max_tokens=args.max_tokens, max_active=args.max_active, max_queue=args.max_queue
    )
    key = read_api_key(args.api_key_file, args.api_key)
    serve(
        args.run,
        args.host,
        args.port,
        limits,
        key,
        device=args.device,
        name=args.name,
        allow_origins=tuple(args.allow_origin),
        compile=args.compile,
    )
    return 0


def cmd_attention(args) -> int:
    maps = tinylm.load(args.run, args.device).attention(args.prompt)
    print(json.dumps(maps.to_dict()) if args.json else maps.save(args.out))
    return 0


def cmd_tokens(args) -> int:
    """Token by token: id, piece and surprise; coloured on a terminal (not with NO_COLOR)."""
    tokens = tinylm.load(args.run, args.device).tokens(args.text)
    if args.json:
        print(json.dumps(tokens.to_dict()))
        return 0
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        print(tokens.coloured() + "  (green: expected, red: surprising)")
    print(tokens)
    return 0


def cmd_report(args) -> int:
    print(tinylm.load(args.run, args.device).report(args.out))
    return 0


def cmd_export(args) -> int:
    if not args.gguf:
        raise UserError("Name the format to export to: --gguf (for llama.cpp and Ollama).")
    print(tinylm.Run(args.run).export_gguf(args.out, args.dtype))  # a directory or hf:OWNER/NAME
    return 0


def cmd_push(args) -> int:
    files, url = tinylm.push(args.run, args.repo, private=args.private, dry_run=args.dry_run)
    print("\n".join(files))
    print(f"Would send these {len(files)} files." if url is None else f"Pushed to {url}")
    return 0


def cmd_info(args) -> int:
    print(tinylm.load(args.run, args.device).info())
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "complete": cmd_complete,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "attention": cmd_attention,
    "tokens": cmd_tokens,
    "report": cmd_report,
    "plot": cmd_plot,
    "export": cmd_export,
    "push": cmd_push,
    "info": cmd_info,
}


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
        return COMMANDS[args.command](args)
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
