"""A decoder's key/value cache, and where a forward pass writes into and reads from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Keys and values of every layer, `rows` sequences of up to `max_len` positions each, so a
    new token costs one step of the model instead of re-reading its sequence."""

    def __init__(self, n_layers: int, rows: int, n_heads: int, max_len: int, head_dim: int, like):
        shape = (rows, n_heads, max_len, head_dim)
        self.k = [like.new_zeros(shape) for _ in range(n_layers)]
        self.v = [like.new_zeros(shape) for _ in range(n_layers)]

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    def span(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop-1 of this one, sharing its memory."""
        view = KVCache.__new__(KVCache)
        view.k = [t[start:stop] for t in self.k]
        view.v = [t[start:stop] for t in self.v]
        return view


@dataclass
class CacheSlots:
    """Where a forward pass with a cache writes and reads: row b of the batch is row `rows[b]`
    of the cache (None: rows 0..B-1), its tokens go to positions start[b], start[b]+1, ... and
    each attends to its own row up to itself. `kv_len` (a host int, so the step needs no sync)
    is how many positions of the cache the longest row reads: max(start) + T."""

    start: torch.Tensor  # (B,) long
    kv_len: int
    rows: torch.Tensor | None = None  # (B,) long, or None for rows 0..B-1
