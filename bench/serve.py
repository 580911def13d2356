"""Load benchmark for `tinylm serve`: N concurrent streaming clients on loopback for a while.
Prints one JSON line: requests/s, tokens/s, p50/p99 time to first token, errors.

    python bench/serve.py --run runs/pile-bpe            # 64 clients, 60 s
    python bench/serve.py                                # first trains the pile-bpe preset for 60 s
    python bench/serve.py --run runs/pile-bpe --soak     # 32 streaming clients, 10 minutes

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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import shared_data  # bench/shared_data.py: where the benchmark data lies

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


def request(kind: str, max_tokens: int, texts: list[str]) -> tuple[str, dict]:
    """(path, body) of one request of `kind`."""
    if kind == "score":
        return "/v1/completions", {
            "prompt": random.choice(texts),
            "echo": True,
            "logprobs": 1,
            "max_tokens": 0,
        }
    common = {"max_tokens": max_tokens, "stream": True, "temperature": 0.8}
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


async def read_stream(response, start: float) -> tuple[int, float | None]:
    """(chunks with text, seconds from `start` to the first of them) of a streamed answer."""
    tokens, first = 0, None
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            raise StreamError(event["error"]["message"])
        if has_text(event):
            tokens += 1
            if first is None:
                first = time.perf_counter() - start
    return tokens, first


async def client(http, base, stop_at, stats, max_tokens, mix, texts):
    kinds, weights = zip(*mix.items(), strict=True)
    while time.perf_counter() < stop_at:
        kind = random.choices(kinds, weights)[0]
        path, body = request(kind, max_tokens, texts)
        start, first = time.perf_counter(), None
        try:
            async with http.stream("POST", base + path, json=body) as response:
                if response.status_code != 200:
                    stats["errors"].append(response.status_code)
                    await response.aread()
                    await asyncio.sleep(0.5)
                    continue
                if kind == "score":
                    scored = json.loads(await response.aread())["choices"][0]["logprobs"]
                    tokens = len(scored["tokens"])
                else:
                    tokens, first = await read_stream(response, start)
        except Exception as e:  # a dropped connection, a timeout
            stats["errors"].append(type(e).__name__)
            continue
        stats["requests"][kind] += 1
        if kind == "score":
            stats["scored_tokens"] += tokens
            stats["score_latency"].append(time.perf_counter() - start)
            continue
        stats["tokens"] += tokens
        if first is not None:
            stats["ttft"].append(first)
            stats["ttft_at"].append((start + first - stats["start"], first))


async def load(base, clients, seconds, max_tokens, mix, pid=None):
    """Run the clients for `seconds`; with `pid`, sample the server's memory every 5 s."""
    stats = {
        "requests": dict.fromkeys(mix, 0),
        "tokens": 0,
        "scored_tokens": 0,
        "ttft": [],
        "ttft_at": [],  # (seconds since the start, time to first token)
        "rss_at": [],  # (seconds since the start, resident MB of the server)
        "score_latency": [],
        "errors": [],
    }
    texts = passages()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = stats["start"] = time.perf_counter()
        stop_at = start + seconds
        clients = [
            client(http, base, stop_at, stats, max_tokens, mix, texts) for _ in range(clients)
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
    args = p.parse_args()
    if args.soak:
        args.score = 0.0  # streaming clients only
    args.clients = args.clients or (32 if args.soak else 64)
    args.seconds = args.seconds or (600 if args.soak else 60)
    mix = {"completion": 1 - args.chat - args.score, "chat": args.chat, "score": args.score}
    run = args.run or small_model(args.train_seconds)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", "serve", str(run), "--port", str(port)],
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        params = httpx.get(base + "/v1/models").json()["data"][0]["parameters"]
        pid = server.pid if args.soak else None
        stats, elapsed = asyncio.run(
            load(base, args.clients, args.seconds, args.max_tokens, mix, pid)
        )
        server_rss_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    requests = sum(stats["requests"].values())
    soak = soak_figures(stats, elapsed) if args.soak else {}
    print(
        json.dumps(
            {
                "bench": "serve-soak" if args.soak else "serve",
                "run": str(run),
                "parameters": params,
                "clients": args.clients,
                "seconds": round(elapsed, 1),
                "mix": {k: round(v, 2) for k, v in mix.items()},
                "server_peak_rss_mb": server_rss_mb,
                "requests_per_s": round(requests / elapsed, 2),
                "tokens_per_s": round(stats["tokens"] / elapsed, 1),
                "scored_tokens_per_s": round(stats["scored_tokens"] / elapsed, 1),
                "ttft_p50_s": quantile(stats["ttft"], 0.5),
                "ttft_p99_s": quantile(stats["ttft"], 0.99),
                "score_latency_p50_s": quantile(stats["score_latency"], 0.5),
                "score_latency_p99_s": quantile(stats["score_latency"], 0.99),
                "requests": requests,
                "requests_by_kind": stats["requests"],
                "errors": len(stats["errors"]),
                "error_kinds": sorted(set(map(str, stats["errors"]))),
                **soak,
            }
        )
    )


if __name__ == "__main__":
    main()
