"""How the engine runs each kind of model over a batch of sequences.

Both backends take jobs (see engine.py), whose `history` holds the decoder's tokens so far,
and return the next-token logits of each job as one CPU fp32 tensor (jobs, vocabulary):
`start` for jobs just admitted (their prompts), `advance` after the engine appended one new
token to each job's history. Both work on whole batches; a job's row, window and encoder
states are kept on the job.
"""

from __future__ import annotations

import heapq

import torch

from tinylm.models import Decoder, Seq2Seq
from tinylm.models.decoder import CacheSlots


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

    def __init__(self, model: Decoder, rows: int, compile: bool = False):
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


def decode_step(model: Decoder, x, cache, start: torch.Tensor, kv_len: int) -> torch.Tensor:
    """One decode step: each row reads its one token at its own position in `start`."""
    return model(x, cache=cache, slots=CacheSlots(start, kv_len)).logits[:, -1]


class EncoderDecoder:
    """The notebook's encoder-decoder. Each job's encoder states are computed once, when it
    starts (jobs that start together in one batch); every step then runs the decoder over
    each job's whole decoder history (at most a word's length, 16 tokens, where managing a
    key/value cache per row costs more than it saves), all jobs in one padded batch."""

    def __init__(self, model: Seq2Seq, rows: int):
        self.model, self.rows, self.jobs = model, rows, set()
        self.device = next(model.parameters()).device

    def room(self) -> int:
        return self.rows - len(self.jobs)

    def start(self, jobs) -> torch.Tensor:
        inputs = [job.encoder for job in jobs]
        x, mask = _pad(inputs, self.model.hf.config.pad_token_id, self.device)
        states = self.model.hf.get_encoder()(input_ids=x, attention_mask=mask).last_hidden_state
        for i, job in enumerate(jobs):
            job.encoder_states = states[i, : len(inputs[i])]
            self.jobs.add(id(job))
        return self.advance(jobs)

    def release(self, job) -> None:
        self.jobs.discard(id(job))

    def advance(self, jobs) -> torch.Tensor:
        return next_logits_seq2seq(self.model, [j.encoder_states for j in jobs],
                                   [j.history for j in jobs])  # fmt: skip


def next_logits_seq2seq(model: Seq2Seq, states: list, histories: list[list[int]]):
    """Next-token logits (CPU fp32) after each decoder history, given its encoder states."""
    from transformers.modeling_outputs import BaseModelOutput

    device = states[0].device
    pad = model.hf.config.pad_token_id
    enc_mask = torch.zeros((len(states), max(len(s) for s in states)), dtype=torch.long)
    enc = states[0].new_zeros((len(states), enc_mask.shape[1], states[0].shape[-1]))
    for i, s in enumerate(states):
        enc[i, : len(s)] = s
        enc_mask[i, : len(s)] = 1
    dec, dec_mask = _pad(histories, pad, device)
    logits = model.hf(
        encoder_outputs=BaseModelOutput(last_hidden_state=enc),
        attention_mask=enc_mask.to(device),
        decoder_input_ids=dec,
        decoder_attention_mask=dec_mask,
    ).logits
    last = torch.tensor([len(h) - 1 for h in histories], device=device)
    return logits[torch.arange(len(histories), device=device), last].float().cpu()


def next_logits_decoder(model: Decoder, histories: list[list[int]]) -> torch.Tensor:
    """Next-token logits (CPU fp32) after each history, by one plain forward (no cache)."""
    device = model.rope_cos.device
    x, _ = _pad(histories, 0, device)
    logits = model(x).logits
    last = torch.tensor([len(h) - 1 for h in histories], device=device)
    return logits[torch.arange(len(histories), device=device), last].float().cpu()


def _pad(rows: list[list[int]], value: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(map(len, rows))
    x = torch.tensor([r + [value] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return x.to(device), mask.to(device)


def backend_for(model, rows: int, compile: bool = False):
    """The backend for this kind of model; `compile` (decoder-only runs) compiles the decode step."""
    if isinstance(model, Seq2Seq):
        return EncoderDecoder(model, rows)
    return CachedDecoder(model, rows, compile)
