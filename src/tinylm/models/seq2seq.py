"""The original notebook's model: a Hugging Face EncoderDecoderModel built from two BertConfigs.

Made to work for real: the encoder reads `<sos> prefix <eos>`; the decoder reads `<sos>` and
the prefix too, and is trained on the rest of the word followed by `<eos>` (targets -100 over
the prefix). A decoder that had to guess which letters it continues from the encoder alone
learnt far slower (bench/README.md). With transformers: `model.generate(input_ids=<sos> prefix
<eos>, decoder_input_ids=<sos> prefix)` continues the word.

Everything here that reads a prompt derives the encoder's input from the decoder's: a prompt
`<sos> prefix` is encoded as `<sos> prefix <eos>`, so callers hand it token ids as they would
to the decoder-only model. Scoring a whole word (`read`) encodes an empty prefix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from tinylm import atomic
from tinylm.config import ModelConfig
from tinylm.data.batching import PrefixWordBatches, pad_rows
from tinylm.errors import UserError
from tinylm.models.decoder import ModelOutput

# Hugging Face's plain matmul + softmax attention: on words of a few letters a training step
# takes about a quarter less time than with the fused kernel ("sdpa", transformers' default),
# for the same loss (bench/seq2seq_attention.py).
ATTENTION = "eager"


def _hf():
    # transformers is imported here, not at the top: it takes ~5 s to import, and only this
    # model needs it (a decoder run never does).
    import transformers

    # We pass labels only, as transformers recommends; its warning about it is noise.
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


class Seq2Seq(nn.Module):
    """The model contract (models/__init__.py) for Hugging Face's BERT2BERT."""

    word_batches = PrefixWordBatches  # words of one length a batch, split at a random point

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        config = hf_model.config
        self.bos_id, self.eos_id = config.decoder_start_token_id, config.eos_token_id
        self.pad_id, self.vocab_size = config.pad_token_id, config.decoder.vocab_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def build(cls, cfg: ModelConfig, tokenizer) -> Seq2Seq:
        tf = _hf()
        common = dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=cfg.d_model,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.d_ff,
            max_position_embeddings=cfg.context_length + 2,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=tokenizer.pad_id,
        )
        encoder = tf.BertConfig(**common, num_hidden_layers=cfg.encoder_layers or cfg.n_layers)
        decoder = tf.BertConfig(
            **common, num_hidden_layers=cfg.n_layers, is_decoder=True, add_cross_attention=True
        )
        config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
            encoder,
            decoder,
            decoder_start_token_id=tokenizer.bos_id,
            pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id,
        )
        model = tf.EncoderDecoderModel(config=config)
        model.set_attn_implementation(ATTENTION)  # the encoder's and the decoder's
        return cls(model)

    @classmethod
    def from_folder(cls, folder: Path, cfg: ModelConfig, tokenizer) -> Seq2Seq:
        model = _hf().EncoderDecoderModel.from_pretrained(
            str(folder), attn_implementation=ATTENTION
        )
        return cls(model)

    def save(self, folder: Path, tokenizer) -> None:
        """Its own save_pretrained (config.json + model.safetensors), each file atomically."""
        atomic.replace_files(Path(folder), lambda tmp: self.hf.save_pretrained(tmp))

    def forward(self, input_ids, attention_mask, decoder_input_ids, targets=None) -> ModelOutput:
        out = self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            labels=targets,
        )
        return ModelOutput(logits=out.logits, loss=out.loss)

    def encode(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """The encoder's states for each decoder prompt `<sos> prefix` (it reads `<sos>
        prefix <eos>`), computed in one batch."""
        inputs = [[*p, self.eos_id] for p in prompts]
        x, mask = self.padded(inputs)
        states = self.hf.get_encoder()(input_ids=x, attention_mask=mask)
        return [states.last_hidden_state[i, : len(row)] for i, row in enumerate(inputs)]

    def next_logits(self, states: list[torch.Tensor], histories: list[list[int]]):
        """Next-token logits (CPU fp32) after each decoder history, given its encoder states."""
        BaseModelOutput = _hf().modeling_outputs.BaseModelOutput

        width = max(len(s) for s in states)
        enc = states[0].new_zeros((len(states), width, states[0].shape[-1]))
        enc_mask = torch.zeros((len(states), width), dtype=torch.long, device=self.device)
        for i, s in enumerate(states):
            enc[i, : len(s)], enc_mask[i, : len(s)] = s, 1
        dec, dec_mask = self.padded(histories)
        logits = self.hf(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc),
            attention_mask=enc_mask,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
        ).logits
        last = torch.tensor([len(h) - 1 for h in histories], device=self.device)
        return logits[torch.arange(len(histories), device=self.device), last].float().cpu()

    def padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their attention mask (by length: a generated token may be
        any id, the padding id too)."""
        mask = pad_rows([[1] * len(r) for r in rows], 0).to(self.device)
        return pad_rows(rows, self.pad_id).to(self.device), mask

    # --- the model contract (models/__init__.py)
    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position of decoder rows `<sos> word`, the encoder
        reading an empty prefix: the one factorisation of a word's probability it defines."""
        x = torch.tensor([[self.bos_id, self.eos_id]] * len(ids), device=self.device)
        return self(x, torch.ones_like(x), ids.to(self.device)).logits

    def backend(self, rows: int, compile: bool = False) -> EncoderDecoder:
        if compile:
            raise UserError("--compile is for decoder-only runs; this one is an encoder-decoder.")
        return EncoderDecoder(self, rows)

    def search(self, prompts: list[list[int]], compile: bool = False):
        self.backend(1, compile)  # the same refusal of --compile
        states = self.encode(prompts)  # once per prefix

        def expand(items):
            """Every item's nodes in one decoder pass."""
            reads = [(states[i], prompts[i] + list(ids)) for i, nodes in items for ids, _ in nodes]
            logits = self.next_logits(*map(list, zip(*reads, strict=True)))
            parts = logits.split([len(nodes) for _, nodes in items])
            return [(part, [-1] * len(part)) for part in parts]

        return expand

    def attention(self, prompt: list[int]) -> list[tuple[str, list, list, torch.Tensor]]:
        """The encoder's, the decoder's and the cross-attention while it reads the prompt."""
        enc_ids = [*prompt, self.eos_id]
        out = self.hf(
            input_ids=torch.tensor([enc_ids], device=self.device),
            decoder_input_ids=torch.tensor([prompt], device=self.device),
            output_attentions=True,
        )

        def stack(per_layer):
            return torch.stack([a[0].float().cpu() for a in per_layer])

        return [
            ("encoder self-attention", enc_ids, enc_ids, stack(out.encoder_attentions)),
            ("decoder self-attention", prompt, prompt, stack(out.decoder_attentions)),
            ("cross-attention", prompt, enc_ids, stack(out.cross_attentions)),
        ]


class EncoderDecoder:
    """The engine's backend for this model (see models/decoder_runtime.py for the contract).
    Each job's encoder states are computed once, when it starts (jobs that start together in
    one batch); every step then runs the decoder over each job's whole decoder history (at
    most a word's length, 16 tokens, where managing a key/value cache per row costs more than
    it saves), all jobs in one padded batch."""

    def __init__(self, model: Seq2Seq, rows: int):
        self.model, self.rows, self.jobs = model, rows, set()

    def room(self) -> int:
        return self.rows - len(self.jobs)

    def start(self, jobs) -> torch.Tensor:
        for job, states in zip(jobs, self.model.encode([j.history for j in jobs]), strict=True):
            job.encoder_states = states
            self.jobs.add(id(job))
        return self.advance(jobs)

    def release(self, job) -> None:
        self.jobs.discard(id(job))

    def advance(self, jobs) -> torch.Tensor:
        return self.model.next_logits([j.encoder_states for j in jobs], [j.history for j in jobs])
