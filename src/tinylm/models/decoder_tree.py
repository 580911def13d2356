"""The word search's tree of cached continuations: a decoder's search backend
(inference/search.py), which returns the next-token logits after prompt + continuation for a
batch of continuations of several prompts, each read on its parent's cached keys and values.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from tinylm.models.fused import FusedWeights, fused_weights, layer_mlp, layer_qkv, next_logits

WIDE = 64  # rows: a wave of one search this wide reads its prompt through its blocks


class CacheTree:
    """A decoder's keys and values for the search trees of several prompts, laid out for
    them: one row per token read, a prompt's tokens and then each expanded continuation's
    last letter, holding that token's keys and values only; a child shares its parent's
    instead of copying them (the layout before copied the parent's whole row into each
    child: with the generic forward pass's gathers, 40% of a search). A row's `path` lists
    the rows it attends to, its prompt's and its ancestors', itself last, so that a forward
    pass can read rows of any prompts together: a wave of each search in one pass
    (`likeliest_words` of several prefixes, the server's typists) costs about what one costs,
    a wave being ~60 small operations whatever its size. A wide wave of one search (`WIDE`
    rows or more) reads its prompt through two small products a layer instead
    (`prompt_blocks`), gathering its own letters only: fewer bytes than gathering the prompt
    for every row, though more operations. The pass is `tree_step`, the decoder restated for
    one new token a row on fused weights.

    `compile`: `tree_step` runs compiled with dynamic shapes (a wave's size and its paths'
    length vary), its small operations fused into a few kernels."""

    def __init__(self, model, prompts: list[list[int]], compile: bool = False):
        self.model, self.prompts = model, prompts
        self.step = compiled_step() if compile else tree_step
        self.weights = fused_weights(model)
        self.device = model.rope_cos.device
        self.context = model.cfg.context_length
        self.used = 0
        self.stores: list[torch.Tensor] = []  # per layer: (rows, [keys | values])
        self.path = np.zeros((0, self.context), dtype=np.int64)  # row i reads path[i, :lens[i]]
        self.lens = np.zeros(0, dtype=np.int64)
        self.roots: dict[int, int] = {}  # prompt index -> its root's row (its last token's)
        self.blocks: dict[int, list] = {}  # its keys and values, once a wide wave needs them
        self.past = _past(self.context, self.device)

    def __call__(self, items):
        """For each (prompt index, nodes) of `items`, the next-token logits (CPU fp32) after
        that prompt + each node's ids and the rows the nodes now own, all read in one pass.
        Nodes have numpy `parents` (their parents' rows, -1 for the root) and `tokens` (each
        one's last letter). A search's first nodes are its root (tokens -1), alone or then
        one-letter continuations: they are read with the prompt."""
        first, parts = self.used, []
        at = first  # the next part's first row
        for i, nodes in items:
            parents, tokens = nodes.parents, nodes.tokens
            if parents[0] < 0:
                parts.append(self._prompt_rows(self.prompts[i], tokens[1:], at))
                self.roots[i] = at + len(self.prompts[i]) - 1
            else:
                lens = self.lens[parents] + 1
                path = self.path[parents]
                rows = np.arange(at, at + len(parents))
                path[np.arange(len(rows)), lens - 1] = rows
                parts.append((tokens, path, lens, rows))
            at += len(parts[-1][0])
        tokens, path, lens, _ = (np.concatenate(a) for a in zip(*parts, strict=True))
        width, n = int(lens.max()), len(tokens)
        if width > self.context:
            raise ValueError(f"a continuation reaches position {width}, past the context")
        self._reserve(n)
        self.path[first : first + n], self.lens[first : first + n] = path, lens
        dev, w = self.device, self.weights
        rot = w.rot.index_select(0, torch.from_numpy(lens - 1).to(dev))[:, None]
        blocks, skip = None, 0  # (the prompt's rows, read through its blocks)
        if len(items) == 1 and n >= WIDE and items[0][1].parents[0] >= 0:
            blocks, skip = self._prompt_blocks(items[0][0]), len(self.prompts[items[0][0]])
        index = torch.from_numpy(np.ascontiguousarray(path[:, skip:width]).ravel()).to(dev)
        lens_t = torch.from_numpy(lens - skip).to(dev)
        # shorter paths than the longest: what lies past their end is not read
        bias = None if lens.min() == width else self.past[lens_t, : width - skip]
        tokens = torch.from_numpy(tokens).to(dev)
        logits = self.step(w, self.stores, tokens, rot, index, bias, first, blocks)
        logits = logits.float().cpu()
        return [(logits[owned - first], owned) for *_, owned in parts]

    def _prompt_blocks(self, i: int) -> list:
        """Prompt i's blocks, built the first time a wide wave needs them."""
        if i not in self.blocks:
            end = self.roots[i] + 1  # the prompt's rows: its root's and the P - 1 before it
            rows = slice(end - len(self.prompts[i]), end)
            self.blocks[i] = prompt_blocks(self.weights, [store[rows] for store in self.stores])
        return self.blocks[i]

    def _prompt_rows(self, prompt: list[int], letters, at: int):
        """A prompt's rows from row `at` (position i reads rows at..at+i), then its root's
        children reading `letters`: tokens, paths, lengths, and the rows the root (the
        prompt's last) and its children own. (A search reads most of the root's children.)"""
        P, c = len(prompt), len(letters)
        if P + (c > 0) > self.context:
            raise ValueError(f"a prompt of {P} tokens leaves no room in the context")
        rows = np.arange(at, at + P + c)
        path = np.zeros((P + c, self.context), dtype=np.int64)
        path[:, :P] = np.where(np.tri(P + c, P, dtype=bool), rows[:P], 0)
        path[P:, P] = rows[P:]
        lens = np.r_[np.arange(1, P + 1), np.full(c, P + 1)]
        tokens = np.r_[np.asarray(prompt, dtype=np.int64), letters]
        return tokens, path, lens, rows[P - 1 :]

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
        self.path = np.resize(self.path, (size, self.context))
        self.lens = np.resize(self.lens, size)


@functools.cache
def _past(context: int, device) -> torch.Tensor:
    """(context + 1, context, 1): row L is 0 on a path's first L entries, -inf past them."""
    at = torch.arange(context, device=device)
    hidden = at[None, :] >= torch.arange(context + 1, device=device)[:, None]
    return torch.zeros(hidden.shape, device=device).masked_fill_(hidden, -math.inf)[..., None]


def prompt_blocks(w: FusedWeights, stores: list[torch.Tensor]) -> list:
    """Per layer, a prompt's keys and values as block-diagonal matrices, a block a head: a
    wave's scores over the prompt are then one product (rows, d_model) x (d_model, heads x P),
    what it reads there, through the output projection, another, instead of gathering the
    prompt's rows for every continuation (4 of ~13 on a wide wave's paths, for `non`)."""
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


def tree_step(w: FusedWeights, stores, tokens, rot, index, bias, first: int, blocks=None):
    """Next-token logits of a wave, the decoder restated for one token a row: row b reads
    `tokens[b]` (turned by rot[b]), writes its keys and values into row `first + b` of each
    layer's store (rows, [keys | values]), then attends to the rows `index` (b's path, `width`
    a row: rows of this wave too) but where `bias` (rows, width, 1; None: none) is -inf, and to
    a prompt's `blocks` (None: its rows are on the paths)."""
    n = tokens.shape[0]
    x = w.embed.index_select(0, tokens)
    d = x.shape[1]
    heads, hd = w.heads, d // w.heads
    width = index.shape[0] // n
    for i, store in enumerate(stores):
        qk, v_new = layer_qkv(w, i, x, tokens, rot)
        q = qk[:, :heads]
        torch.cat([qk[:, heads:].reshape(n, d), v_new], 1, out=store[first : first + n])
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
        x = layer_mlp(w, i, x)
    return next_logits(w, x)


@functools.cache
def compiled_step():
    """`tree_step` compiled once a process for shapes that vary (the one wrapper)."""
    return torch.compile(tree_step, dynamic=True)
