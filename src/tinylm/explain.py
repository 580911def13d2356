"""See inside a trained model: the attention weights it computes for a prompt, and how
surprised it is by each token of a text (the same log-probabilities `tinylm eval` sums).
The HTML page about a run is in report.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinylm.errors import UserError
from tinylm.inference import LoadedRun
from tinylm.models import Seq2Seq

LN2 = math.log(2)


@dataclass
class AttentionMap:
    name: str  # "self-attention", or encoder / decoder / cross-attention
    queries: list[str]  # token labels, one per row
    keys: list[str]  # one per column
    weights: torch.Tensor  # (layers, heads, queries, keys); every row sums to 1

    def to_json(self) -> dict:
        return {"name": self.name, "queries": self.queries, "keys": self.keys,
                "layers": self.weights.tolist()}  # fmt: skip


def label(tokenizer, i: int) -> str:
    """A token as a person reads it: its text (spaces shown as ␣), or its special name."""
    if i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id):
        return tokenizer.id_to_token(i)
    return tokenizer.decode([i]).replace(" ", "␣") or tokenizer.id_to_token(i)


@torch.no_grad()
def attention(loaded: LoadedRun, text: str) -> list[AttentionMap]:
    """The model's own attention weights while it reads `text` as a prompt (start token
    included): for the decoder its self-attention; for the encoder-decoder the encoder's,
    the decoder's and the cross-attention. Recording them leaves the output unchanged."""
    prompt = loaded.task.prompt(text)
    tok, model = loaded.tokenizer, loaded.model
    names = lambda ids: [label(tok, i) for i in ids]  # noqa: E731
    if isinstance(model, Seq2Seq):
        out = model.hf(input_ids=torch.tensor([prompt.encoder], device=loaded.device),
                       decoder_input_ids=torch.tensor([prompt.ids], device=loaded.device),
                       output_attentions=True)  # fmt: skip
        enc, dec = names(prompt.encoder), names(prompt.ids)
        return [
            AttentionMap("encoder self-attention", enc, enc, _stack(out.encoder_attentions)),
            AttentionMap("decoder self-attention", dec, dec, _stack(out.decoder_attentions)),
            AttentionMap("cross-attention", dec, enc, _stack(out.cross_attentions)),
        ]
    ids = prompt.ids[-loaded.cfg.model.context_length :]
    record: list = []
    model(torch.tensor([ids], device=loaded.device), attention=record)
    return [AttentionMap("self-attention", names(ids), names(ids), _stack(record))]


def _stack(per_layer) -> torch.Tensor:
    return torch.stack([a[0].float().cpu() for a in per_layer])


@dataclass
class TokenSurprise:
    id: int
    piece: str  # the stretch of the text this token stands for ("" for end-of-word)
    bits: float  # -log2 p(token | everything before it)
    unk: bool = False

    def to_json(self) -> dict:
        d = {"id": self.id, "piece": self.piece, "bits": round(self.bits, 6)}
        return {**d, "unk": True} if self.unk else d


def surprise(loaded: LoadedRun, text: str) -> list[TokenSurprise]:
    """How the tokenizer cuts `text` and the model's surprise at each token, in bits, scored
    as `tinylm eval` scores it: a text from its start (the start token as context), in
    half-overlapping windows when longer than the context; a word letter by letter from
    `<sos>`, then its end-of-word. The pieces put together give the text."""
    from tinylm.evaluate import score_targets
    from tinylm.inference.scoring import score

    tok = loaded.tokenizer
    if loaded.task.words:
        from tinylm.data.batching import WordBatches

        loaded.task.prompt(text)  # checks the letters
        arch = "seq2seq" if isinstance(loaded.model, Seq2Seq) else "decoder"
        batches = WordBatches([text], tok, 1024, seed=0, arch=arch).eval_batches()
        s = score_targets(loaded.model, batches)
        ids, logp = s.target.tolist(), s.logp.tolist()
        pieces = [*text, ""]
    else:
        tok.check_chars(text)
        enc = tok.tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            raise UserError("The text has no tokens to score.")
        [s] = score(loaded.model, [[tok.bos_id, *enc.ids]], loaded.cfg.model.context_length)
        ids, logp = enc.ids, s.logp.tolist()
        starts = [0, *(a for a, _ in enc.offsets[1:]), len(text)]
        pieces = [text[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    return [TokenSurprise(i, piece, -lp / LN2, i == tok.unk_id)
            for i, piece, lp in zip(ids, pieces, logp, strict=True)]  # fmt: skip


def color_tokens(tokens: list[TokenSurprise]) -> str:
    """The text with each piece on a background from green (expected) to red (surprising)."""
    palette = [22, 28, 64, 100, 136, 130, 124, 160, 196]  # xterm-256: green -> red
    out = []
    for t in tokens:
        shade = palette[min(len(palette) - 1, int(t.bits / 2))]  # 2 bits a step
        piece = t.piece or "⏎"
        out.append(f"\x1b[48;5;{shade}m\x1b[97m{piece}\x1b[0m")
    return "".join(out)
