"""The original notebook's model: a Hugging Face EncoderDecoderModel built from two BertConfigs.

Made to work for real: the encoder reads `<sos> prefix <eos>`; the decoder reads `<sos>` and
the prefix too, and is trained on the rest of the word followed by `<eos>` (targets -100 over
the prefix). A decoder that had to guess which letters it continues from the encoder alone
learnt far slower (bench/README.md). With transformers: `model.generate(input_ids=<sos> prefix
<eos>, decoder_input_ids=<sos> prefix)` continues the word.
"""

from __future__ import annotations

import warnings

import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.models.decoder import ModelOutput

# Hugging Face's plain matmul + softmax attention: on words of a few letters a training step
# takes about a quarter less time than with the fused kernel ("sdpa", transformers' default),
# for the same loss (bench/seq2seq_attention.py).
ATTENTION = "eager"


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
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.d_ff,
            max_position_embeddings=cfg.context_length + 2,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=pad_id,
        )
        encoder = tf.BertConfig(**common, num_hidden_layers=cfg.encoder_layers or cfg.n_layers)
        decoder = tf.BertConfig(
            **common, num_hidden_layers=cfg.n_layers, is_decoder=True, add_cross_attention=True
        )
        config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
            encoder,
            decoder,
            decoder_start_token_id=bos_id,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        model = tf.EncoderDecoderModel(config=config)
        model.set_attn_implementation(ATTENTION)  # the encoder's and the decoder's
        return cls(model)

    @classmethod
    def from_folder(cls, folder) -> Seq2Seq:
        model = _hf().EncoderDecoderModel.from_pretrained(
            str(folder), attn_implementation=ATTENTION
        )
        return cls(model)

    def forward(self, input_ids, attention_mask, decoder_input_ids, targets=None) -> ModelOutput:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask,
                      decoder_input_ids=decoder_input_ids, labels=targets)  # fmt: skip
        return ModelOutput(logits=out.logits, loss=out.loss)
