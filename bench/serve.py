"""Load benchmark for `tinylm serve`: N concurrent streaming clients on loopback for a while.
Prints one JSON line per server: requests/s, tokens/s, p50/p99 time to first token, errors.

    python bench/serve.py --run runs/pile-bpe            # 64 clients, 60 s
    python bench/serve.py                                # first trains the pile-bpe preset for 60 s
    python bench/serve.py --run runs/pile-bpe --soak     # 32 streaming clients, 10 minutes
    python bench/serve.py --run runs/pile-bpe --chat 0 --score 0 \
        --server tinylm --server llama-cpp-python --server llama-server   # against llama.cpp

--soak looks for leaks and slow-downs: streaming clients only (completions and chat), the
server's resident memory (VmRSS of /proc/PID/status) sampled every 5 s, and the verdict on one
line: 0 errors, memory at the end within 5 % of its value after the first minute, and the time
to first token's p99 in the last minute within 20 % of the first minute's (the window is a
quarter of the run when the run is shorter than 4 minutes, as a smoke run is).

Each client loops: picks a request (by default 70 % streamed completions with max_tokens=32,
15 % streamed chat completions with max_tokens=32, 15 % scoring: echo of a ~1,000-character
passage with logprobs=1 and max_tokens=0, as lm-evaluation-harness scores text), reads the
answer to the end, and starts again. Time to first token counts the streamed requests (the
first chunk with text); scoring requests report their whole latency. Target (issues 4 and 12):
64 clients, 0 errors, p99 time to first token under 2 s on the 2-core machine, with scoring
and chat in the mix. Client and server share the machine, as in real loopback use.

--server (repeatable; default tinylm) runs the same clients against each server named, one
after the other, each started fresh and stopped after its run, one JSON line each:
  tinylm            `tinylm serve RUN`
  llama-cpp-python  `python -m llama_cpp.server` (pip install "llama-cpp-python[server]") on
                    the run's GGUF export (f32, written to a temporary folder): one request at a
                    time, with `--interrupt_requests False` (its default, True, cuts a stream
                    short as soon as another request waits), n_ctx = the run's context length,
                    2 threads
  llama-server      llama.cpp's own server (--llama-server PATH, or $LLAMA_SERVER, or on PATH)
                    on the same file: `-np 64 -cb -t 2 -c 64 x context length` (--slots), each
                    of its 64 parallel slots the run's context, batched continuously
llama.cpp's servers take only plain streamed completions here (--chat 0 --score 0: the chat
template and echo+logprobs scoring are tinylm's), the same prompts, max_tokens and temperature
0.8 for all, and plain temperature sampling everywhere: top_k 0 and top_p 1 (tinylm's
defaults), and for llama.cpp min_p 0 and repeat_penalty 1 too (its defaults cut the tail and
penalise repeats). Every server stops a completion at the model's end-of-text token, so a
request may end before max_tokens: "finish_reasons" counts "length" against "stop".
Tokens are the generated tokens, not chunks of text (a token holding half of a character
sends no text): the `usage` of the last chunk (stream_options.include_usage; llama-server sends
it unasked), and where a server sends none (llama-cpp-python) the chunks without a
finish_reason, which it sends one per token, some with empty text; "tokens_counted_by" says
which. llama-server's completion_tokens counts the end-of-text token too where a completion
stops there (finish_reason "stop": no stop strings are sent), and the others do not: one token
less is counted for each of its "stop"s.
The server's peak memory is VmHWM of its process (for llama-server the binary's). A kept-alive
connection that a server closes without answering (llama-server does, now and then, after a
streamed answer) is retried once on another, as OpenAI's client retries: "reconnects", not
"errors".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import shared_data  # bench/shared_data.py: where the benchmark data lies

SERVERS = ("tinylm", "llama-cpp-python", "llama-server")
DEFAULT_TEXT = shared_data.TEXT / "train.jsonl"
HELD_OUT = DEFAULT_TEXT.with_name("val.jsonl")
PROMPTS = [
    "Once upon a time",
    "The history of",
    "In the beginning",
    "She said that",
    "The king",
    "It was a dark",
    "Scientists have found",
    "The river",
    "My dear friend",
    "When the war",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(seconds: float) -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "small-bpe"
    cmd = [
        sys.executable,
        "-m",
        "tinylm.cli",
        "train",
        "pile-bpe",
        "--data",
        str(DEFAULT_TEXT),
        "--out",
        str(out),
        "--time",
        str(seconds),
        "--no-report",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def passages(n: int = 20, chars: int = 1000) -> list[str]:
    """Text to score: the start of held-out documents, or the prompts run together."""
    if HELD_OUT.is_file():
        with HELD_OUT.open() as f:
            docs = [json.loads(line)["text"] for line in itertools.islice(f, n)]
        return [d[:chars] for d in docs if d.strip()]
    return [". ".join(random.Random(i).sample(PROMPTS, len(PROMPTS))) for i in range(n)]


# plain temperature sampling, tinylm's defaults said out loud; llama.cpp's servers also get
# LLAMA_SAMPLING, since their defaults (min_p 0.05, and llama-cpp-python's top_k 40, top_p 0.95,
# repeat_penalty 1.1) would sample differently
SAMPLING = {"temperature": 0.8, "top_k": 0, "top_p": 1.0}
LLAMA_SAMPLING = {"min_p": 0.0, "repeat_penalty": 1.0}


def request(kind: str, max_tokens: int, texts: list[str], sampling: dict) -> tuple[str, dict]:
    """(path, body) of one request of `kind`."""
    if kind == "score":
        return "/v1/completions", {
            "prompt": random.choice(texts),
            "echo": True,
            "logprobs": 1,
            "max_tokens": 0,
        }
    common = {
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
    }
    if kind == "chat":
        return "/v1/chat/completions", {
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            **common,
        }
    return "/v1/completions", {"prompt": random.choice(PROMPTS), **common}


def has_text(chunk: dict) -> bool:
    choice = chunk["choices"][0] if chunk.get("choices") else {}
    return bool(choice.get("text") or choice.get("delta", {}).get("content"))


class StreamError(Exception):
    """An error event inside a streamed answer (the job failed on the server)."""


async def read_stream(response, start: float):
    """(tokens, seconds from `start` to the first chunk with text, finish_reason, how the
    tokens were counted) of a streamed answer: the usage's completion_tokens where the server
    sends one, else the chunks without a finish_reason (one per token)."""
    chunks, usage, first, finish = 0, None, None, None
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            raise StreamError(event["error"]["message"])
        if event.get("usage"):
            usage = event["usage"]["completion_tokens"]
        if event.get("choices"):
            reason = event["choices"][0].get("finish_reason")
            chunks += reason is None
            finish = reason or finish
        if has_text(event) and first is None:
            first = time.perf_counter() - start
    if usage is not None:
        return usage, first, finish, "usage"
    return chunks, first, finish, "chunks"


@contextlib.asynccontextmanager
async def post(http, url: str, body: dict, stats: dict):
    """POST `body`, the answer streamed. A kept-alive connection that the server closed
    without answering (llama-server does, now and then, after a streamed answer) is tried
    again on another, as OpenAI's client does: counted in "reconnects", not in "errors"."""
    for tries_left in (1, 0):
        try:
            response = await http.send(http.build_request("POST", url, json=body), stream=True)
            break
        except httpx.RemoteProtocolError as e:
            if not tries_left or "without sending a response" not in str(e):
                raise
            stats["reconnects"] += 1
    try:
        yield response
    finally:
        await response.aclose()


async def client(http, base, stop_at, stats, max_tokens, mix, texts, sampling):
    kinds, weights = zip(*mix.items(), strict=True)
    while time.perf_counter() < stop_at:
        kind = random.choices(kinds, weights)[0]
        path, body = request(kind, max_tokens, texts, sampling)
        start, first = time.perf_counter(), None
        try:
            async with post(http, base + path, body, stats) as response:
                if response.status_code != 200:
                    stats["errors"].append(response.status_code)
                    await response.aread()
                    await asyncio.sleep(0.5)
                    continue
                if kind == "score":
                    scored = json.loads(await response.aread())["choices"][0]["logprobs"]
                    tokens = len(scored["tokens"])
                else:
                    tokens, first, finish, counted_by = await read_stream(response, start)
        except Exception as e:  # a dropped connection, a timeout
            stats["errors"].append(type(e).__name__)
            continue
        stats["requests"][kind] += 1
        if kind == "score":
            stats["scored_tokens"] += tokens
            stats["score_latency"].append(time.perf_counter() - start)
            continue
        stats["tokens"] += tokens
        stats["finish_reasons"][str(finish)] = stats["finish_reasons"].get(str(finish), 0) + 1
        stats["counted_by"].add(counted_by)
        if first is not None:
            stats["ttft"].append(first)
            stats["ttft_at"].append((start + first - stats["start"], first))


async def load(base, clients, seconds, max_tokens, mix, sampling, pid=None):
    """Run the clients for `seconds`; with `pid`, sample the server's memory every 5 s."""
    stats = {
        "requests": dict.fromkeys(mix, 0),
        "tokens": 0,
        "finish_reasons": {},  # of the streamed requests
        "counted_by": set(),
        "scored_tokens": 0,
        "ttft": [],
        "ttft_at": [],  # (seconds since the start, time to first token)
        "rss_at": [],  # (seconds since the start, resident MB of the server)
        "score_latency": [],
        "errors": [],
        "reconnects": 0,
    }
    texts = passages()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = stats["start"] = time.perf_counter()
        stop_at = start + seconds
        clients = [
            client(http, base, stop_at, stats, max_tokens, mix, texts, sampling)
            for _ in range(clients)
        ]
        sampler = [sample_rss(pid, start, stop_at, stats["rss_at"])] if pid else []
        await asyncio.gather(*clients, *sampler)
        elapsed = time.perf_counter() - start
    return stats, elapsed


async def sample_rss(pid: int, start: float, stop_at: float, samples: list, every: float = 5):
    while True:
        samples.append((time.perf_counter() - start, rss_mb(pid)))
        if time.perf_counter() >= stop_at:
            return
        await asyncio.sleep(min(every, max(0.0, stop_at - time.perf_counter())))


def quantile(values: list[float], q: float):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None


def peak_rss_mb(pid: int) -> int:
    """The server's peak resident memory so far (VmHWM, Linux)."""
    return round(proc_status_kb(pid, "VmHWM") / 1024)


def rss_mb(pid: int) -> float:
    """The server's resident memory now (VmRSS, Linux)."""
    return round(proc_status_kb(pid, "VmRSS") / 1024, 1)


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1024


def soak_figures(stats: dict, elapsed: float) -> dict:
    """The soak's verdict: errors, memory after the first window against the end, and the
    time to first token's p99 in the first window against the last."""
    window = min(60.0, elapsed / 4)
    first = [v for t, v in stats["ttft_at"] if t <= window]
    last = [v for t, v in stats["ttft_at"] if t >= elapsed - window]
    after_first = next((mb for t, mb in stats["rss_at"] if t >= window), None)
    end = stats["rss_at"][-1][1] if stats["rss_at"] else None
    p99_first, p99_last = quantile(first, 0.99), quantile(last, 0.99)
    rss_change = round(100 * (end / after_first - 1), 2) if after_first and end else None
    ttft_change = round(100 * (p99_last / p99_first - 1), 1) if p99_first and p99_last else None
    windows = [
        [v for t, v in stats["ttft_at"] if k * window <= t < (k + 1) * window]
        for k in range(int(elapsed // window))
    ]
    return {
        "window_s": round(window, 1),
        "rss_mb_after_first_window": after_first,
        "rss_mb_end": end,
        "rss_change_pct": rss_change,
        "rss_mb_samples": [mb for _, mb in stats["rss_at"][:: max(1, len(stats["rss_at"]) // 20)]],
        "ttft_p99_first_window_s": p99_first,
        "ttft_p99_last_window_s": p99_last,
        "ttft_p99_change_pct": ttft_change,
        "ttft_p50_by_window_s": [quantile(w, 0.5) for w in windows],
        "ttft_p99_by_window_s": [quantile(w, 0.99) for w in windows],
        "ok": bool(
            not stats["errors"]
            and rss_change is not None
            and rss_change <= 5
            and ttft_change is not None
            and ttft_change <= 20
        ),
    }


def context_length(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["max_position_embeddings"]


def server_command(name: str, run: Path, model: Path | None, port: int, args) -> list[str]:
    """The command line that starts server `name` on `port` (`model`: the run's GGUF file)."""
    if name == "tinylm":
        return [sys.executable, "-m", "tinylm.cli", "serve", str(run), "--port", str(port)]
    threads = str(args.threads)
    if name == "llama-cpp-python":
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--n_ctx", str(context_length(run)), "--n_threads", threads,
            "--n_threads_batch", threads, "--interrupt_requests", "False",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    return [
        args.llama_server, "--model", str(model), "-np", str(args.slots), "-cb",
        "-t", threads, "-c", str(args.slots * context_length(run)),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def wait_until_up(base: str, name: str, server: subprocess.Popen, log: Path) -> None:
    """Until the server answers (llama-server says 503 while it loads the model)."""
    path = "/v1/models" if name == "llama-cpp-python" else "/health"  # it has no /health
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(base + path).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name} did not start ({' '.join(server.args)}):\n{tail}")
        time.sleep(0.2)


def gguf_parameters(path: Path) -> int:
    """The weights in a GGUF file (a tied output layer is not stored: counted once)."""
    import gguf

    return int(sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors))


def measure(name: str, run: Path, model: Path | None, tmp: Path, args, mix: dict) -> dict:
    """Start server `name`, run the clients against it, stop it: its JSON line."""
    port = free_port()
    command = server_command(name, run, model, port, args)
    log = tmp / f"{name}.log"  # stdout too: nothing but the JSON lines on ours
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    sampling = SAMPLING if name == "tinylm" else {**SAMPLING, **LLAMA_SAMPLING}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, name, server, log)
        if name == "tinylm":
            params = httpx.get(base + "/v1/models").json()["data"][0]["parameters"]
        else:
            params = gguf_parameters(model)
        pid = server.pid if args.soak else None
        random.seed(0)  # the same sequence of requests for every server
        stats, elapsed = asyncio.run(
            load(base, args.clients, args.seconds, args.max_tokens, mix, sampling, pid)
        )
        server_rss_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    requests = sum(stats["requests"].values())
    streamed = sum(stats["finish_reasons"].values())
    if name == "llama-server":  # its completion_tokens counts the end-of-text token too
        stats["tokens"] -= stats["finish_reasons"].get("stop", 0)
    soak = soak_figures(stats, elapsed) if args.soak else {}
    return {
        "bench": "serve-soak" if args.soak else "serve",
        "server": name,
        "server_command": " ".join(command),
        "run": str(run),
        "parameters": params,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "mix": {k: round(v, 2) for k, v in mix.items()},
        "sampling": sampling,
        "server_peak_rss_mb": server_rss_mb,
        "requests_per_s": round(requests / elapsed, 2),
        "tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "tokens_per_request": round(stats["tokens"] / streamed, 1) if streamed else None,
        "tokens_counted_by": sorted(stats["counted_by"]),
        "finish_reasons": stats["finish_reasons"],
        "scored_tokens_per_s": round(stats["scored_tokens"] / elapsed, 1),
        "ttft_p50_s": quantile(stats["ttft"], 0.5),
        "ttft_p99_s": quantile(stats["ttft"], 0.99),
        "score_latency_p50_s": quantile(stats["score_latency"], 0.5),
        "score_latency_p99_s": quantile(stats["score_latency"], 0.99),
        "requests": requests,
        "requests_by_kind": stats["requests"],
        "errors": len(stats["errors"]),
        "error_kinds": sorted(set(map(str, stats["errors"]))),
        "reconnects": stats["reconnects"],
        **soak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="run to serve (default: train a small one)")
    p.add_argument("--clients", type=int, help="concurrent clients (64; --soak: 32)")
    p.add_argument("--seconds", type=float, help="how long the clients run (60; --soak: 600)")
    p.add_argument("--soak", action="store_true", help="streaming clients; memory and TTFT drift")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--train-seconds", type=float, default=60)
    p.add_argument("--chat", type=float, default=0.15, help="share of chat requests")
    p.add_argument("--score", type=float, default=0.15, help="share of scoring requests")
    p.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help="server to measure, one after the other (repeatable; default: tinylm)",
    )
    p.add_argument(
        "--llama-server",
        default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server"),
        help="llama.cpp's llama-server binary (default: $LLAMA_SERVER, or on PATH)",
    )
    p.add_argument("--slots", type=int, default=64, help="llama-server's parallel slots (-np)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp's threads (-t)")
    args = p.parse_args()
    servers = args.server or ["tinylm"]
    if args.soak:
        args.score = 0.0  # streaming clients only
    if set(servers) - {"tinylm"} and (args.chat or args.score):
        p.error("llama.cpp's servers get plain completions only: add --chat 0 --score 0")
    if "llama-server" in servers and not (args.llama_server and shutil.which(args.llama_server)):
        p.error("no llama-server: give --llama-server PATH (or set LLAMA_SERVER)")
    args.clients = args.clients or (32 if args.soak else 64)
    args.seconds = args.seconds or (600 if args.soak else 60)
    mix = {"completion": 1 - args.chat - args.score, "chat": args.chat, "score": args.score}
    run = args.run or small_model(args.train_seconds)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp, model = Path(tmp), None
        if set(servers) - {"tinylm"}:
            from tinylm import export_gguf

            model = export_gguf(run, tmp / f"{run.name}.gguf", dtype="f32")
        for name in servers:
            print(json.dumps(measure(name, run, model, tmp, args, mix)), flush=True)


if __name__ == "__main__":
    main()
