"""tinylm: train your own small language model from scratch."""

__version__ = "0.1.0"
