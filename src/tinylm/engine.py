"""Many generation requests on one model: a bounded queue and a worker that serves them fairly.

The worker thread owns the model. Each round it gives every active request one new token, so
a long answer never holds up a short one and a new request starts within a round. For the
decoder the round is one batched step: every active request has a row of one shared key/value
cache and its own position in it, so 64 requests cost about what one does. Up to `max_active`
requests are active at once; up to `max_queue` more wait; beyond that `submit` raises
QueueFull and the server answers 503. A cancelled request (its client went away) is dropped at
the start of the next round, which frees its row.
"""

from __future__ import annotations

import collections
import heapq
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tinylm.generate import sample_next
from tinylm.models import Seq2Seq


@dataclass
class Job:
    prompt: list[int]  # model input: start token + prompt tokens (seq2seq: encoder input)
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    stop_id: int | None
    banned: tuple[int, ...]
    generator: torch.Generator
    emit: Callable[
        [int | None, str | None], None
    ]  # (token, None) per token; (None, reason) at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    slot: int = -1  # row of the shared cache
    length: int = 0  # tokens of this request in its row
    logits: torch.Tensor | None = None  # for the next token
    history: list[int] = field(default_factory=list)  # prompt and answer, to re-read a full context


class QueueFull(Exception):
    pass


class Engine:
    def __init__(self, model, max_active: int = 64, max_queue: int = 256):
        self.model, self.max_active, self.max_queue = model, max_active, max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.free = list(range(max_active))  # a heap: low rows first keeps the batch short
        self.cache = None if isinstance(model, Seq2Seq) else model.new_cache(max_active)
        self.thread = threading.Thread(target=self._run, name="tinylm-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.lock.notify()

    def stats(self) -> dict:
        with self.lock:
            return {"active": len(self.active), "waiting": len(self.waiting)}

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=5)

    # --- the worker
    def _admit(self) -> None:
        """Drop cancelled jobs and move waiting ones into free rows (holding the lock)."""
        for job in self.active:
            if job.cancelled.is_set():
                heapq.heappush(self.free, job.slot)
        self.active = [j for j in self.active if not j.cancelled.is_set()]
        self.waiting = collections.deque(j for j in self.waiting if not j.cancelled.is_set())
        while self.waiting and self.free:
            job = self.waiting.popleft()
            job.slot = heapq.heappop(self.free)
            self.active.append(job)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                self._admit()
                while not self.active and not self.stopping:
                    self.lock.wait()
                    self._admit()
                if self.stopping:
                    for job in [*self.active, *self.waiting]:
                        job.emit(None, "shutdown")
                    return
                jobs = list(self.active)
            try:
                finished = self._round(jobs)
            except Exception as e:  # never let a failure take the worker down
                traceback.print_exc()
                for job in jobs:
                    job.emit(None, f"error: {e}")
                finished = jobs
            if finished:
                with self.lock:
                    for job in finished:
                        heapq.heappush(self.free, job.slot)
                    self.active = [j for j in self.active if j not in finished]

    def _round(self, jobs: list[Job]) -> list[Job]:
        """One new token for every job; returns those that finished."""
        if self.cache is None:
            return [job for job in jobs if self._seq2seq(job)]
        finished, running = [], []
        for job in jobs:
            if job.cancelled.is_set():
                continue
            if job.logits is None:
                self._read(job, job.prompt)
            token = int(sample_next(job.logits, job.temperature, job.top_k, job.top_p, job.banned,
                                    job.generator)[0])  # fmt: skip
            if token == job.stop_id:
                job.emit(None, "stop")
                finished.append(job)
                continue
            job.emit(token, None)
            job.produced += 1
            job.history.append(token)
            if job.produced >= job.max_tokens:
                job.emit(None, "length")
                finished.append(job)
            elif job.length >= self.model.cfg.context_length:  # full: re-read the latest half
                self._read(job, job.history[-(self.model.cfg.context_length // 2) :])
            else:
                running.append(job)
        if running:
            rows = max(job.slot for job in running) + 1
            tokens = torch.zeros((rows, 1), dtype=torch.long, device=self.cache.k[0].device)
            positions = torch.zeros(rows, dtype=torch.long, device=tokens.device)
            for job in running:
                tokens[job.slot, 0] = job.history[-1]
                positions[job.slot] = job.length
            logits = self.model(tokens, cache=self.cache.rows(0, rows), positions=positions).logits
            for job in running:
                job.logits = logits[job.slot : job.slot + 1, -1]
                job.length += 1
        return finished

    def _read(self, job: Job, tokens: list[int]) -> None:
        """Read `tokens` into the job's row of the cache (its prompt, or a slid window)."""
        tokens = tokens[-self.model.cfg.context_length :]
        if not job.history:
            job.history = list(tokens)
        x = torch.tensor([tokens], device=self.cache.k[0].device)
        job.logits = self.model(x, cache=self.cache.rows(job.slot, job.slot + 1)).logits[:, -1]
        job.length = len(tokens)

    def _seq2seq(self, job: Job) -> bool:
        """transformers generates the whole word at once; emit it token by token."""
        enc = torch.tensor([job.prompt])
        row = self.model.complete(enc, torch.ones_like(enc), job.max_tokens, job.temperature,
                                  job.banned, job.generator)[0].tolist()  # fmt: skip
        for token in row:
            if token == job.stop_id:
                job.emit(None, "stop")
                return True
            job.emit(token, None)
        job.emit(None, "length")
        return True
