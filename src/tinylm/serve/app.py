"""`tinylm serve RUN`: the routes, and the wiring of requests to the engine's worker thread.

    GET  /                    the playground (prompt, sliders, streamed answer; suggestions
                              as you type for a word completer)
    GET  /health              {"status": "ok", "active": n, "waiting": m}; 503 if the engine died
    GET  /v1/models           the one model this server holds (and /v1/models/{id})
    POST /v1/completions      OpenAI's completions (echo, logprobs, token-id prompts too)
    POST /v1/chat/completions OpenAI's chat completions over a transcript (chat.py)

The server holds one API model (tinylm.Model) and asks its task what a request may do.
Requests are parsed in requests.py, answers shaped in responses.py (log-probabilities in
logprobs.py) and made from the engine's events in answers.py, who may call is checked in
guard.py, and what a connection may hold in connections.py. Generation runs in one worker
thread (worker.py) over the one engine every command uses; everything else that would hold
up the event loop (prompt scoring through inference/logprobs.py, the path `tinylm eval`
takes; word searches; shaping a large answer) runs in one thread beside it, the event loop's
executor (`asyncio.to_thread`), set in `lifespan`. Built on Starlette + uvicorn
(bench/frameworks.py has the measurement behind that choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinylm.api import load
from tinylm.errors import UserError
from tinylm.inference import Engine, Sampling, Step
from tinylm.models import param_breakdown
from tinylm.results import Completions
from tinylm.serve import requests as api
from tinylm.serve import responses
from tinylm.serve.answers import Answers
from tinylm.serve.chat import Chat
from tinylm.serve.connections import read_body
from tinylm.serve.guard import Guard, check_key
from tinylm.serve.logprobs import Names, echo_prompts
from tinylm.serve.worker import QueueFull, Worker


class Server:
    """The loaded run, its worker, and the request handlers."""

    def __init__(
        self,
        run_path: Path,
        limits: api.Limits,
        api_key=None,
        device="auto",
        name=None,
        compile=False,
    ):
        self.model = load(run_path, device, compile)
        self.task, self.limits, self.api_key = self.model.task, limits, api_key
        self.name = name or self.model.run.path.resolve().name
        self.parameters = param_breakdown(self.model.net)["total"]
        self.created = int(time.time())
        engine = Engine(self.model.net, limits.max_active, self.model.compiled)
        if self.model.compiled:
            warm_up(self.model, engine)
        self.worker = Worker(engine, limits.max_queue)
        self.searches = Searches(self.model)
        self.scoring = asyncio.Lock()  # one prompt scoring (echo) at a time beside the engine
        self.names = Names(self.model.tokenizer)
        self.chat = Chat(self.model.run.path, self.task)

    async def completions(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
            body = api.parse_json(await read_body(request, self.limits))
            req = api.parse_completion(body, self.name, self.limits)
            if req.echo:
                asked(self.task.text_only, "'echo' is served", "echo")
            if req.logprobs is not None:
                asked(self.task.text_only, "'logprobs' is served", "logprobs")
            prompts = [read_prompt(self.task, p) for p in req.prompts]
            if self.task.searches(req.sampling):
                return await self.suggest(req, prompts)
            echoes = await echo_prompts(self.model, prompts, req, self.scoring)
            shape = responses.CompletionShape(self.name, req, self.names, echoes)
            return await self.generate(request, req, prompts, shape)
        except api.ApiError as e:
            return e.response()

    async def chat_completions(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
            body = api.parse_json(await read_body(request, self.limits))
            req = api.parse_chat(body, self.name, self.limits)
            asked(self.task.text_only, "Chat is served", "messages")
            prompt = self.chat.prompt(req.messages)
            req.stop = [*req.stop, *self.chat.stops]
            shape = responses.ChatShape(
                self.name, req, self.names, self.model.tokenizer, self.task.stop_ids
            )
            return await self.generate(request, req, [prompt], shape)
        except api.ApiError as e:
            return e.response()

    async def generate(self, request: Request, req: api.Request, prompts, shape) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        default = min(self.task.default_max_tokens, self.limits.max_tokens)
        limit = default if req.max_tokens is None else req.max_tokens
        jobs = []
        for prompt in prompts:
            for _ in range(req.n):
                seed = None if req.seed is None else req.seed + len(jobs)
                job = self.model.job(
                    prompt, req.sampling, max_tokens=limit, seed=seed, logprobs=req.logprobs
                )
                job.emit = tell(loop, events, len(jobs))
                jobs.append(job)
        if limit == 0:  # echo only: nothing for the engine to do
            for i, job in enumerate(jobs):
                events.put_nowait((i, Step(job, finish="length")))
        else:
            try:
                self.worker.submit(jobs)
            except QueueFull:
                raise api.busy() from None
        answers = Answers(
            self.task, jobs, req.stop, logprobs=req.logprobs is not None, lstrip=shape.lstrip
        )
        prompt_tokens = sum(p.tokens for p in prompts) * req.n
        if req.stream:
            usage = (
                (lambda: responses.usage(prompt_tokens, answers.tokens))
                if req.include_usage
                else None
            )
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                answers.stream(events, shape, usage),
                headers=headers,
                media_type="text/event-stream",
            )
        watcher = asyncio.create_task(cancel_on_disconnect(request, jobs))
        try:
            results = await answers.collect(events)
        finally:
            watcher.cancel()
        return await rendered(shape, results, responses.usage(prompt_tokens, answers.tokens))

    async def suggest(self, req: api.CompletionRequest, prompts) -> Response:
        """A word completer at temperature 0: the n likeliest distinct words per prefix."""
        found = await self.searches.likeliest([p.text for p in prompts], req.n)
        body = responses.word_lists(found, req.n, self.name, sum(p.tokens for p in prompts))
        if not req.stream:
            return JSONResponse(body)
        meta = {k: v for k, v in body.items() if k not in ("choices", "usage")}
        chunks = [responses.sse({**meta, "choices": [c]}) for c in body["choices"]]
        chunks.append(responses.sse("[DONE]"))
        return StreamingResponse(iter(chunks), media_type="text/event-stream")

    async def models(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
        except api.ApiError as e:
            return e.response()
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model_by_id(self, request: Request) -> Response:
        try:
            check_key(request, self.api_key)
            api.check_model({"model": request.path_params["model"]}, self.name)
        except api.ApiError as e:
            return e.response()
        return JSONResponse(self.model_card())

    def model_card(self) -> dict:
        context = self.model.cfg.model.context_length
        return responses.model_card(
            self.name,
            self.created,
            self.parameters,
            self.task.name,
            context,
            self.limits.max_tokens,
        )

    async def health(self, request: Request) -> Response:
        if not self.worker.alive:
            return JSONResponse({"status": "error", "detail": "the engine has stopped"}, 503)
        return JSONResponse({"status": "ok", "model": self.name, **self.worker.stats()})

    async def playground(self, request: Request) -> Response:
        page = (resources.files("tinylm") / "static" / "playground.html").read_text()
        return HTMLResponse(page)


class Searches:
    """Word searches, one at a time beside the engine, each taking every prefix asked for
    while the one before ran: a search of several prefixes side by side costs about what one
    costs (models/decoder_tree.py), so typists who type at once wait less. A search runs in a
    task of its own, so a client that leaves does not stop the others' answers."""

    def __init__(self, model):
        self.model = model
        self.waiting: list[tuple[list[str], int, asyncio.Future]] = []
        self.running: asyncio.Task | None = None

    async def likeliest(self, prefixes: list[str], n: int):
        """The n likeliest words of each prefix (tinylm.Model.complete)."""
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((prefixes, n, answer))
        if self.running is None or self.running.done():
            self.running = asyncio.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        while self.waiting:
            asked, self.waiting = self.waiting, []
            prefixes = [p for ps, _, _ in asked for p in ps]
            top = max(n for _, n, _ in asked)  # the first n of an exact top: the top n
            try:
                found = await asyncio.to_thread(self.model.complete, prefixes, top)
            except Exception as e:  # each request answers it (an error 500, as alone)
                for *_, answer in asked:
                    if not answer.done():
                        answer.set_exception(e)
                continue
            at = 0
            for ps, n, answer in asked:
                lists = [
                    dataclasses.replace(w, words=w.words[:n]) for w in found[at : at + len(ps)]
                ]
                at += len(ps)
                if not answer.done():  # (not a client that left)
                    answer.set_result(Completions(lists))


async def rendered(shape, results, usage) -> JSONResponse:
    """A whole answer, shaped and encoded in a thread: with log-probabilities it runs to
    megabytes, which would hold up every stream while the event loop wrote it."""
    return await asyncio.to_thread(lambda: JSONResponse(shape.body(results, usage)))


def read_prompt(task, given):
    """A prompt as text (the task adds the start token) or as token ids (read as given)."""
    read = task.prompt if isinstance(given, str) else task.prompt_ids
    return asked(read, given, "prompt")


def asked(call, argument, param: str):
    """call(argument), a UserError answered as a 400 naming `param`."""
    try:
        return call(argument)
    except UserError as e:
        raise api.ApiError(400, str(e), param) from None


def tell(loop, events: asyncio.Queue, index: int):
    """A job's emit: hand its events from the worker thread to the request's coroutine."""
    return lambda step: loop.call_soon_threadsafe(events.put_nowait, (index, step))


async def cancel_on_disconnect(request: Request, jobs) -> None:
    """A client that disconnects before its (non-streamed) answer frees its rows."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancelled.set()


def warm_up(model, engine: Engine) -> None:
    """Compile before the first request instead of during it: a two-token generation through
    the engine (its decode step has one shape, so it compiles once), and for a word completer
    searches from prefixes of two lengths (the search compiles for shapes that vary)."""
    print("tinylm: compiling before serving (about 10-30 s)...", file=sys.stderr)
    with torch.no_grad():  # as the worker thread runs: a graph compiled with grads would not do
        for _ in engine.generate([model.job("", Sampling(0.0), max_tokens=2)]):
            pass
        model.task.warm_up(model)


def create_app(
    run_path: Path,
    limits: api.Limits | None = None,
    api_key: str | None = None,
    *,
    device: str = "auto",
    name: str | None = None,
    loopback_only: bool = True,
    allow_origins: tuple[str, ...] = (),
    compile: bool = False,
) -> Starlette:
    server = Server(run_path, limits or api.Limits(), api_key, device, name, compile)

    async def not_found(request, exc):
        return api.ApiError(404, f"No route {request.method} {request.url.path}.").response()

    async def method_not_allowed(request, exc):
        return api.ApiError(
            405, f"{request.method} is not allowed on {request.url.path}."
        ).response()

    async def server_error(request, exc):
        return api.ApiError(500, "Internal error; the server log has the details.").response()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # One thread for the work aside from the engine, not asyncio's pool of up to 6: glibc
        # gives each thread that allocates a malloc arena of its own, which keeps what was
        # freed there. bench/serve.py's mix: peak memory 423 MB against 659, requests/s alike.
        aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinylm-aside")
        asyncio.get_running_loop().set_default_executor(aside)
        yield
        server.worker.stop()

    app = Starlette(
        routes=[
            Route("/", server.playground, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/models/{model:path}", server.model_by_id, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.add_middleware(Guard, loopback_only=loopback_only, allow_origins=allow_origins)
    app.state.server = server
    return app
