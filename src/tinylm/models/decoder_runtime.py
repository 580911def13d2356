"""How a decoder generates and searches: the engine's backend (one key/value cache row per
job, and the window policy) and the word search's tree of cached continuations.

Every backend of the engine takes jobs (inference/engine.py), whose `history` holds the
decoder's tokens so far, and returns the next-token logits of each job as one CPU fp32 tensor
(jobs, vocabulary): `start` for jobs just admitted (their prompts), `advance` after the engine
appended one new token to each job's history. A search backend (`CacheTree`, `Rereading`)
returns the next-token logits after prompt + continuation for a batch of continuations.
"""

from __future__ import annotations

import functools
import heapq
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    """A decoder's keys and values for the whole search tree, laid out for it: the prompt's
    positions once, then one row per expanded continuation with the keys and values of its
    own last letter only; a child shares its parent's instead of copying them (the layout
    before copied the parent's whole row into each child: with the generic forward pass's
    gathers, 40% of a search). A wave's forward pass is `tree_step`, the decoder restated
    for one new token per row on fused weights. A continuation attends to the prompt, which
    all share, through two small products per layer (`prompt_blocks`), and to its own
    letters, the rows on its `path` (its ancestors' and its own), gathered per wave.

    `compile`: `tree_step` runs compiled with dynamic shapes (a wave's size and its paths'
    length vary), its small operations fused into a few kernels."""

    def __init__(self, model, prompt: list[int], compile: bool = False):
        self.model, self.prompt = model, prompt
        self.step = compiled_step() if compile else tree_step
        self.weights = fused_weights(model)
        self.device = model.rope_cos.device
        self.context = model.cfg.context_length
        self.used = 0
        self.stores: list[torch.Tensor] = []  # per layer: (rows, [keys | values])
        self.path = torch.zeros((0, self.context), dtype=torch.long, device=self.device)
        self.blocks: list | None = None  # the prompt's keys and values, per layer
        self.past = _past(self.context, self.device)

    def __call__(self, nodes):
        """Next-token logits (CPU fp32) after prompt + ids for each (ids, parent row) of
        `nodes` and the row each now owns. The first wave is the root (ids ()), alone or then
        one-letter continuations, read with the prompt. Nodes with numpy `parents`, `tokens`
        and `lengths` as well (the search's waves) are read from those."""
        if hasattr(nodes, "lengths"):
            parents, tokens, lengths = nodes.parents, nodes.tokens, nodes.lengths
        else:
            parents = np.array([parent for _, parent in nodes])
            tokens = np.array([ids[-1] if ids else -1 for ids, _ in nodes])
            lengths = np.array([len(ids) for ids, _ in nodes])
        if self.used == 0:
            return self._read_prompt(tokens[1:])
        n, first, dev = len(nodes), self.used, self.device
        width, P = int(lengths.max()), len(self.prompt)
        if P + width > self.context:
            raise ValueError(f"a continuation reaches position {P + width}, past the context")
        self._reserve(n)
        parents, tokens, depth = (torch.from_numpy(a).to(dev) for a in (parents, tokens, lengths))
        path = self.path[first : first + n]  # the parent's path, then the node's own row
        path.copy_(self.path.index_select(0, parents))
        path[torch.arange(n, device=dev), depth - 1] = torch.arange(first, first + n, device=dev)
        # shorter paths than the longest: what lies past their end is not read
        bias = None if lengths.min() == width else self.past[depth, :width]
        logits = self._read(first, tokens, depth + (P - 1), width, bias, self.blocks)
        return logits.float().cpu(), np.arange(first, first + n)

    def _read_prompt(self, letters):
        """The prompt and the root's children (reading `letters`) in one pass: position i of
        the prompt in row i, attending to rows 0..i, the children after them; the root owns
        row P-1. (A search reads most of the root's children; a wave costs ~40 rows.)"""
        P, c, dev = len(self.prompt), len(letters), self.device
        if P + (c > 0) > self.context:
            raise ValueError(f"a prompt of {P} tokens leaves no room in the context")
        self._reserve(P + c)
        at = torch.arange(P + 1, device=dev)
        self.path[: P + c, : P + 1] = at  # row i < P: rows 0..i (the rest, past it, unread)
        self.path[P : P + c, P] = torch.arange(P, P + c, device=dev)
        at = torch.cat([at[:P], at[P:].expand(c)])
        bias = self.past[at + 1, : P + (c > 0)]
        tokens = torch.cat([torch.tensor(self.prompt), torch.from_numpy(letters)]).to(dev)
        logits = self._read(0, tokens, at, P + (c > 0), bias, None)
        self.blocks = prompt_blocks(self.weights, [store[:P] for store in self.stores])
        self.path[: P + c] = 0  # from here on a path holds a continuation's own letters only
        self.path[P : P + c, 0] = torch.arange(P, P + c, device=dev)
        return logits[P - 1 :].float().cpu(), np.arange(P - 1, P + c)

    def _read(self, first: int, tokens, at, width: int, bias, blocks) -> torch.Tensor:
        """Rows first.. read `tokens` at positions `at`, attending to the rows on their paths
        (the first `width`, but where `bias` is -inf) and to the prompt (`blocks`)."""
        w = self.weights
        rot = w.rot.index_select(0, at)[:, None]
        index = self.path[first : first + len(tokens), :width].flatten()
        return self.step(w, self.stores, tokens, rot, index, bias, first, blocks)

    def _reserve(self, n: int) -> None:
        """Room for n rows more, doubling when full; new rows are written before read."""
        self.used += n
        if self.used <= len(self.path):
            return
        size, keep = max(256, 2 * self.used), self.used - n
        cfg, like = self.model.cfg, self.weights.embed
        old = self.stores or [like.new_empty((0, 2 * cfg.d_model))] * cfg.n_layers
        self.stores = [like.new_empty((size, 2 * cfg.d_model)) for _ in old]
        for store, kept in zip(self.stores, old, strict=True):
            store[:keep] = kept[:keep]
        path = self.path.new_zeros((size, self.context))
        path[:keep] = self.path[:keep]
        self.path = path


@functools.cache
def _past(context: int, device) -> torch.Tensor:
    """(context + 1, context, 1): row L is 0 on a path's first L entries, -inf past them."""
    at = torch.arange(context, device=device)
    hidden = at[None, :] >= torch.arange(context + 1, device=device)[:, None]
    return torch.zeros(hidden.shape, device=device).masked_fill_(hidden, -math.inf)[..., None]


@dataclass
class TreeWeights:
    """A decoder's weights arranged for fewer, cheaper operations: per layer, q, k and v in
    one matrix (q scaled by 1/sqrt(head_dim)), gate and up in one, RMSNorm weights folded into
    the matrix after them; the first layer's q, k, v (the token's alone) as a table; output
    and down projections transposed for `addmm` (residual added in the call). Each head's q
    and k dimensions reordered so that the pairs the rotary embedding turns together, (j, j +
    head_dim / 2), lie side by side: the turn is one complex product, 2.5x faster than
    rotate_half (scores unchanged: q and k reordered alike)."""

    embed: torch.Tensor
    qkv0: torch.Tensor  # (vocabulary, 3 * d_model)
    qkv: list[torch.Tensor]
    o_t: list[torch.Tensor]
    gate_up: list[torch.Tensor]
    down_t: list[torch.Tensor]
    qk_norm: list[torch.Tensor] | None  # per layer (2 * heads, head_dim), or None
    lm_head: torch.Tensor
    rot: torch.Tensor  # (positions, head_dim / 2, 2): (cos, sin)
    act: Callable
    heads: int
    eps: float


_fused = weakref.WeakKeyDictionary()


def fused_weights(model) -> TreeWeights:
    """The model's TreeWeights, built again only when a parameter changed (its version moves
    with every in-place update, its storage with `.to`); parameters listed once (~1 ms)."""
    params = _fused[model][0] if model in _fused else list(model.parameters())
    key = [(p.data_ptr(), p._version) for p in params]
    if model not in _fused or _fused[model][1] != key:
        _fused[model] = (params, key, _fuse(model))
    return _fused[model][2]


@torch.no_grad()
def _fuse(model) -> TreeWeights:
    cfg, body = model.cfg, model.model
    heads, head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
    scale = 1.0 / math.sqrt(head_dim)
    attn = [layer.self_attn for layer in body.layers]
    mlp = [layer.mlp for layer in body.layers]
    half = head_dim // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half) + half], 1).flatten()
    qk_norm = None
    if cfg.qk_norm:  # the norm comes before the rotation: the scale goes into its weight
        qk_norm = [
            torch.stack([a.q_norm.weight * scale] * heads + [a.k_norm.weight] * heads)[:, pairs]
            for a in attn
        ]
    q_scale = 1.0 if cfg.qk_norm else scale
    rows = (torch.arange(heads)[:, None] * head_dim + pairs).flatten()  # pairs side by side
    qkv = [
        torch.cat([a.q_proj.weight[rows] * q_scale, a.k_proj.weight[rows], a.v_proj.weight])
        for a in attn
    ]
    norm_in = [layer.input_layernorm.weight for layer in body.layers]
    first = F.rms_norm(body.embed_tokens.weight, (cfg.d_model,), norm_in[0], cfg.norm_eps)
    return TreeWeights(
        embed=body.embed_tokens.weight.detach(),
        qkv0=F.linear(first, qkv[0]),
        qkv=[m * w for m, w in zip(qkv, norm_in, strict=True)],
        o_t=[a.o_proj.weight.t().contiguous() for a in attn],
        gate_up=[
            torch.cat([m.gate_proj.weight, m.up_proj.weight])
            * layer.post_attention_layernorm.weight
            for m, layer in zip(mlp, body.layers, strict=True)
        ],
        down_t=[m.down_proj.weight.t().contiguous() for m in mlp],
        qk_norm=qk_norm,
        lm_head=model.lm_head.weight * body.norm.weight,
        rot=torch.stack([model.rope_cos[:, :half], model.rope_sin[:, :half]], -1),
        act=mlp[0].act,
        heads=heads,
        eps=cfg.norm_eps,
    )


def prompt_blocks(w: TreeWeights, stores: list[torch.Tensor]) -> list:
    """Per layer, the prompt's keys and values as block-diagonal matrices, a block a head:
    a wave's scores over the prompt are then one product (rows, d_model) x (d_model, heads x
    P), what it reads there, through the output projection, another. They replace gathering
    the prompt's rows for every continuation (2/3 of the rows, for a 3-letter prefix)."""
    blocks = []
    for store, o_t in zip(stores, w.o_t, strict=True):
        P, d = store.shape[0], store.shape[1] // 2
        k, v = store[:, :d].view(P, w.heads, -1), store[:, d:].view(P, w.heads, -1)
        keys = torch.block_diag(*k.unbind(1)).t()  # (d_model, heads x P)
        values = torch.block_diag(*v.unbind(1)) @ o_t  # (heads x P, d_model)
        # columns and rows in (position, head) order, as the scores lie: (rows, P, heads)
        keys = keys.view(d, w.heads, P).transpose(1, 2).reshape(d, P * w.heads)
        values = values.view(w.heads, P, d).transpose(0, 1).reshape(P * w.heads, d)
        blocks.append((keys, values))
    return blocks


def tree_step(w: TreeWeights, stores, tokens, rot, index, bias, first: int, blocks):
    """Next-token logits of a wave, the decoder restated for one token a row: row b reads
    `tokens[b]` (turned by rot[b]), writes its keys and values into row `first + b` of each
    layer's store (rows, [keys | values]) and attends to the rows `index` (b's path, `width`
    a row) but where `bias` (rows, width, 1; None: none) is -inf, and to `blocks`' prompt."""
    n = tokens.shape[0]
    x = w.embed.index_select(0, tokens)
    d = x.shape[1]
    heads, hd, ff = w.heads, d // w.heads, w.gate_up[0].shape[0] // 2
    width = index.shape[0] // n
    for i, store in enumerate(stores):
        if i == 0:
            qkv = w.qkv0.index_select(0, tokens)
        else:
            qkv = F.linear(F.rms_norm(x, (d,), None, w.eps), w.qkv[i])
        qk = qkv[:, : 2 * d].view(n, 2 * heads, hd)
        if w.qk_norm is not None:
            qk = F.rms_norm(qk, (hd,), None, w.eps) * w.qk_norm[i]
        qk = _turn(qk.view(n, 2 * heads, hd // 2, 2), rot).view(n, 2 * heads, hd)
        q = qk[:, :heads]
        torch.cat([qk[:, heads:].reshape(n, d), qkv[:, 2 * d :]], 1, out=store[first : first + n])
        kv = store.index_select(0, index).view(n, width, 2 * d)
        k, v = kv[..., :d].view(n, width, heads, hd), kv[..., d:].view(n, width, heads, hd)
        scores = (k * q[:, None]).sum(-1)  # (rows, width, heads)
        if bias is not None:
            scores = scores + bias
        # softmax over dim 1, not over a last dim this short: 3x faster on a CPU
        if blocks is None:
            att = scores.softmax(1)
        else:
            on_prompt = (q.reshape(n, d) @ blocks[i][0]).view(n, -1, heads)
            att = torch.cat([on_prompt, scores], 1).softmax(1)
            P = on_prompt.shape[1]
            x = torch.addmm(x, att[:, :P].reshape(n, -1), blocks[i][1])
            att = att[:, P:]
        x = torch.addmm(x, (att[..., None] * v).sum(1).view(n, d), w.o_t[i])
        gu = F.linear(F.rms_norm(x, (d,), None, w.eps), w.gate_up[i])
        x = torch.addmm(x, w.act(gu[:, :ff]) * gu[:, ff:], w.down_t[i])
    return F.linear(F.rms_norm(x, (d,), None, w.eps), w.lm_head)


def _turn(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Pairs (..., 2) turned by rot's (cos, sin): one complex product, but spelled out in real
    numbers where torch.compile runs it (inductor generates no code for complex numbers)."""
    if torch.compiler.is_compiling():
        re, im, cos, sin = x[..., 0], x[..., 1], rot[..., 0], rot[..., 1]
        return torch.stack([re * cos - im * sin, re * sin + im * cos], -1)
    return torch.view_as_real(torch.view_as_complex(x) * torch.view_as_complex(rot))


@functools.cache
def compiled_step():
    """`tree_step` compiled once a process for shapes that vary (the one wrapper)."""
    return torch.compile(tree_step, dynamic=True)
