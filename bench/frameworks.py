"""Which web framework for `tinylm serve`: Starlette and FastAPI (both on uvicorn) serving the
same two endpoints with no model behind them, a validated JSON request answered with JSON and
one streamed as 32 server-sent events, under 64 concurrent loopback clients (server in its own
process). Prints one JSON line per framework and endpoint; the framework's own cost is what is
measured. (No `from __future__ import annotations` here: FastAPI reads the annotations.)

    python bench/frameworks.py
"""

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx
import uvicorn

EVENTS = 32


def starlette_app():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def complete(request: Request):
        body = await request.json()
        if not isinstance(body.get("prompt"), str) or not 0 <= body.get("temperature", 1) <= 2:
            return JSONResponse({"error": {"message": "bad request"}}, status_code=400)
        if body.get("stream"):

            async def events():
                for i in range(EVENTS):
                    yield f"data: {json.dumps({'choices': [{'text': str(i), 'index': 0}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({"choices": [{"text": "x" * EVENTS, "index": 0}]})

    return Starlette(routes=[Route("/v1/completions", complete, methods=["POST"])])


def fastapi_app():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, Field

    class Body(BaseModel):
        prompt: str
        temperature: float = Field(1.0, ge=0, le=2)
        stream: bool = False

    app = FastAPI()

    @app.post("/v1/completions")
    async def complete(body: Body):
        if body.stream:

            async def events():
                for i in range(EVENTS):
                    yield f"data: {json.dumps({'choices': [{'text': str(i), 'index': 0}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"choices": [{"text": "x" * EVENTS, "index": 0}]}

    return app


async def hammer(url, stream, clients=64, seconds=10.0):
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        stop_at = time.perf_counter() + seconds

        async def one():
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    body = {"prompt": "hi", "temperature": 0.5, "stream": stream}
                    async with http.stream("POST", url, json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                        if r.status_code != 200:
                            errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        "errors": errors,
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":  # the server side, in its own process
        factory = {"starlette": starlette_app, "fastapi": fastapi_app}[sys.argv[2]]
        uvicorn.run(factory(), port=int(sys.argv[3]), log_level="error")
        return
    for name in ("starlette", "fastapi"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, __file__, "--serve", name, str(port)])
        try:
            for _ in range(100):
                try:
                    httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x"})
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            for stream in (False, True):
                result = asyncio.run(hammer(f"http://127.0.0.1:{port}/v1/completions", stream))
                print(json.dumps({"framework": name, "stream": stream, **result}), flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
