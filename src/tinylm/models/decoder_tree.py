"""The word search's tree of cached continuations: a decoder's search backend
(inference/search.py), which returns the next-token logits after prompt + continuation for a
batch of continuations, each read on its parent's cached keys and values.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from tinylm.models.fused import FusedWeights, fused_weights, layer_mlp, layer_qkv, next_logits


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


def prompt_blocks(w: FusedWeights, stores: list[torch.Tensor]) -> list:
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


def tree_step(w: FusedWeights, stores, tokens, rot, index, bias, first: int, blocks):
    """Next-token logits of a wave, the decoder restated for one token a row: row b reads
    `tokens[b]` (turned by rot[b]), writes its keys and values into row `first + b` of each
    layer's store (rows, [keys | values]) and attends to the rows `index` (b's path, `width`
    a row) but where `bias` (rows, width, 1; None: none) is -inf, and to `blocks`' prompt."""
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
