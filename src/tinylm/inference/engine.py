"""The one decoding engine: every command that generates and the server go through it.

Jobs are sequences to continue. `add` starts jobs (their prompts read in one batched
prefill), `step` gives every active job one new token (one batched decode step), so jobs of
different lengths advance together and a new job can join between any two steps: the server
runs it with continuous batching from a thread (serve/worker.py), the commands run it to
the end with `generate`. What a step produced comes back as `Step` events.

How a model runs a batch of jobs is its own (`model.backend`, models/__init__.py): the decoder
keeps a key/value cache with one row per job and slides its window when the context fills;
the encoder-decoder computes its encoder states once per job. The engine knows only token ids,
as nanochat's does. A failure inside one job (its sampling, or its part of a batched forward)
ends that job alone with finish "error".
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from tinylm.inference.logprobs import log_probs
from tinylm.inference.sampling import Sampling, choose


@dataclass(eq=False)
class Job:
    prompt: list[int]  # what the decoder reads first: the start token and the prompt
    max_tokens: int  # new tokens at most (a stop token is not counted)
    sampling: Sampling
    generator: torch.Generator
    stop_ids: tuple[int, ...] = ()
    banned: tuple[int, ...] = ()
    logprobs: int | None = None  # report each token's log-probability, and this many others
    emit: Callable[[Step], None] | None = None  # the server's way to hear about this job
    cancelled: threading.Event = field(default_factory=threading.Event)
    # the engine's bookkeeping
    history: list[int] = field(default_factory=list)  # prompt, then generated tokens
    produced: int = 0
    logits: torch.Tensor | None = None  # (vocabulary,) for the next token
    row: int = -1
    start: int = 0  # decoder: where the window begins in `history`
    length: int = 0  # decoder: tokens of the window in the cache


@dataclass
class Step:
    """One event: a new token (finish None), or the end of a job (token None)."""

    job: Job
    token: int | None = None
    logprob: float | None = None  # of the token (or of the stop token that ended the job)
    top: list[tuple[int, float]] | None = None  # the likeliest tokens and their log-probs
    finish: str | None = None  # stop | length | error | cancelled
    error: str | None = None
    stop_token: int | None = None  # finish "stop": the stop token sampled (logprob, top: its)


class Engine:
    def __init__(self, model, rows: int = 1, compile: bool = False):
        self.model = model
        self.backend = model.backend(rows, compile)
        self.active: list[Job] = []

    def room(self) -> int:
        """How many more jobs can start now."""
        return self.backend.room()

    @torch.no_grad()
    def add(self, jobs: list[Job]) -> list[Step]:
        """Start jobs (at most `room()`): read their prompts in one batch."""
        events = []
        for job in jobs:
            job.history = list(job.prompt)
            if job.max_tokens <= 0:  # nothing to generate
                events.append(Step(job, finish="length"))
        started = [job for job in jobs if job.max_tokens > 0]
        for job, logits, error in self._each(started, self.backend.start):
            if error is None:
                job.logits = logits
                self.active.append(job)
            else:
                events.append(self._end(job, "error", error))
        return events

    @torch.no_grad()
    def step(self) -> list[Step]:
        """One new token for every active job (a cancelled job just ends)."""
        events, going = [], []
        for job in list(self.active):
            if job.cancelled.is_set():
                events.append(self._end(job, "cancelled"))
                continue
            try:
                step = self._sample(job)
            except Exception as e:  # this job alone fails
                events.append(self._end(job, "error", _describe(e)))
                continue
            if step.token in job.stop_ids:
                end = self._end(job, "stop", logprob=step.logprob)
                end.top, end.stop_token = step.top, step.token
                events.append(end)
                continue
            job.history.append(step.token)
            job.produced += 1
            events.append(step)
            if job.produced >= job.max_tokens:
                events.append(self._end(job, "length"))
            else:
                going.append(job)
        for job, logits, error in self._each(going, self.backend.advance):
            if error is None:
                job.logits = logits
            else:
                events.append(self._end(job, "error", error))
        return events

    def generate(self, jobs: Iterable[Job]) -> Iterator[Step]:
        """Run jobs to their end, as many at once as there are rows (the commands' way)."""
        waiting = deque(jobs)
        while waiting or self.active:
            starting = [waiting.popleft() for _ in range(min(self.room(), len(waiting)))]
            yield from self.add(starting)
            yield from self.step()

    def abort(self, reason: str) -> list[Step]:
        """End every active job with an error (the server shutting down)."""
        return [self._end(job, "error", reason) for job in list(self.active)]

    # --- helpers
    def _sample(self, job: Job) -> Step:
        banned = torch.tensor(job.banned, dtype=torch.long) if job.banned else None
        token = choose(job.logits, job.sampling, job.generator, banned)
        if job.logprobs is None:
            return Step(job, token)
        logp = log_probs(job.logits)
        top = None
        if job.logprobs:
            values, ids = logp.topk(min(job.logprobs, logp.numel()))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return Step(job, token, float(logp[token]), top)

    def _each(self, jobs: list[Job], run) -> Iterator[tuple[Job, torch.Tensor | None, str | None]]:
        """run(jobs) in one batch; if the batch fails, each job alone, so that only the job
        at fault fails."""
        if not jobs:
            return
        try:
            yield from ((j, row, None) for j, row in zip(jobs, run(jobs), strict=True))
            return
        except Exception:  # find the job at fault below
            if len(jobs) == 1:
                traceback.print_exc()
                yield jobs[0], None, "the model failed on this request"
                return
        for job in jobs:
            yield from self._each([job], run)

    def _end(self, job: Job, finish: str, error: str | None = None, logprob=None) -> Step:
        if job in self.active:
            self.active.remove(job)
        self.backend.release(job)
        job.logits = None
        return Step(job, finish=finish, error=error, logprob=logprob)


def _describe(e: Exception) -> str:
    traceback.print_exc()
    return f"{type(e).__name__}: {e}"
