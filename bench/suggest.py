"""Autocomplete latency: the top-5 likeliest words for 3-letter prefixes on a word run, p50 and
p99 milliseconds per prefix (the exact best-first search of inference/search.py). Prints one
JSON line, and the top-5 lists of the seven demo prefixes.

    python bench/suggest.py --run runs/words          # a trained word run
    python bench/suggest.py --run runs/words --compile   # the search's waves compiled
    python bench/suggest.py --run runs/words --against ../main/src   # old and new, alternately
    python bench/suggest.py --run runs/words --profile   # waves and expansions of the slowest
    python bench/suggest.py --run runs/words --serve 8   # through `tinylm serve`, 8 typists
    python bench/suggest.py --run runs/words --together 8   # 8 prefixes a search, side by side
    python bench/suggest.py                           # first trains the default words preset (300 s)

With --compile each prefix is searched eager and then compiled, alternating, so both see the
same machine (whose speed moves from minute to minute); the first compiled search compiles
(`compile_s`, not counted in the percentiles), and `compiled_differ` counts the prefixes whose
two lists differ (only near-ties could). --against SRC does the same with the search of
another checkout (its inference/search.py and models/decoder_tree.py, loaded beside this
one's: `against_*` figures, `against_differ`, and the largest relative difference of a
probability). --serve N starts `tinylm serve` on the run and has N clients type the same
prefixes at once, one request (`POST /v1/completions`, temperature 0, n 5) a keystroke every
--typing ms (or as soon as the last answer came, when it came later): p50 and p99 ms a
request, as a client sees it. --together N times the prefixes N to a call of `complete`
(searched side by side, a wave of each in one forward pass) against one at a time, alternately:
ms a prefix of each, and whether every list is the same.

Target (issue "Performance where users feel it"): p50 under 5 ms, p99 under 15 ms, eager.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tinylm
from tinylm.results import Word, WordList

DEMO = ["fin", "inv", "tra", "mar", "ban", "com", "acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="a trained word run (default: train one)")
    p.add_argument("--prefixes", type=int, default=300, help="3-letter prefixes to time")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--compile", action="store_true", help="compiled waves (tinylm complete --compile)"
    )
    p.add_argument("--against", type=Path, help="another checkout's src/ to time alternately")
    p.add_argument("--profile", action="store_true", help="waves and expansions of the slowest")
    p.add_argument("--serve", type=int, metavar="CLIENTS", help="through tinylm serve")
    p.add_argument("--typing", type=float, default=150, help="--serve: ms between keystrokes")
    p.add_argument("--together", type=int, metavar="N", help="N prefixes a search, side by side")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    run = args.run or train_default()
    model = tinylm.load(run, "cpu")
    words = [w for w in model.run.read_split("val") if len(w) >= 4]
    prefixes = [w[:3] for w in random.Random(0).sample(words, min(args.prefixes, len(words)))]
    if args.serve:
        print(json.dumps({"bench": "suggest-serve", "run": str(run), **serve(run, prefixes, args)}))
        return
    if args.together:
        figures = together(model, prefixes, args.together, args.k)
        print(json.dumps({"bench": "suggest-together", "run": str(run), **figures}))
        return
    searches = {"eager": lambda prefix: model.complete(prefix, args.k)[0]}
    if args.compile:
        compiled = tinylm.load(run, "cpu", compile=True)
        searches["compiled"] = lambda prefix: compiled.complete(prefix, args.k)[0]
    if args.against:
        searches["against"] = searcher(load_search(args.against), model, args.k)
    counts = Counts(model.net) if args.profile else None
    figures = timed(searches, prefixes, counts)
    eager_ms = figures.pop("eager_ms")
    demo = {
        words.prefix: [(w.word, round(w.probability, 4)) for w in words.words]
        for words in model.complete(DEMO, args.k)
    }
    print(json.dumps({"bench": "suggest", "run": str(run), "k": args.k, **figures, "demo": demo}))
    if counts:
        counts.report(eager_ms)


def timed(searches: dict, prefixes: list[str], counts=None) -> dict:
    """Each prefix searched by each search in turn, the order alternating, so that all see the
    same machine; the first search of each is a warm-up (for a compiled one, the compile)."""
    warm = {name: clock(search, prefixes[0])[1] for name, search in searches.items()}
    times = {name: [] for name in searches}
    inexact, differ, worst = 0, dict.fromkeys(searches, 0), 0.0
    for i, prefix in enumerate(prefixes):
        order = list(searches) if i % 2 == 0 else list(reversed(searches))
        found = {}
        for name in order:
            if counts and name == "eager":
                counts.start(prefix)
            found[name], ms = clock(searches[name], prefix)
            times[name].append(ms)
        inexact += not found["eager"].exact
        for name, words in found.items():
            mine = found["eager"].words
            differ[name] += [w.word for w in words.words] != [w.word for w in mine]
            for a, b in zip(words.words, mine, strict=False):
                worst = max(worst, abs(a.probability / b.probability - 1))
    figures = {"prefixes": len(prefixes), "inexact": inexact}
    for name, ms in times.items():
        figures |= {f"{name}_p{q}_ms": round(percentile(ms, q), 2) for q in (50, 99)}
        if name != "eager":
            figures[f"{name}_differ"] = differ[name]
    if "compiled" in searches:
        figures["compile_s"] = round(warm["compiled"] / 1000, 1)
    if len(searches) > 1:
        figures["largest_probability_difference"] = float(f"{worst:.2g}")
    return figures | {"eager_ms": times["eager"]}


def together(model, prefixes: list[str], n: int, k: int) -> dict:
    """Groups of n prefixes, each searched in one call and one prefix at a time, alternately."""
    model.complete(prefixes[:n], k)  # warm-up
    groups = [prefixes[i : i + n] for i in range(0, len(prefixes), n)]
    ms = {"together": 0.0, "one_by_one": 0.0}
    same = True
    for i, group in enumerate(groups):
        ways = {
            "together": lambda g=group: list(model.complete(g, k)),
            "one_by_one": lambda g=group: [model.complete(p, k)[0] for p in g],
        }
        found = {}
        for name in ways if i % 2 == 0 else reversed(ways):
            t0 = time.perf_counter()
            found[name] = ways[name]()
            ms[name] += (time.perf_counter() - t0) * 1000
        same &= [str(w) for w in found["together"]] == [str(w) for w in found["one_by_one"]]
    per = {f"{name}_ms_per_prefix": round(t / len(prefixes), 2) for name, t in ms.items()}
    return {"prefixes": len(prefixes), "together": n, **per, "same_lists": same}


def clock(search, prefix: str):
    t0 = time.perf_counter()
    found = search(prefix)
    return found, (time.perf_counter() - t0) * 1000


def load_search(src: Path):
    """Another checkout's search and search tree, as modules of their own beside this one's."""
    mods = {}
    tree = "models/decoder_tree.py"
    if not (src / "tinylm" / tree).exists():
        tree = "models/decoder_runtime.py"  # (where the tree lay before)
    for name, rel in [("tree", tree), ("search", "inference/search.py")]:
        spec = importlib.util.spec_from_file_location(f"against_{name}", src / "tinylm" / rel)
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mods[name]
        spec.loader.exec_module(mods[name])
    return mods


def searcher(mods: dict, model, k: int):
    """The other checkout's search, on this process's model and rules (WordTask.likeliest), one
    prefix a search; a checkout whose searches take one prompt (before they ran side by side)
    has its backend called that way."""
    net, task, tok = model.net, model.task, model.tokenizer
    one = "prompts" not in inspect.signature(mods["search"].likeliest_words).parameters

    class Backend:  # model.search, with the other checkout's tree
        def search(self, prompts, compile=False):
            return mods["tree"].CacheTree(net, prompts, compile)

    letters = [i for i in range(tok.vocab_size) if i not in task.banned and i != tok.eos_id]

    def search(prefix: str):
        rules = mods["search"].WordRules(
            letters,
            tok.eos_id,
            max_letters=task.max_len - len(prefix),
            min_letters=task.cfg.data.min_len - len(prefix),
        )
        prompt = task.prompt(prefix).ids
        if one:
            found = mods["search"].likeliest_words(Backend(), prompt, rules, k)
        else:
            [found] = mods["search"].likeliest_words(Backend(), [prompt], [rules], k)
        words = [Word(prefix + tok.decode(ids), p) for ids, p in found.words]
        return WordList(prefix, words, ranked=True, exact=found.exact)

    return search


class Counts:
    """Waves and expanded continuations of each search (`--profile`), counted at the model's
    search backend."""

    def __init__(self, net):
        self.searches: list[tuple[str, list[int]]] = []  # (prefix, rows of each wave)
        backend = net.search

        def search(prompts, compile=False):
            expand = backend(prompts, compile)

            def counted(items):
                if self.searches:  # (not the warm-up; one prefix a search here)
                    self.searches[-1][1].append(sum(len(nodes) for _, nodes in items))
                return expand(items)

            return counted

        net.search = search

    def start(self, prefix: str) -> None:
        self.searches.append((prefix, []))

    def report(self, ms: list[float]) -> None:
        """The slowest prefixes, their waves and rows; the mean waves and rows of all."""
        seen = self.searches
        slow = sorted(zip(ms, seen, strict=True), key=lambda t: -t[0])[:12]
        for t, (prefix, waves) in slow:
            print(f"{t:7.2f} ms  {prefix}  waves {len(waves)}  rows {sum(waves)}  {waves}")
        waves = [len(w) for _, w in seen]
        rows = [sum(w) for _, w in seen]
        print(f"mean waves {statistics.mean(waves):.2f}, mean rows {statistics.mean(rows):.0f}")


def serve(run: Path, prefixes: list[str], args) -> dict:
    """`tinylm serve` in a process of its own; args.serve clients share the prefixes, each
    typing them one keystroke (request) every args.typing ms."""
    import asyncio

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "tinylm.cli", "serve", str(run), "--port", str(port)]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base, httpx)
        shares = [prefixes[i :: args.serve] for i in range(args.serve)]
        single = asyncio.run(typists(base, [prefixes[:60]], 0, args.k))  # one client alone
        ms, seconds = asyncio.run(typists(base, shares, args.typing, args.k))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "clients": args.serve,
        "typing_ms": args.typing,
        "requests": len(ms),
        "requests_per_s": round(len(ms) / seconds, 1),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "alone_p50_ms": round(percentile(single[0], 50), 1),
        "alone_p99_ms": round(percentile(single[0], 99), 1),
    }


async def typists(base: str, shares: list[list[str]], typing_ms: float, k: int):
    """Each share typed by a client of its own: (ms of every request, seconds in all)."""
    import asyncio

    import httpx

    ms: list[float] = []

    async def client(http, mine):
        for prefix in mine:
            t0 = time.perf_counter()
            body = {"prompt": prefix, "n": k, "temperature": 0}
            r = await http.post(base + "/v1/completions", json=body)
            r.raise_for_status()
            took = time.perf_counter() - t0
            ms.append(took * 1000)
            await asyncio.sleep(max(0.0, typing_ms / 1000 - took))

    limits = httpx.Limits(max_connections=len(shares) + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, mine) for mine in shares))
        return ms, time.perf_counter() - t0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(base: str, httpx, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def percentile(ms: list[float], q: int) -> float:
    return statistics.median(ms) if q == 50 else statistics.quantiles(ms, n=100)[q - 1]


def train_default() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-suggest-")) / "words"
    cmd = [sys.executable, "-m", "tinylm.cli", "train", "words", "--out", str(out), "--no-report"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    main()
