"""Start-up: seconds from `tinylm complete RUN fin` to its output, and from `tinylm serve RUN`
to its first answered request, each beside `python -c "import torch"` measured in the same
loop (alternately, so both see the same machine). Prints one JSON line: medians, and what each
exceeds `import torch` by.

    python bench/startup.py --words RUN --text RUN [--repeat 7]

`python -X importtime -m tinylm.cli complete RUN fin 2> imports.txt` shows where the rest goes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def seconds(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_seconds(run: Path) -> float:
    """From starting `tinylm serve` to the first answer of a completion request."""
    port = free_port()
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", "serve", str(run), "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/completions",
                    json={"prompt": "The", "max_tokens": 1},
                    timeout=30,
                )
                if r.status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                time.sleep(0.01)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--words", type=Path, required=True, help="a decoder word run")
    p.add_argument("--text", type=Path, required=True, help="a decoder text run")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch_cmd = [sys.executable, "-c", "import torch"]
    complete = [sys.executable, "-m", "tinylm.cli", "complete", str(args.words), "fin"]
    times = {"import_torch": [], "complete": [], "serve_first_answer": []}
    for _ in range(args.repeat):
        times["import_torch"].append(seconds(torch_cmd))
        times["complete"].append(seconds(complete))
        times["serve_first_answer"].append(serve_seconds(args.text))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                "bench": "startup",
                **{f"{name}_s": round(m, 3) for name, m in median.items()},
                "complete_over_torch_s": round(median["complete"] - median["import_torch"], 3),
                "serve_over_torch_s": round(
                    median["serve_first_answer"] - median["import_torch"], 3
                ),
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
