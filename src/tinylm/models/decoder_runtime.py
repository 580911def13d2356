"""How a decoder generates: the engine's backend (one key/value cache row per job, the window
policy, and the decode step), and the search backend of a decoder without a causal mask (the
causal decoder's is its tree, decoder_tree.py).

Every backend of the engine takes jobs (inference/engine.py), whose `history` holds the
decoder's tokens so far, and returns the next-token logits of each job as one CPU fp32 tensor
(jobs, vocabulary): `start` for jobs just admitted (their prompts), `advance` after the engine
appended one new token to each job's history. A search backend returns the next-token logits
after prompt + continuation for a batch of continuations.
"""

from __future__ import annotations

import functools
import heapq
import math

import torch

from tinylm.models.cache import CacheSlots
from tinylm.models.fused import FusedWeights, fused_weights, layer_mlp, layer_qkv, next_logits


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
        self.weights = fused_weights(model, "halves")
        self.free = list(range(rows))  # a heap: low rows first keeps decode batches short
        self.jobs: dict[int, object] = {}  # row -> job
        self.reread_always = not model.cfg.causal
        self.device = model.rope_cos.device
        self.decode = compiled_decode_step(self.device.type) if compile else decode_step

    def room(self) -> int:
        return len(self.free)

    def start(self, jobs) -> torch.Tensor:
        self.weights = fused_weights(self.model, "halves")  # (again if the weights changed)
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
        if not slide:  # (the usual step: no bookkeeping)
            return self._step(step)
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
        x = torch.tensor(tokens, device=self.device)
        kv_len = self.context if self.compiled else max(start) + 1
        at = torch.tensor(start, device=self.device)
        logits = self.decode(self.weights, self.cache.k, self.cache.v, x, at, kv_len)
        for job in jobs:
            job.length += 1
        rows = [job.row for job in jobs]
        if rows != list(range(len(logits))):  # (a gather, but none where every row decodes)
            logits = logits.index_select(0, torch.tensor(rows, device=self.device))
        return logits.float().cpu()


def decode_step(w: FusedWeights, keys, values, tokens, start, kv_len: int) -> torch.Tensor:
    """One decode step, the decoder restated on its fused weights: row b of the caches (keys
    and values per layer, (rows, heads, context, head_dim)) reads tokens[b] at position
    start[b], writes its key and value there and attends to its positions up to it (of the
    first `kv_len`). Next-token logits (rows, vocabulary)."""
    n, dev = tokens.shape[0], tokens.device
    x = w.embed.index_select(0, tokens)
    d = x.shape[1]
    heads, hd = w.heads, d // w.heads
    rot = w.rot.index_select(0, start)[:, None]  # (rows, 1, 2, head_dim / 2)
    rows = torch.arange(n, device=dev)
    hidden = torch.arange(kv_len, device=dev) > start[:, None]
    bias = torch.zeros(n, 1, kv_len, device=dev).masked_fill_(hidden[:, None], -math.inf)
    for i, (k_cache, v_cache) in enumerate(zip(keys, values, strict=True)):
        qk, v_new = layer_qkv(w, i, x, tokens, rot)
        k_cache[rows, :, start] = qk[:, heads:]
        v_cache[rows, :, start] = v_new.view(n, heads, hd)
        k, v = k_cache[:n, :, :kv_len], v_cache[:n, :, :kv_len]
        scores = (k @ qk[:, :heads, :, None]).squeeze(-1) + bias  # (rows, heads, kv_len)
        x = torch.addmm(x, (scores.softmax(-1)[:, :, None] @ v).view(n, d), w.o_t[i])
        x = layer_mlp(w, i, x)
    return next_logits(w, x)


@functools.cache
def compiled_decode_step(device_type: str):
    """`decode_step` compiled once a process, for one shape (every row, the whole context).
    On a CPU with inductor's C++ wrapper: a batch-1 step of `pile-bpe` then spends ~0.1 ms less
    in Python (bench/llamacpp.py)."""
    options = {"cpp_wrapper": device_type == "cpu"}
    return torch.compile(decode_step, dynamic=False, options=options)


class Rereading:
    """The search for a decoder without a causal mask: every position sees the whole word, so
    each continuation is read again from its start."""

    def __init__(self, model, prompts: list[list[int]]):
        self.model, self.prompts = model, prompts
        self.device = model.rope_cos.device

    def __call__(self, items):
        return [(self._read(self.prompts[i], nodes), [-1] * len(nodes)) for i, nodes in items]

    def _read(self, prompt: list[int], nodes) -> torch.Tensor:
        rows = [
            self.model.read(torch.tensor([prompt + list(ids)], device=self.device))
            for ids, _ in nodes
        ]
        return torch.cat([r[:, -1] for r in rows]).float().cpu()
