"""The original notebook's model: a Hugging Face EncoderDecoderModel built from two BertConfigs.

Made to work for real: the encoder reads `<sos> prefix <eos>`, the decoder starts from `<sos>`
and is trained on the rest of the word followed by `<eos>` (labels are the decoder's targets,
one per decoder position; transformers shifts them right to make the decoder's inputs).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.models.decoder import ModelOutput


def _hf():
    import transformers

    # We pass labels only, as transformers recommends; its warning about it is noise.
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


class Seq2Seq(nn.Module):
    """A thin wrapper so the training loop and evaluation call it like the decoder."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    @classmethod
    def build(cls, cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
        tf = _hf()
        common = dict(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.d_ff,
            max_position_embeddings=cfg.context_length + 2,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=pad_id,
        )
        encoder = tf.BertConfig(**common)
        decoder = tf.BertConfig(**common, is_decoder=True, add_cross_attention=True)
        config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
            encoder,
            decoder,
            decoder_start_token_id=bos_id,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        return cls(tf.EncoderDecoderModel(config=config))

    @classmethod
    def from_folder(cls, folder) -> Seq2Seq:
        return cls(_hf().EncoderDecoderModel.from_pretrained(str(folder)))

    def forward(self, input_ids, attention_mask, targets=None) -> ModelOutput:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, labels=targets)
        return ModelOutput(logits=out.logits, loss=out.loss)

    @torch.no_grad()
    def complete(
        self, input_ids, attention_mask, max_new_tokens, temperature, banned=(), generator=None
    ):
        """Decoder tokens after <sos>, sampled (temperature > 0) or greedy, until <eos>."""
        if generator is not None:  # transformers samples from the global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        sample = temperature > 0
        out = self.hf.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            suppress_tokens=list(banned) or None,
        )
        return out[:, 1:]  # drop the decoder start token
