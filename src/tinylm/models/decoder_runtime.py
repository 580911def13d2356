"""How a decoder generates and searches: the engine's backend (one key/value cache row per
job, and the window policy) and the word search's tree of cached continuations.

Every backend of the engine takes jobs (inference/engine.py), whose `history` holds the
decoder's tokens so far, and returns the next-token logits of each job as one CPU fp32 tensor
(jobs, vocabulary): `start` for jobs just admitted (their prompts), `advance` after the engine
appended one new token to each job's history. A search backend (`CacheTree`, `Rereading`)
returns the next-token logits after prompt + continuation for a batch of continuations.
"""

from __future__ import annotations

import heapq
import weakref

import torch

from tinylm.models.cache import CacheSlots


class CachedDecoder:
    """A decoder-only model with one key/value cache of `rows` rows, one per job.

    The window policy: a job's model input is its history from `job.start` on. A prompt
    longer than the context keeps its last `context` tokens. When a new token would make the
    window longer than the context, the window slides: it keeps the last `context // 2`
    tokens and reads them again (a prefill), because rotary positions count from the start of
    the window. So once a text outgrows the context the model sees between half a context
    and a full context of it. A model trained without a causal mask (`model.causal=false`)
    cannot reuse its cache (earlier positions would change as tokens arrive): it re-reads its
    whole window at every step, as the notebook did.

    Decode steps run rows 0..R-1 of the cache in one batch, R = 1 + the highest row that
    decodes (compiled: R = every row, over the whole context, so that a step always has one
    shape and compiles once). A row in that range that does not decode this step (a free row,
    or a job that was just prefilled) still computes one position: the position its job will
    write next (0 for a free row). Its output is thrown away and whatever it wrote there is overwritten
    before anything reads it, because every row writes position p before it reads it.
    """

    def __init__(self, model, rows: int, compile: bool = False):
        self.model, self.context = model, model.cfg.context_length
        self.cache = model.new_cache(rows)
        self.compiled = compile
        self.decode = torch.compile(decode_step, dynamic=False) if compile else decode_step
        self.free = list(range(rows))  # a heap: low rows first keeps decode batches short
        self.jobs: dict[int, object] = {}  # row -> job
        self.reread_always = not model.cfg.causal
        self.device = model.rope_cos.device

    def room(self) -> int:
        return len(self.free)

    def start(self, jobs) -> torch.Tensor:
        for job in jobs:
            if self.jobs.get(job.row) is not job:  # (a retry keeps its row)
                job.row = heapq.heappop(self.free)
                self.jobs[job.row] = job
        return self._read(jobs, [max(0, len(job.history) - self.context) for job in jobs])

    def release(self, job) -> None:
        if self.jobs.pop(job.row, None) is not None:
            heapq.heappush(self.free, job.row)

    def advance(self, jobs) -> torch.Tensor:
        slide, starts, step = [], [], []
        for job in jobs:
            full = len(job.history) - job.start > self.context
            if full or self.reread_always:
                slide.append(job)
                starts.append(len(job.history) - self.context // 2 if full else job.start)
            else:
                step.append(job)
        logits = {}
        if slide:
            logits.update(zip(map(id, slide), self._read(slide, starts), strict=True))
        if step:
            logits.update(zip(map(id, step), self._step(step), strict=True))
        return torch.stack([logits[id(job)] for job in jobs])

    def _read(self, jobs, starts: list[int]) -> torch.Tensor:
        """Prefill: each job's window (its history from `start`) into its row, right-padded to
        one batch. The jobs' state changes only once the forward succeeded."""
        windows = [job.history[start:] for job, start in zip(jobs, starts, strict=True)]
        width = max(map(len, windows))
        x = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, w in enumerate(windows):
            x[i, : len(w)] = torch.tensor(w)
        rows = torch.tensor([job.row for job in jobs], device=self.device)
        slots = CacheSlots(
            torch.zeros(len(jobs), dtype=torch.long, device=self.device), width, rows
        )
        logits = self.model(x.to(self.device), cache=self.cache, slots=slots).logits
        last = torch.tensor([len(w) - 1 for w in windows], device=self.device)
        for job, start, w in zip(jobs, starts, windows, strict=True):
            job.start, job.length = start, len(w)
        return logits[torch.arange(len(jobs), device=self.device), last].float().cpu()

    def _step(self, jobs) -> torch.Tensor:
        """Decode: one new token for each job, at its own position, in one batch."""
        n = self.cache.rows if self.compiled else 1 + max(job.row for job in jobs)
        tokens, start = [0] * n, [0] * n
        for row, job in self.jobs.items():
            if row < n:  # the position it writes next (a job about to slide: any of its own)
                start[row] = min(job.length, self.context - 1)
        for job in jobs:
            tokens[job.row], start[job.row] = job.history[-1], job.length
        x = torch.tensor(tokens, device=self.device)[:, None]
        kv_len = self.context if self.compiled else max(start) + 1
        cache = self.cache if self.compiled else self.cache.span(0, n)
        logits = self.decode(self.model, x, cache, torch.tensor(start, device=self.device), kv_len)
        for job in jobs:
            job.length += 1
        rows = torch.tensor([job.row for job in jobs], device=self.device)
        return logits[rows].float().cpu()


def decode_step(model, x, cache, start: torch.Tensor, kv_len: int) -> torch.Tensor:
    """One decode step: each row reads its one token at its own position in `start`."""
    return model(x, cache=cache, slots=CacheSlots(start, kv_len)).logits[:, -1]


class Rereading:
    """The search for a decoder without a causal mask: every position sees the whole word, so
    each continuation is read again from its start."""

    def __init__(self, model, prompt: list[int]):
        self.model, self.prompt = model, prompt
        self.device = model.rope_cos.device

    def __call__(self, nodes):
        rows = [
            self.model.read(torch.tensor([self.prompt + list(ids)], device=self.device))
            for ids, _ in nodes
        ]
        return torch.cat([r[:, -1] for r in rows]).float().cpu(), [-1] * len(nodes)


class CacheTree:
    """A decoder's keys and values for the whole search tree, one cache row per expanded
    continuation: the root (the empty continuation) reads the prompt into row 0, and every
    other continuation copies its parent's row and reads its one new letter on it, instead of
    re-reading everything from its start (bench/suggest.py: top-5 p50 44 -> 23 ms).

    `compile`: the forward pass runs compiled with dynamic shapes (a wave's size and the
    cache's length vary), so its ~100 small operations become a few fused kernels: a search
    takes about two thirds of the time once compiled. A wave padded to one fixed shape was
    slower: its padding rows and the copies into the tree cost more than they saved
    (bench/README.md)."""

    def __init__(self, model, prompt: list[int], compile: bool = False):
        self.model, self.prompt = model, prompt
        self.forward = compiled_dynamic(model) if compile else model
        self.device = model.rope_cos.device
        self.cache, self.used = model.new_cache(1), 0

    def __call__(self, nodes: list[tuple[tuple[int, ...], int]]):
        """Next-token logits (CPU fp32) after prompt + ids for each (ids, parent row), and
        the row each node now owns (its children's parent row)."""
        first = self.used
        self._reserve(len(nodes))
        rows = self.cache.span(first, self.used)  # the nodes' own rows, in one block
        if first == 0:  # the root, alone in the first batch
            x, start = torch.tensor([self.prompt]), torch.zeros(1, dtype=torch.long)
        else:
            parents = torch.tensor([parent for _, parent in nodes], device=self.device)
            for mine, all_ in zip(rows.k + rows.v, self.cache.k + self.cache.v, strict=True):
                mine[:] = all_[parents]  # each node starts from its parent's row
            x = torch.tensor([[ids[-1]] for ids, _ in nodes])
            start = torch.tensor([len(self.prompt) - 1 + len(ids) for ids, _ in nodes])
        slots = CacheSlots(start.to(self.device), int(start.max()) + x.shape[1])
        logits = self.forward(x.to(self.device), cache=rows, slots=slots).logits[:, -1]
        return logits.float().cpu(), list(range(first, self.used))

    def _reserve(self, n: int) -> None:
        """Room for n rows more, doubling when full. New rows are left uninitialized (zeroing
        them costs more than the search): a row is overwritten by its parent's before anything
        reads it, so every value read descends from row 0, which starts zeroed."""
        self.used += n
        if self.used > self.cache.rows:
            for tensors in (self.cache.k, self.cache.v):
                for i, old in enumerate(tensors):
                    tensors[i] = old.new_empty((2 * self.used, *old.shape[1:]))
                    tensors[i][: self.used - n] = old[: self.used - n]


_compiled = weakref.WeakKeyDictionary()


def compiled_dynamic(model):
    """The model compiled once a process for shapes that vary (torch.compile caches the
    kernels; this keeps the one wrapper per model)."""
    if model not in _compiled:
        _compiled[model] = torch.compile(model, dynamic=True)
    return _compiled[model]
