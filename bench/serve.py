"""Load benchmark for `tinylm serve`: N concurrent streaming clients on loopback for a while.
Prints one JSON line: requests/s, tokens/s, p50/p99 time to first token, errors.

    python bench/serve.py --run runs/pile-bpe            # 64 clients, 60 s
    python bench/serve.py                                # first trains the pile-bpe preset for 60 s

Each client loops: POST /v1/completions with stream=true and max_tokens=32, read the events
to the end, and start again. Target (issue 4): 64 clients, 0 errors, p99 time to first token
under 2 s on the 2-core machine. Client and server share the machine, as in real loopback use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "train.jsonl"
PROMPTS = ["Once upon a time", "The history of", "In the beginning", "She said that", "The king",
           "It was a dark", "Scientists have found", "The river", "My dear friend", "When the war"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(seconds: float) -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "small-bpe"
    cmd = [sys.executable, "-m", "tinylm.cli", "train", "pile-bpe", "--data", str(DEFAULT_TEXT),
           "--out", str(out), "--time", str(seconds), "--no-report"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


async def client(http, url, stop_at, stats, max_tokens):
    while time.perf_counter() < stop_at:
        body = {"prompt": random.choice(PROMPTS), "max_tokens": max_tokens, "stream": True,
                "temperature": 0.8}  # fmt: skip
        start = time.perf_counter()
        first = None
        tokens = 0
        try:
            async with http.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    stats["errors"].append(response.status_code)
                    await response.aread()
                    await asyncio.sleep(0.5)
                    continue
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk["choices"][0]["finish_reason"] is None:
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - start
        except Exception as e:  # a dropped connection, a timeout
            stats["errors"].append(type(e).__name__)
            continue
        stats["requests"] += 1
        stats["tokens"] += tokens
        if first is not None:
            stats["ttft"].append(first)


async def load(url, clients, seconds, max_tokens):
    stats = {"requests": 0, "tokens": 0, "ttft": [], "errors": []}
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(
            *(client(http, url, stop_at, stats, max_tokens) for _ in range(clients))
        )
        elapsed = time.perf_counter() - start
    return stats, elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="run to serve (default: train a small one)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--train-seconds", type=float, default=60)
    args = p.parse_args()
    run = args.run or small_model(args.train_seconds)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tinylm.cli", "serve", str(run), "--port", str(port)],
                              stderr=subprocess.DEVNULL, env={**os.environ})  # fmt: skip
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
        stats, elapsed = asyncio.run(
            load(base + "/v1/completions", args.clients, args.seconds, args.max_tokens)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    ttft = sorted(stats["ttft"])
    print(
        json.dumps(
            {
                "bench": "serve",
                "run": str(run),
                "parameters": params,
                "clients": args.clients,
                "seconds": round(elapsed, 1),
                "requests_per_s": round(stats["requests"] / elapsed, 2),
                "tokens_per_s": round(stats["tokens"] / elapsed, 1),
                "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
                "ttft_p99_s": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 3)
                if ttft
                else None,
                "requests": stats["requests"],
                "errors": len(stats["errors"]),
                "error_kinds": sorted(set(map(str, stats["errors"]))),
            }
        )
    )


if __name__ == "__main__":
    main()
