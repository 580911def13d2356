"""The command line's arguments: one subcommand a command of cli.py, each with its options and
help. Building the parser imports nothing heavy, so `tinylm --help` answers at once. Every RUN
is a run directory or `hf:OWNER/NAME`, a run on the Hugging Face Hub (hub.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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

    x = sub.add_parser("export", help="the run as a GGUF file for llama.cpp and Ollama")
    x.add_argument("run", type=Path)
    x.add_argument("--gguf", action="store_true", help="write GGUF (with an Ollama Modelfile)")
    x.add_argument("--out", type=Path, help="the file (default: RUN/model-DTYPE.gguf)")
    x.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32", help="weights' type")

    u = sub.add_parser("push", help="share a run on the Hugging Face Hub, with its model card")
    u.add_argument("run", type=Path)
    u.add_argument("repo", metavar="OWNER/NAME", help="the model repository (created if need be)")
    u.add_argument("--private", action="store_true", help="a private repository, if new")
    u.add_argument(
        "--dry-run", action="store_true", help="write the card and list the files; send nothing"
    )

    i = sub.add_parser("info", help="configuration, parameters, split and best metrics of a run")
    i.add_argument("run", type=Path)
    add_device_option(i)
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


def add_use_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run on held-out data")
    e.add_argument("run", type=Path)
    e.add_argument("--data", help="other data to evaluate on (default: the run's test split)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--samples", type=int, default=1000, help="words to sample for novelty")
    add_device_option(e)

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
    c.add_argument(
        "--compile",
        action="store_true",
        help="compile the word search: 10-50 s to "
        "start, then a search 10-15%% faster at the median, no faster at the tail",
    )
    add_device_option(c)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("run", type=Path)
    g.add_argument("prompt", nargs="?", default="")
    add_sampling_options(g)

    ch = sub.add_parser("chat", help="interactive prompt loop; `quit` ends it")
    ch.add_argument("run", type=Path)
    add_sampling_options(ch)


def add_serve_parser(sub) -> None:
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
    sv.add_argument("--name", help="the served model's name (default: the run folder's)")
    sv.add_argument(
        "--api-key-file", type=Path, help="require Authorization: Bearer KEY, KEY read from FILE"
    )
    sv.add_argument("--api-key", help="the key itself (visible in `ps`; prefer TINYLM_API_KEY)")
    sv.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also answer web pages from ORIGIN (e.g. https://example.com; * for any)",
    )
    sv.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step and the "
        "word search while starting (~15-50 s), so that text comes ~3x as fast "
        "(suggestions 10-15%% faster at the median; decoder-only runs)",
    )
    add_device_option(sv)


def add_explain_parsers(sub) -> None:
    a = sub.add_parser("attention", help="the model's attention weights for a prompt, as pictures")
    a.add_argument("run", type=Path)
    a.add_argument("prompt")
    a.add_argument("--out", type=Path, default=Path("attention.png"), help="the picture")
    a.add_argument("--json", action="store_true", help="print the weights as JSON instead")
    add_device_option(a)

    k = sub.add_parser("tokens", help="how a text is cut into tokens, and the model's surprise")
    k.add_argument("run", type=Path)
    k.add_argument("text")
    k.add_argument("--json", action="store_true", help="a list of {id, piece, bits}")
    add_device_option(k)

    r = sub.add_parser("report", help="one self-contained HTML page about a run")
    r.add_argument("run", type=Path)
    r.add_argument("--out", type=Path, help="the page (default: RUN/report.html)")
    add_device_option(r)


def add_sampling_options(p) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 to 2; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold, (0, 1]")
    p.add_argument("--max-new-tokens", type=positive_int, default=25)
    p.add_argument("--seed", type=int, help="sampling seed: one seed, one text")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (complete: "
        "the word search): slow to start (~15-50 s), then faster (text ~3x, "
        "suggestions 10-15%% faster at the median; decoder-only runs)",
    )
    add_device_option(p)


def add_device_option(p) -> None:
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps"
    )
