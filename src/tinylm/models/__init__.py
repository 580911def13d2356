"""The models tinylm trains, behind one interface: `model(**batch)` returns logits and, with
targets, the loss; `batch["targets"]` is aligned with the logits (-100 = ignored)."""

from __future__ import annotations

from collections import Counter

import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.errors import UserError
from tinylm.models.decoder import Decoder, KVCache, ModelOutput
from tinylm.models.seq2seq import Seq2Seq

ARCHS = ("decoder", "seq2seq")

__all__ = [
    "ARCHS",
    "Decoder",
    "KVCache",
    "ModelOutput",
    "Seq2Seq",
    "build_model",
    "param_breakdown",
]


def build_model(cfg: ModelConfig, tokenizer) -> nn.Module:
    if cfg.arch == "decoder":
        try:
            return Decoder(cfg, tokenizer.vocab_size)
        except ValueError as e:
            raise UserError(f"Bad model shape: {e}.") from None
    if cfg.arch == "seq2seq":
        if tokenizer.kind != "char":
            raise UserError("The seq2seq model completes words; use it with a character tokenizer.")
        return Seq2Seq.build(
            cfg, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
        )
    raise UserError(f"Unknown model.arch '{cfg.arch}'; choose one of {', '.join(ARCHS)}.")


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
