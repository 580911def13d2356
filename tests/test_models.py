import dataclasses
import json

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.models import Decoder, param_breakdown
from tinylm.models.cache import CacheSlots
from tinylm.models.decoder import hf_config

CFG = ModelConfig(
    d_model=32, n_layers=2, n_heads=4, d_ff=48, context_length=24, tie_embeddings=True
)


def test_decoder_is_causal():
    """Changing tokens after position i never changes the logits at positions <= i."""
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (3, 20))
    base = model(x).logits
    for i in [0, 5, 18]:
        y = x.clone()
        y[:, i + 1 :] = torch.randint(0, 50, y[:, i + 1 :].shape)
        changed = model(y).logits
        assert torch.allclose(base[:, : i + 1], changed[:, : i + 1], atol=1e-5)
        assert not torch.allclose(base[:, i + 1 :], changed[:, i + 1 :], atol=1e-3)


def test_positions_matter():
    """Rotary positions: the same tokens in another order give other predictions."""
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.tensor([[1, 2, 3, 4, 5]])
    y = torch.tensor([[3, 2, 1, 4, 5]])  # same multiset before the last position
    assert not torch.allclose(model(x).logits[0, -1], model(y).logits[0, -1], atol=1e-4)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (2, 12))
    full = model(x).logits
    cache = model.new_cache(2)
    first = model(x[:, :5], cache=cache, slots=CacheSlots(torch.tensor([0, 0]), 5)).logits
    steps = [
        model(x[:, t : t + 1], cache=cache, slots=CacheSlots(torch.tensor([t, t]), t + 1)).logits
        for t in range(5, 12)
    ]
    assert torch.allclose(torch.cat([first, *steps], dim=1), full, atol=1e-5)


def test_packed_sequences_give_the_logits_of_each_sequence_alone():
    """position_ids restarting at 0 pack several sequences in a row: each token's logits are
    those of its sequence read alone, so no sequence sees another."""
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    lengths = [[5, 9, 1, 3], [12, 4, 6], [24]]  # the first two rows end in padding
    rows = [torch.randint(0, 50, (sum(r),)) for r in lengths]
    x = torch.stack([torch.cat([r, torch.zeros(24 - len(r), dtype=torch.long)]) for r in rows])
    positions = torch.zeros(3, 24, dtype=torch.long)  # padding: each at position 0
    for b, row in enumerate(lengths):
        starts = torch.tensor([0, *row]).cumsum(0)
        for a, n in zip(starts.tolist(), row, strict=False):
            positions[b, a : a + n] = torch.arange(n)
    packed = model(x, position_ids=positions).logits
    for b, row in enumerate(lengths):
        a = 0
        for n in row:
            alone = model(x[b : b + 1, a : a + n]).logits[0]
            assert (packed[b, a : a + n] - alone).abs().max() <= 1e-5
            a += n
    # and the loss over a packed batch is the mean over the sequences' targets
    t = torch.randint(0, 50, (1, 9))
    row = torch.cat([x[1:2, :12], x[1:2, :9], torch.zeros(1, 3, dtype=torch.long)], 1)
    pos = torch.cat([torch.arange(12), torch.arange(9), torch.zeros(3, dtype=torch.long)])[None]
    targets = torch.cat([x[1:2, 1:13], t, torch.full((1, 3), -100)], 1)
    apart = torch.cat([model(x[1:2, :12]).logits[0], model(x[1:2, :9]).logits[0]])
    expected = torch.nn.functional.cross_entropy(apart, targets[0, :21])
    assert torch.allclose(model(row, targets, position_ids=pos).loss, expected, atol=1e-5)


def test_loss_ignores_masked_targets():
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (1, 6))
    t = torch.randint(0, 50, (1, 6))
    t_masked = t.clone()
    t_masked[0, 3:] = -100
    short = model(x[:, :3], targets=t[:, :3]).loss
    assert torch.allclose(model(x, targets=t_masked).loss, short, atol=1e-6)


def test_parameter_breakdown_counts_tied_weights_once():
    model = Decoder(CFG, vocab_size=50)
    parts = param_breakdown(model)
    assert parts["total"] == sum(p.numel() for p in model.parameters())
    assert parts["embeddings"] == 50 * 32 and "output head" not in parts


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"activation": "relu2"},
        {"qk_norm": True, "activation": "relu2"},
        {"tie_embeddings": False},
    ],
)
def test_same_logits_as_transformers(tmp_path, variant):
    """The decoder is Llama (Qwen3 with QK-norm): stock transformers loads the weights and
    computes the same."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, **variant)
    model = Decoder(cfg, vocab_size=50).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong mapping would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    save_file(model.hf_tensors(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_config(cfg, 50, 1, 2, 0)))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
    x = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_packed_rows_with_a_cache_are_refused():
    """Packed rows restart positions inside a row; a cache slot cannot: no silent mix."""
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (1, 4))
    slots = CacheSlots(torch.tensor([0]), 4)
    with pytest.raises(ValueError, match="position_ids"):
        model(x, cache=model.new_cache(1), slots=slots, position_ids=torch.tensor([[0, 1, 0, 1]]))


@pytest.mark.parametrize("d_model,n_heads", [(30, 4), (30, 10)])
def test_bad_shapes_are_refused(d_model, n_heads):
    with pytest.raises(ValueError):
        Decoder(ModelConfig(d_model=d_model, n_heads=n_heads), vocab_size=10)


def test_bf16_cpu_attention_path_is_causal_and_agrees():
    """Under bf16 autocast on a CPU the decoder uses plain matmul attention: same answer."""
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        reference = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base = model(x).logits.float()
            y = x.clone()
            y[:, 8:] = torch.randint(0, 50, y[:, 8:].shape)
            changed = model(y).logits.float()
    assert torch.allclose(base, reference, atol=0.05)
    assert torch.equal(base[:, :8], changed[:, :8])


def test_rows_at_different_positions_decode_like_separate_sequences():
    """Serving: one batched step over sequences of different lengths equals a full forward of
    each; a prefill into chosen rows of a larger cache works too."""
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    prompts = [[1, 7, 9], [1, 4, 4, 8, 2, 11], [1, 30]]
    nxt = [5, 6, 7]
    with torch.no_grad():
        expected = [
            model(torch.tensor([p + [t]])).logits[0, -1] for p, t in zip(prompts, nxt, strict=True)
        ]
        pool = model.new_cache(4)  # one row more than needed: unused rows do no harm
        x = torch.zeros(3, 6, dtype=torch.long)  # right-padded prefill into rows 2, 0, 1
        for i, p in enumerate(prompts):
            x[i, : len(p)] = torch.tensor(p)
        rows = torch.tensor([2, 0, 1])
        model(x, cache=pool, slots=CacheSlots(torch.zeros(3, dtype=torch.long), 6, rows))
        tokens = torch.tensor([[nxt[1]], [nxt[2]], [nxt[0]], [0]])  # row order 0, 1, 2, 3
        start = torch.tensor([6, 2, 3, 0])
        got = model(tokens, cache=pool, slots=CacheSlots(start, 7)).logits[:, -1]
    for row, i in ((2, 0), (0, 1), (1, 2)):
        assert torch.allclose(got[row], expected[i], atol=1e-5)


def test_recording_attention_changes_nothing_and_rows_are_distributions():
    torch.manual_seed(0)
    model = Decoder(CFG, vocab_size=50).eval()
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        plain = model(x).logits
        record: list = []
        recorded = model(x, attention=record).logits
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert len(record) == CFG.n_layers and record[0].shape == (2, CFG.n_heads, 10, 10)
    for att in record:
        assert torch.allclose(att.sum(-1), torch.ones(2, CFG.n_heads, 10), atol=1e-5)
        assert (att.triu(1) == 0).all()  # nothing above the diagonal
