"""A run's best weights in the Hugging Face layout, so stock `transformers` loads them: the
decoder as config.json + model.safetensors (LlamaForCausalLM, a tied head stored once), the
encoder-decoder through its own save_pretrained. Each file is replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinylm import atomic
from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.models import Decoder, Seq2Seq, build_model
from tinylm.models.decoder import hf_config
from tinylm.tokenizer import Tokenizer

WEIGHTS = "model.safetensors"


def save(folder: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    folder = Path(folder)
    if isinstance(model, Seq2Seq):
        atomic.replace_files(folder, lambda tmp: model.hf.save_pretrained(tmp))
        return
    tensors = decoder_tensors(model)
    atomic.atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    tok = tokenizer
    config = hf_config(model.cfg, model.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    atomic.write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")


def decoder_tensors(model: Decoder) -> dict[str, torch.Tensor]:
    """The decoder's weights as Llama stores them: a tied output layer is the embedding,
    stored once (as `tie_word_embeddings: true` tells transformers)."""
    tied = model.cfg.tie_embeddings
    tensors = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def load(folder: Path, cfg: RunConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    """The model with the saved weights, in eval mode, on the CPU."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} has no trained weights yet (no {WEIGHTS}).")
    try:
        if cfg.model.arch == "seq2seq":
            model = Seq2Seq.from_folder(folder)
        else:
            model = build_model(cfg.model, tokenizer)
            result = model.load_state_dict(load_file(folder / WEIGHTS), strict=False)
            missing = set(result.missing_keys)
            if cfg.model.tie_embeddings:
                missing.discard("lm_head.weight")  # tied: the embedding, stored once
            if missing or result.unexpected_keys:
                bad = sorted(missing) + sorted(result.unexpected_keys)
                raise ValueError(f"names not matching the model: {', '.join(bad[:3])}")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"The weights in {folder} are unreadable ({first}).") from None
    return model.eval()
