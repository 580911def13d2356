"""`tinylm serve RUN`: the routes, and the wiring of requests to the engine's worker thread.

    GET  /                    the playground (prompt, sliders, streamed answer; suggestions
                              as you type for a word completer)
    GET  /health              {"status": "ok", "active": n, "waiting": m}; 503 if the engine died
    GET  /v1/models           the one model this server holds (and /v1/models/{id})
    POST /v1/completions      OpenAI's completions; see protocol.py and the README

The request shapes live in protocol.py, the checks on who may call in guard.py; generation
runs in one worker thread (worker.py) over the one engine every command uses. Built on
Starlette + uvicorn (bench/frameworks.py has the measurement behind that choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinylm.errors import UserError
from tinylm.inference import Engine, load
from tinylm.inference.search import likeliest_words
from tinylm.models import param_breakdown
from tinylm.serve import protocol as api
from tinylm.serve.guard import Guard, check_key
from tinylm.serve.worker import QueueFull, Worker


class Server:
    """The loaded run, its worker, and the request handlers."""

    def __init__(self, run_path: Path, limits: api.Limits, api_key=None, device="auto", name=None):
        self.loaded = load(run_path, device)
        self.task, self.limits, self.api_key = self.loaded.task, limits, api_key
        self.name = name or self.loaded.run.path.resolve().name
        self.parameters = param_breakdown(self.loaded.model)["total"]
        self.created = int(time.time())
        self.worker = Worker(Engine(self.loaded.model, limits.max_active), limits.max_queue)
        self.searching = asyncio.Semaphore(1)  # one word search at a time beside the engine

    async def completions(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
            body = api.parse_json(await read_body(request, self.limits.max_body))
            req = api.parse_completion(body, self.name, self.limits)
            try:
                prompts = [self.task.prompt(p) for p in req.prompts]
            except UserError as e:
                raise api.ApiError(400, str(e), "prompt") from None
            if self.task.words and req.sampling.greedy:
                return await self.suggest(req, prompts)
            return await self.generate(request, req, prompts)
        except api.ApiError as e:
            return e.response()

    async def generate(self, request: Request, req: api.CompletionRequest, prompts) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        default = min(self.task.default_max_tokens, self.limits.max_tokens)
        jobs = []
        for prompt in prompts:
            for _ in range(req.n):
                seed = None if req.seed is None else req.seed + len(jobs)
                job = self.loaded.job(prompt, req.sampling, max_tokens=req.max_tokens or default,
                                      seed=seed)  # fmt: skip
                job.emit = tell(loop, events, len(jobs))
                jobs.append(job)
        try:
            self.worker.submit(jobs)
        except QueueFull:
            raise api.busy() from None
        meta = api.completion_meta(self.name)
        answers = Answers(self.task, jobs, req.stop)
        prompt_tokens = sum(p.tokens for p in prompts) * req.n
        if req.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(answers.events(events, meta), headers=headers,
                                     media_type="text/event-stream")  # fmt: skip
        watcher = asyncio.create_task(cancel_on_disconnect(request, jobs))
        try:
            choices = await answers.collect(events)
        finally:
            watcher.cancel()
        return JSONResponse({**meta, "choices": choices,
                             "usage": api.usage(prompt_tokens, answers.tokens)})  # fmt: skip

    async def suggest(self, req: api.CompletionRequest, prompts) -> Response:
        """A word completer at temperature 0: the n likeliest distinct words per prefix."""
        model, task = self.loaded.model, self.task
        async with self.searching:
            found = [await asyncio.to_thread(likeliest_words, model, task, p.text, req.n)
                     for p in prompts]  # fmt: skip
        choices, letters = [], 0
        for p_index, result in enumerate(found):
            for k, s in enumerate(result.words):
                letters += len(s.letters)
                choices.append(api.choice(p_index * req.n + k, s.word[len(result.prefix) :],
                                          "stop", probability=s.probability))  # fmt: skip
        meta = api.completion_meta(self.name)
        if not req.stream:
            usage = api.usage(sum(p.tokens for p in prompts), letters)
            return JSONResponse({**meta, "choices": choices, "usage": usage})
        chunks = [api.sse({**meta, "choices": [c]}) for c in choices] + [api.sse("[DONE]")]
        return StreamingResponse(iter(chunks), media_type="text/event-stream")

    async def models(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
        except api.ApiError as e:
            return e.response()
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
            api.check_model({"model": request.path_params["model"]}, self.name)
        except api.ApiError as e:
            return e.response()
        return JSONResponse(self.model_card())

    def model_card(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "tinylm",
            "parameters": self.parameters,
            "kind": self.task.kind,
            "context_length": self.loaded.cfg.model.context_length,
            "max_tokens_limit": self.limits.max_tokens,
        }

    async def health(self, request: Request) -> Response:
        if not self.worker.alive:
            return JSONResponse({"status": "error", "detail": "the engine has stopped"}, 503)
        return JSONResponse({"status": "ok", "model": self.name, **self.worker.stats()})

    async def playground(self, request: Request) -> Response:
        page = (resources.files("tinylm") / "static" / "playground.html").read_text()
        return HTMLResponse(page)


class Answers:
    """Turns the engine's events for one request's jobs into choices: text through the task's
    reader and the stop strings, a finish reason, and the tokens counted."""

    def __init__(self, task, jobs, stops):
        self.readers = [task.reader() for _ in jobs]
        self.filters = [api.StopFilter(stops) for _ in jobs]
        self.jobs, self.tokens = jobs, 0

    def take(self, index: int, step) -> tuple[str, str | None, dict]:
        """(new text, finish reason or None, extra fields) for one event."""
        stop = self.filters[index]
        if step.token is None:
            extra = {"error": step.error} if step.error else {}
            return stop.flush(), step.finish, extra
        self.tokens += 1
        text = stop.push(self.readers[index].add(step.token))
        if stop.stopped:
            self.jobs[index].cancelled.set()  # a stop string: the engine can let it go
            return text, "stop", {}
        return text, None, {}

    async def collect(self, events: asyncio.Queue) -> list[dict]:
        texts, done = [""] * len(self.jobs), {}
        while len(done) < len(self.jobs):
            index, step = await events.get()
            if index in done:
                continue
            text, finish, extra = self.take(index, step)
            texts[index] += text
            if finish is not None:
                done[index] = (finish, extra)
        choices = []
        for i, text in enumerate(texts):
            finish, extra = done[i]
            choices.append(api.choice(i, text, finish, **extra))
        return choices

    async def events(self, events: asyncio.Queue, meta: dict):
        """Server-sent events, one chunk per piece of text, then `data: [DONE]`; a job that
        fails sends an error event and a last chunk with finish_reason "error"."""
        done = set()
        try:
            while len(done) < len(self.jobs):
                index, step = await events.get()
                if index in done:
                    continue
                text, finish, extra = self.take(index, step)
                if finish is not None:
                    done.add(index)
                if extra.get("error"):
                    yield api.sse({"error": {"message": extra["error"], "type": "server_error",
                                             "param": None, "code": None}})  # fmt: skip
                if text or finish is not None:
                    yield api.sse({**meta, "choices": [api.choice(index, text, finish)]})
            yield api.sse("[DONE]")
        finally:  # the client went away (or all is done): free the rows now
            for job in self.jobs:
                job.cancelled.set()


def tell(loop, events: asyncio.Queue, index: int):
    """A job's emit: hand its events from the worker thread to the request's coroutine."""
    return lambda step: loop.call_soon_threadsafe(events.put_nowait, (index, step))


async def cancel_on_disconnect(request: Request, jobs) -> None:
    """A client that disconnects before its (non-streamed) answer frees its rows."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancelled.set()


async def read_body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise api.ApiError(415, f"Send the request as application/json, not {ctype or 'no content type'}.")  # fmt: skip
    declared = request.headers.get("content-length")
    too_big = api.ApiError(413, f"The request body is larger than {limit} bytes.")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise too_big
    return bytes(data)


def create_app(run_path: Path, limits: api.Limits | None = None, api_key: str | None = None,
               *, device: str = "auto", name: str | None = None, loopback_only: bool = True,
               allow_origins: tuple[str, ...] = ()) -> Starlette:  # fmt: skip
    server = Server(run_path, limits or api.Limits(), api_key, device, name)

    async def not_found(request, exc):
        return api.ApiError(404, f"No route {request.method} {request.url.path}.").response()

    async def method_not_allowed(request, exc):
        return api.ApiError(405, f"{request.method} is not allowed on {request.url.path}.").response()  # fmt: skip

    async def server_error(request, exc):
        return api.ApiError(500, "Internal error; the server log has the details.").response()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.worker.stop()

    app = Starlette(
        routes=[
            Route("/", server.playground, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/models/{model:path}", server.model, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.add_middleware(Guard, loopback_only=loopback_only, allow_origins=allow_origins)
    app.state.server = server
    return app
