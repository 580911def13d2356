"""The models tinylm trains, behind one contract, as makemore's models share theirs. Every
caller holds "a model" and never asks which: each model class supplies what depends on its
architecture.

    Model.build(cfg, tokenizer)           a new model (random weights)
    Model.from_folder(folder, cfg, tok)   the saved weights; model.save(folder, tok) writes them
                                          in the Hugging Face layout transformers loads
    Model.word_batches                    how it reads words in training (data/batching.py)
    model(**batch)                        ModelOutput(logits, loss): training and validation;
                                          batch["targets"] is aligned with the logits (-100 =
                                          ignored)
    model.read(ids)                       next-token logits at every position of rows that each
                                          begin with the start token (scoring, evaluation)
    model.backend(rows, compile)          the engine's backend: how it generates
    model.search(prompts, compile)        the word search's backend: next-token logits for
                                          batches of continuations of several prompts at once
    model.attention(prompt)               its attention weights while it reads a prompt

`MODELS` names them by `model.arch`: the one place the architecture is looked up.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch.nn as nn
from safetensors import SafetensorError

from tinylm.config import ModelConfig
from tinylm.errors import UserError
from tinylm.models.decoder import WEIGHTS, Decoder, ModelOutput
from tinylm.models.seq2seq import Seq2Seq

MODELS = {"decoder": Decoder, "seq2seq": Seq2Seq}

__all__ = ["MODELS", "Decoder", "ModelOutput", "Seq2Seq", "build_model", "load_model"]


def build_model(cfg: ModelConfig, tokenizer) -> nn.Module:
    return MODELS[cfg.arch].build(cfg, tokenizer)


def load_model(folder: Path, cfg: ModelConfig, tokenizer) -> nn.Module:
    """The model with the weights saved in `folder`, in eval mode, on the CPU."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} has no trained weights yet (no {WEIGHTS}).")
    try:
        model = MODELS[cfg.arch].from_folder(folder, cfg, tokenizer)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        # safetensors' errors are the weights file's; others may be config.json's (read by
        # transformers for the encoder-decoder), and name it themselves
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = folder / WEIGHTS if isinstance(e, SafetensorError) else f"The model in {folder}"
        if not isinstance(e, SafetensorError) and not (folder / "config.json").is_file():
            first = "it has no config.json"  # transformers says it in other words
        raise UserError(
            f"{what} is unreadable ({first}); restore it from a copy of the run, or resume "
            "training, which writes it again at its next better validation."
        ) from None
    return model.eval()


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters by part (each shared tensor counted once), for `tinylm info`."""
    parts: Counter[str] = Counter()
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        parts[_part(name)] += p.numel()
    parts["total"] = sum(parts.values())
    return dict(parts)


def _part(name: str) -> str:
    n = name.lower()
    if "embed" in n:
        return "embeddings"
    if "norm" in n:
        return "norms"
    if "crossattention" in n:
        return "cross-attention"
    if "attn" in n or "attention" in n:
        return "attention"
    if "mlp" in n or "intermediate" in n or ".output." in n:
        return "feed-forward"
    if "lm_head" in n or "cls." in n:
        return "output head"
    return "other"
