"""From the engine's events to one request's answer, whole or streamed.

Each job's tokens go through the task's detokenizer (ids to text) and the stop strings; with
log-probabilities asked for, each token becomes an Entry (the stop token that ended a job
too: a scoring client counts on it). A shape (responses.CompletionShape or ChatShape) turns
the results into OpenAI's bodies and chunks; this module knows neither.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tinylm.serve.logprobs import Entry
from tinylm.serve.responses import sse


@dataclass
class Result:
    """A job's answer so far (or one event's part of it)."""

    text: str = ""
    finish: str | None = None
    extra: dict = field(default_factory=dict)  # {"error": message} when the job failed
    entries: list[Entry] = field(default_factory=list)


class Answers:
    def __init__(self, task, jobs, stops: list[str], *, logprobs: bool, lstrip: bool = False):
        self.readers = [task.detokenizer() for _ in jobs]
        self.filters = [StopFilter(stops) for _ in jobs]
        self.leading = [lstrip] * len(jobs)  # still dropping the reply's leading whitespace
        self.jobs, self.logprobs, self.tokens = jobs, logprobs, 0

    def take(self, index: int, step) -> Result:
        """What one event adds to job `index`'s answer."""
        stop = self.filters[index]
        if step.token is None:
            entries = []
            if self.logprobs and step.stop_token is not None:
                end = self.readers[index].length
                entries.append(Entry(step.stop_token, step.logprob, step.top or [], end))
            extra = {"error": step.error} if step.error else {}
            return Result(self._lead(index, stop.flush()), step.finish, extra, entries)
        self.tokens += 1
        piece = self.readers[index].add(step.token)
        entries = []
        if self.logprobs:
            entries.append(Entry(step.token, step.logprob, step.top or [], piece.offset))
        text = self._lead(index, stop.push(piece.text))
        if stop.stopped:
            self.jobs[index].cancelled.set()  # a stop string: the engine can let it go
            return Result(text, "stop", {}, entries)
        return Result(text, None, {}, entries)

    def _lead(self, index: int, text: str) -> str:
        if self.leading[index]:
            text = text.lstrip()
            self.leading[index] = not text
        return text

    async def collect(self, events: asyncio.Queue) -> list[Result]:
        results = [Result() for _ in self.jobs]
        left = len(self.jobs)
        while left:
            index, step = await events.get()
            result = results[index]
            if result.finish is not None:
                continue
            new = self.take(index, step)
            result.text += new.text
            result.entries += new.entries
            result.finish, result.extra = new.finish, new.extra
            left -= new.finish is not None
        return results

    async def stream(self, events: asyncio.Queue, shape, usage=None):
        """Server-sent events: the shape's opening chunks, one chunk per piece of text (or
        per token, with log-probabilities), a usage chunk if `usage` (a function) is given,
        then `data: [DONE]`. A job that fails sends an error event and a last chunk with
        finish_reason "error"."""
        done = set()
        try:
            # made in a thread: an echoed prompt with log-probabilities is megabytes of JSON
            opening = await asyncio.to_thread(
                lambda: [sse(chunk) for chunk in shape.opening(len(self.jobs))]
            )
            for chunk in opening:
                yield chunk
            while len(done) < len(self.jobs):
                index, step = await events.get()
                if index in done:
                    continue
                result = self.take(index, step)
                if result.finish is not None:
                    done.add(index)
                if result.extra.get("error"):
                    yield sse(
                        {
                            "error": {
                                "message": result.extra["error"],
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                if result.text or result.finish is not None or result.entries:
                    yield sse(shape.chunk(index, result))
            if usage is not None:
                yield sse(shape.usage_chunk(usage()))
            yield sse("[DONE]")
        finally:  # the client went away (or all is done): free the rows now
            for job in self.jobs:
                job.cancelled.set()


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
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
