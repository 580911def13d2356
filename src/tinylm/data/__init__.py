"""Data: where text comes from, how it is split, and how it is batched."""
