"""`tinylm serve RUN`: an HTTP API in the shape of OpenAI's completions, and a playground page.

    GET  /                 the playground (prompt, sliders, streamed answer)
    GET  /health           {"status": "ok", "active": n, "waiting": m}
    GET  /v1/models        the one model this server holds
    POST /v1/completions   prompt, max_tokens, temperature, top_p, top_k, stop, n, seed, stream

The official `openai` package works against it (`base_url="http://127.0.0.1:8000/v1"`),
streaming included. Requests are validated and refused with a 4xx and a JSON error body in
OpenAI's shape; generation runs in one worker thread (engine.py) behind a bounded queue, and
a full queue answers 503 with Retry-After. Built on Starlette + uvicorn (bench/frameworks.py
has the measurement behind that choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinylm.engine import Engine, Job, QueueFull
from tinylm.generate import TextStream, make_generator, text_banned, text_prompt
from tinylm.models import param_breakdown

IGNORED_FIELDS = {  # accepted for compatibility when they ask for nothing we would change
    "user": None,
    "logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "stream_options": None,
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def response(self, headers: dict | None = None) -> JSONResponse:
        body = {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}
        }
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class Limits:
    max_tokens: int = 256  # per request
    max_n: int = 8
    max_body: int = 64 * 1024  # bytes
    max_active: int = 64
    max_queue: int = 256


@dataclass
class CompletionRequest:
    prompts: list[str]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    n: int
    seed: int | None
    stream: bool


def _number(body, name, default, low, high, *, integer=False, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise ApiError(
            400,
            f"'{name}' must be {'an integer' if integer else 'a number'}, not {json.dumps(value)}.",
            name,
        )
    if value < low or (low_open and value == low) or value > high:
        left = "(" if low_open else "["
        raise ApiError(400, f"'{name}' must be in {left}{low}, {high}], not {value}.", name)
    return value


def parse_request(
    body, model_name: str, limits: Limits, default_max_tokens: int
) -> CompletionRequest:
    """Check every field of a completions request; raise ApiError saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    known = {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "n",
        "seed",
        "stream",
    }
    for key, value in body.items():
        if key in IGNORED_FIELDS:
            allowed = IGNORED_FIELDS[key]
            if allowed is not None and value not in allowed:
                raise ApiError(400, f"'{key}' is not supported by this server.", key)
        elif key not in known:
            raise ApiError(400, f"Unknown field '{key}'.", key)
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server has '{model_name}'.",
            "model",
            "not_found_error",
        )
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise ApiError(400, "'prompt' must be a string or a non-empty list of strings.", "prompt")
    if len(prompts) > limits.max_n:
        raise ApiError(400, f"At most {limits.max_n} prompts per request.", "prompt")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > 4
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ApiError(
            400, "'stop' must be a non-empty string or a list of up to 4 of them.", "stop"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer.", "seed")
    max_tokens = _number(body, "max_tokens", default_max_tokens, 1, 10**9, integer=True)
    if max_tokens > limits.max_tokens:
        raise ApiError(
            400,
            f"'max_tokens' is {max_tokens}; this server allows at most {limits.max_tokens}.",
            "max_tokens",
        )
    n = _number(body, "n", 1, 1, limits.max_n, integer=True)
    if n * len(prompts) > limits.max_n:
        raise ApiError(400, f"n times the number of prompts must be at most {limits.max_n}.", "n")
    return CompletionRequest(
        prompts=prompts,
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0, 2)),
        top_p=float(_number(body, "top_p", 1.0, 0, 1, low_open=True)),
        top_k=_number(body, "top_k", 0, 0, 10**9, integer=True),
        stop=stop,
        n=n,
        seed=seed,
        stream=stream,
    )


class StopFilter:
    """Cut the text at the first stop string, holding back what might be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            out, self.pending, self.stopped = self.pending[: min(cuts)], "", True
            return out
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if s.startswith(self.pending[-k:]):
                    keep = max(keep, k)
                    break
        out, self.pending = (
            self.pending[: len(self.pending) - keep],
            self.pending[len(self.pending) - keep :],
        )
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Server:
    """The model, its engine, and the request handlers."""

    def __init__(self, run_path: Path, limits: Limits | None = None, api_key: str | None = None):
        from tinylm.device import pick_device
        from tinylm.runs import Run

        run = Run.open(run_path)
        self.cfg = run.config()
        self.tokenizer = run.tokenizer(self.cfg)
        self.model = run.load_model(self.cfg, self.tokenizer).to(pick_device())
        self.name = run.path.resolve().name
        self.parameters = param_breakdown(self.model)["total"]
        self.words = self.tokenizer.kind == "char"
        self.limits = limits or Limits()
        self.api_key = api_key
        self.created = int(time.time())
        self.engine = Engine(self.model, self.limits.max_active, self.limits.max_queue)

    # --- building jobs
    def default_max_tokens(self) -> int:
        return self.cfg.data.max_len if self.words else 25

    def prompt_ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if self.words:
            if prompt != prompt.strip() or not all(
                c in tok.tok.get_vocab() and c != " " for c in prompt
            ):
                raise ApiError(
                    400,
                    f"The prefix {json.dumps(prompt)} has characters this model does not know (it knows the letters of its word list).",
                    "prompt",
                )
            ids = [tok.bos_id, *tok.encode(prompt)]
            if self.cfg.model.arch == "seq2seq":
                ids.append(tok.eos_id)
            if len(prompt) >= self.cfg.data.max_len:
                raise ApiError(
                    400,
                    f"The prefix is {len(prompt)} letters; this model completes words of at most {self.cfg.data.max_len}.",
                    "prompt",
                )
            return ids
        ids = text_prompt(tok, prompt)
        if len(ids) > self.cfg.model.context_length:
            raise ApiError(
                400,
                f"The prompt is {len(ids) - 1} tokens; this model reads at most {self.cfg.model.context_length - 1}.",
                "prompt",
            )
        return ids

    def banned(self) -> tuple[int, ...]:
        tok = self.tokenizer
        if self.words:
            space = tok.tok.token_to_id(" ")
            return tuple(i for i in (tok.pad_id, tok.bos_id, space) if i is not None)
        return text_banned(tok)

    def max_tokens_for(self, req: CompletionRequest, prompt: str) -> int:
        if self.words:  # letters still allowed in a word
            return min(req.max_tokens, self.cfg.data.max_len - len(prompt))
        return req.max_tokens

    # --- handlers
    async def completions(self, request: Request) -> Response:
        try:
            self.check_key(request)
            body = await self.read_json(request)
            req = parse_request(body, self.name, self.limits, self.default_max_tokens())
            prompt_ids = [self.prompt_ids(p) for p in req.prompts]
            return await self.complete(request, req, prompt_ids)
        except ApiError as e:
            headers = {"Retry-After": "1"} if e.status == 503 else None
            return e.response(headers)

    async def complete(self, request: Request, req: CompletionRequest, prompt_ids) -> Response:
        loop = asyncio.get_running_loop()
        choices = []  # (index, prompt, queue, job)
        base_seed = req.seed
        for p_index, (prompt, ids) in enumerate(zip(req.prompts, prompt_ids, strict=True)):
            for k in range(req.n):
                index = p_index * req.n + k
                queue: asyncio.Queue = asyncio.Queue()
                generator = make_generator(None if base_seed is None else base_seed + index)

                def emit(token, reason, queue=queue):
                    loop.call_soon_threadsafe(queue.put_nowait, (token, reason))

                job = Job(ids, self.max_tokens_for(req, prompt), req.temperature, req.top_k,
                          req.top_p, self.tokenizer.eos_id, self.banned(), generator, emit)  # fmt: skip
                choices.append((index, prompt, queue, job))
        with self.engine.lock:
            room = self.limits.max_queue - len(self.engine.waiting)
        if room < len(choices):
            raise ApiError(503, "The server is busy; try again in a moment.", kind="server_busy")
        try:
            for *_, job in choices:
                self.engine.submit(job)
        except QueueFull:
            for *_, job in choices:
                job.cancelled.set()
            raise ApiError(
                503, "The server is busy; try again in a moment.", kind="server_busy"
            ) from None
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
        }
        prompt_tokens = sum(len(ids) - 1 for ids in prompt_ids) * req.n
        if req.stream:
            return StreamingResponse(
                self.stream_events(choices, req, meta),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(self.watch_disconnect(request, choices))
        try:
            results = await asyncio.gather(*(self.collect(q, job, req) for _, _, q, job in choices))
        finally:
            watcher.cancel()
        completion_tokens = sum(r[2] for r in results)
        return JSONResponse(
            {
                **meta,
                "choices": [
                    {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
                    for (index, *_), (text, reason, _) in zip(choices, results, strict=True)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def collect(self, queue, job, req) -> tuple[str, str, int]:
        text, stop, parts, count = TextStream(self.tokenizer), StopFilter(req.stop), [], 0
        while True:
            token, reason = await queue.get()
            if token is None:
                parts.append(stop.flush())
                return "".join(parts), _finish(reason), count
            count += 1
            parts.append(stop.push(text.add(token)))
            if stop.stopped:
                job.cancelled.set()
                return "".join(parts), "stop", count

    async def stream_events(self, choices, req, meta):
        """Server-sent events, one chunk per piece of text, then `data: [DONE]`."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(index, queue, job):
            text, stop = TextStream(self.tokenizer), StopFilter(req.stop)
            while True:
                token, reason = await queue.get()
                if token is None:
                    await merged.put((index, stop.flush(), _finish(reason)))
                    return
                piece = stop.push(text.add(token))
                if stop.stopped:
                    job.cancelled.set()
                    await merged.put((index, piece, "stop"))
                    return
                if piece:
                    await merged.put((index, piece, None))

        tasks = [asyncio.create_task(pump(i, q, job)) for i, _, q, job in choices]
        remaining = len(choices)
        try:
            while remaining:
                index, piece, reason = await merged.get()
                if reason is not None:
                    remaining -= 1
                chunk = {
                    **meta,
                    "choices": [
                        {"text": piece, "index": index, "logprobs": None, "finish_reason": reason}
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or we are done): free the slots now
            for *_, job in choices:
                job.cancelled.set()
            for t in tasks:
                t.cancel()

    async def watch_disconnect(self, request: Request, choices) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for *_, job in choices:
                    job.cancelled.set()
                return

    async def read_json(self, request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(
                415, f"Send the request as application/json, not {ctype or 'no content type'}."
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body:
            raise ApiError(413, f"The request body is larger than {self.limits.max_body} bytes.")
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > self.limits.max_body:
                raise ApiError(
                    413, f"The request body is larger than {self.limits.max_body} bytes."
                )
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"The request body is not valid JSON ({e}).") from None

    def check_key(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise ApiError(
                401,
                "A valid API key is required (Authorization: Bearer KEY).",
                kind="authentication_error",
            )

    async def models(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except ApiError as e:
            return e.response()
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    def model_card(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "tinylm",
            "parameters": self.parameters,
            "kind": "word completer" if self.words else "text generator",
            "context_length": self.cfg.model.context_length,
            "max_tokens_limit": self.limits.max_tokens,
        }

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name, **self.engine.stats()})

    async def playground(self, request: Request) -> Response:
        page = (resources.files("tinylm") / "static" / "playground.html").read_text()
        return HTMLResponse(page)


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def create_app(
    run_path: Path, limits: Limits | None = None, api_key: str | None = None
) -> Starlette:
    server = Server(run_path, limits, api_key)

    async def not_found(request, exc):
        return ApiError(404, f"No route {request.method} {request.url.path}.").response()

    async def method_not_allowed(request, exc):
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}.").response()

    async def server_error(request, exc):
        return ApiError(500, "Internal error; the server log has the details.").response()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.engine.stop()

    app = Starlette(
        routes=[
            Route("/", server.playground, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def serve(run_path: Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          api_key: str | None = None) -> None:  # fmt: skip
    import sys

    import uvicorn

    app = create_app(run_path, limits, api_key)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tinylm: listening on {host}, reachable from other machines"
              + ("" if api_key else " by anyone (no --api-key)") + "; there is no TLS.",
              file=sys.stderr)  # fmt: skip
    print(
        f"tinylm: serving {app.state.server.name} on http://{host}:{port}/ (Ctrl-C stops)",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
