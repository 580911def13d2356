"""The figures of `tinylm eval` against values worked out by hand or computed another way."""

import math

import pytest
import torch

from conftest import synthetic_documents
from tinylm.config import ModelConfig
from tinylm.evaluate import evaluate_text, evaluate_words, ngram_baselines
from tinylm.models import Decoder
from tinylm.models.decoder import ModelOutput
from tinylm.tokenizer import build_bpe, build_char, build_word


class Bigram(torch.nn.Module):
    """A model whose next-token distribution depends on the current token only: row t of
    `table` holds the log-probabilities after token t. Its loss on any window equals its loss
    on the whole text, which makes it a clean check of windowed scoring."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.vocab_size = table.shape[0]  # as the decoder has

    def forward(self, input_ids, targets=None, **_):
        return ModelOutput(logits=self.table[input_ids])

    def read(self, ids):  # the model contract's scoring read (models/__init__.py)
        return self(ids).logits


def test_m1_and_m2_on_three_words_worked_by_hand():
    tok = build_char(["ab", "ba", "abb"])
    sos, eos, a, b = tok.bos_id, tok.eos_id, tok.encode("a")[0], tok.encode("b")[0]
    table = torch.full((tok.vocab_size, tok.vocab_size), -math.inf)
    for prev, probs in {
        sos: (1 / 2, 1 / 4, 1 / 4),
        a: (1 / 4, 1 / 2, 1 / 4),
        b: (1 / 4, 1 / 4, 1 / 2),
    }.items():
        table[prev, [a, b, eos]] = torch.tensor(probs).log()
    result = evaluate_words(Bigram(table), tok, ["ab", "ba", "abb"], ["ab"]).to_dict()
    # bits per target: ab = a|^ 1, b|a 1, eos|b 1; ba = b|^ 2, a|b 2, eos|a 2;
    # abb = a|^ 1, b|a 1, b|b 2, eos|b 1: 14 bits over 10 targets
    assert result["targets"] == 10
    assert result["bits_per_char"] == pytest.approx(1.4, abs=1e-6)
    # after the first letter the guess is b after a, <eos> after b: right for b|a, eos|b (ab),
    # wrong for a|b, eos|a (ba), right for b|a, wrong for b|b, right for eos|b (abb): 4 of 7
    assert result["next_char_accuracy"] == pytest.approx(4 / 7)
    assert result["accuracy_per_letter"] == {"a": 0.0, "b": 0.6667, "<eos>": 0.6667}


def test_ngram_baselines_on_a_tiny_corpus_worked_by_hand():
    got = ngram_baselines(["ab", "abb"], ["ab", "ba"])
    # alphabet a, b, end: 3 symbols. Unigram counts (with the end of each word) a 2, b 3,
    # end 2, add-one: a 3/10, b 4/10, end 3/10. Test targets: a b end, b a end.
    assert got["uniform"]["bits_per_char"] == pytest.approx(math.log2(3))
    assert got["uniform"]["next_char_accuracy"] == pytest.approx(1 / 3)
    unigram = (4 * -math.log2(3 / 10) + 2 * -math.log2(4 / 10)) / 6
    assert got["unigram"]["bits_per_char"] == pytest.approx(unigram)
    assert got["unigram"]["next_char_accuracy"] == pytest.approx(1 / 4)  # always b: b|a only
    # Bigram, add-one over 3: after ^ (2 seen: a a) a 3/5, b 1/5; after a (2: b b) b 3/5,
    # end 1/5; after b (3: end b end) a 1/6. ab: 3/5 3/5 3/6; ba: 1/5 1/6 1/5.
    bigram = -sum(math.log2(p) for p in (3 / 5, 3 / 5, 3 / 6, 1 / 5, 1 / 6, 1 / 5)) / 6
    assert got["bigram"]["bits_per_char"] == pytest.approx(bigram)
    assert got["bigram"]["next_char_accuracy"] == pytest.approx(2 / 4)  # b|a and end|b


def full_forward_nll(model, ids: list[int]) -> tuple[float, int]:
    """Total loss (nats) and top-1 hits of one forward pass over the whole sequence."""
    x, y = torch.tensor([ids[:-1]]), torch.tensor(ids[1:])
    with torch.no_grad():
        logp = model(x).logits[0].float().log_softmax(-1)
    return float(-logp[torch.arange(len(y)), y].sum()), int((logp.argmax(-1) == y).sum())


def test_a_short_document_is_scored_as_one_full_forward():
    tok = build_bpe(synthetic_documents(20, 40), vocab_size=300)
    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=64), tok.vocab_size
    ).eval()
    doc = synthetic_documents(1, 12, seed=5)[0][:60]
    ids = [tok.bos_id, *tok.encode(doc)]
    assert 10 < len(ids) <= 64
    got = evaluate_text(model, tok, [doc], context=64).to_dict()
    nll, hits = full_forward_nll(model, ids)
    assert got["tokens"] == len(ids) - 1
    assert got["loss_per_token"] * got["tokens"] == pytest.approx(nll, rel=1e-5)
    assert got["top1_accuracy"] * got["tokens"] == pytest.approx(hits)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(doc.encode()), rel=1e-5)


def test_windows_score_every_token_once_with_its_own_target():
    tok = build_bpe(synthetic_documents(20, 40), vocab_size=300)
    model = Bigram(
        torch.randn(tok.vocab_size, tok.vocab_size, generator=torch.Generator().manual_seed(0))
    )
    docs = synthetic_documents(3, 60, seed=7)
    got = evaluate_text(
        model, tok, docs, context=8
    ).to_dict()  # many overlapping windows per document
    nll = sum(full_forward_nll(model, [tok.bos_id, *tok.encode(d)])[0] for d in docs)
    assert got["tokens"] == sum(len(tok.encode(d)) for d in docs) > 300
    assert got["loss_per_token"] * got["tokens"] == pytest.approx(nll, rel=1e-5)


def test_word_level_bits_per_byte_charge_each_unknown_word_8_bits_a_byte():
    tok = build_word(["the cat sat on the mat"] * 3, vocab_size=10)
    doc = "The cat saw a zebra."  # saw, a, zebra are unknown: 3 + 1 + 5 = 9 bytes hidden
    ids = [tok.bos_id, *tok.encode(doc)]
    assert [tok.id_to_token(i) for i in ids[1:]] == ["the", "cat", "<UNK>", "<UNK>", "<UNK>"]
    model = Bigram(
        torch.randn(tok.vocab_size, tok.vocab_size, generator=torch.Generator().manual_seed(1))
    )
    got = evaluate_text(model, tok, [doc], context=16).to_dict()
    nll, _ = full_forward_nll(model, ids)
    assert got["unk_rate"] == pytest.approx(3 / 5)
    assert got["unk_bits_per_byte"] == pytest.approx(8 * 9 / 20)
    assert got["bits_per_byte"] == pytest.approx((nll / math.log(2) + 8 * 9) / 20, rel=1e-5)
