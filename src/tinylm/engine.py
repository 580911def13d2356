"""Many generation requests on one model: a bounded queue and a worker that serves them fairly.

The worker thread owns the model. Each round it gives every active request one step (one new
token), so a long answer never holds up a short one and a new request starts within a round.
Up to `max_active` requests are active at once; up to `max_queue` more wait; beyond that
`submit` says no and the server answers 503. A cancelled request (its client went away) is
dropped at the start of the next round, which frees its slot.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tinylm.generate import Decoding
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
    decoding: Decoding | None = None


class QueueFull(Exception):
    pass


class Engine:
    def __init__(self, model, max_active: int = 64, max_queue: int = 256):
        self.model, self.max_active, self.max_queue = model, max_active, max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.lock = threading.Condition()
        self.stopping = False
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

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                self.active = [j for j in self.active if not j.cancelled.is_set()]
                self.waiting = collections.deque(
                    j for j in self.waiting if not j.cancelled.is_set()
                )
                while self.waiting and len(self.active) < self.max_active:
                    self.active.append(self.waiting.popleft())
                while not self.active and not self.stopping:
                    self.lock.wait()
                    while self.waiting and len(self.active) < self.max_active:
                        self.active.append(self.waiting.popleft())
                if self.stopping:
                    for job in [*self.active, *self.waiting]:
                        job.emit(None, "shutdown")
                    return
                round_jobs = list(self.active)
            finished = []
            for job in round_jobs:
                if job.cancelled.is_set():
                    continue
                try:
                    done = self._step(job)
                except Exception as e:  # never let one request take the worker down
                    job.emit(None, f"error: {e}")
                    done = True
                if done:
                    finished.append(job)
            if finished:
                with self.lock:
                    self.active = [j for j in self.active if j not in finished]

    def _step(self, job: Job) -> bool:
        """Advance `job` by one token; True when it has finished."""
        if isinstance(self.model, Seq2Seq):  # transformers generates the whole word at once
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
        if job.decoding is None:
            job.decoding = Decoding(self.model, job.prompt)
        nxt = job.decoding.sample(job.temperature, job.top_k, job.top_p, job.banned, job.generator)
        token = int(nxt[0])
        if token == job.stop_id:
            job.emit(None, "stop")
            return True
        job.emit(token, None)
        job.produced += 1
        if job.produced >= job.max_tokens:
            job.emit(None, "length")
            return True
        job.decoding.feed(nxt)
        return False
