"""The engine in a thread of its own, fed by a bounded queue: continuous batching.

Each round the worker starts waiting jobs in free rows of the engine, then takes one engine
step, so every active job gets one token per round: a long answer never holds up a short one,
and a new request starts within a round. Up to `max_queue` jobs wait; beyond that `submit`
raises QueueFull (the server answers 503). A cancelled job (its client went away) is dropped
at the next round, waiting or not. Shutdown, or a crash of the worker itself, ends every job
with an error; `alive` tells /health.
"""

from __future__ import annotations

import collections
import threading
import traceback

import torch

from tinylm.inference import Engine, Job, Step


class QueueFull(Exception):
    pass


class Worker:
    def __init__(self, engine: Engine, max_queue: int = 256):
        self.engine, self.max_queue = engine, max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="tinylm-engine", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, jobs: list[Job]) -> None:
        """Queue a request's jobs, all or none."""
        with self.lock:
            if self.stopping or not self.alive:
                raise QueueFull
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull
            self.waiting.extend(jobs)
            self.lock.notify()

    def stats(self) -> dict:
        with self.lock:
            return {"active": len(self.engine.active), "waiting": len(self.waiting)}

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=10)

    def _next_jobs(self) -> list[Job] | None:
        """Jobs to start this round (None: stop), waiting while there is nothing to do."""
        with self.lock:
            while True:
                for job in [j for j in self.waiting if j.cancelled.is_set()]:
                    self.waiting.remove(job)
                if self.stopping:
                    return None
                if self.engine.active or self.waiting:
                    break
                self.lock.wait()
            room = min(self.engine.room(), len(self.waiting))
            return [self.waiting.popleft() for _ in range(room)]

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:
            while (starting := self._next_jobs()) is not None:
                self._tell(self.engine.add(starting) + self.engine.step())
            reason = "the server is shutting down"
        except BaseException:  # the worker itself failed: say so to every job
            traceback.print_exc()
            reason = "the server's engine stopped"
        with self.lock:
            waiting, self.waiting = list(self.waiting), collections.deque()
            self.stopping = True
        events = self.engine.abort(reason)
        self._tell(events + [Step(job, finish="error", error=reason) for job in waiting])

    @staticmethod
    def _tell(events: list[Step]) -> None:
        for event in events:
            if event.job.emit is not None:
                event.job.emit(event)
