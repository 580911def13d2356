"""Views inside a model: attention weights, token surprise and the run report, each checked
against an independent computation."""

import json
import math
import shutil

import pytest
import torch

from conftest import TINY_TEXT_MODEL, tiny_config
from tinylm import load
from tinylm.cli import main
from tinylm.models.decoder import rotate_half


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@torch.no_grad()
def test_attention_weights_equal_a_recomputation_from_queries_and_keys(text_runs):
    loaded = load(text_runs["pile-bpe"].path)
    model, text = loaded.net, "The river ran"
    [m] = loaded.attention(text)
    ids = loaded.task.prompt(text).ids
    captured = {}
    layer = model.model.layers[1]
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda *a: captured.update(q=a[2])),
        layer.self_attn.k_proj.register_forward_hook(lambda *a: captured.update(k=a[2])),
    ]
    x = torch.tensor([ids], device=loaded.device)
    plain = model(x).logits
    for h in hooks:
        h.remove()
    T, heads = len(ids), model.cfg.n_heads
    head_dim = model.cfg.d_model // heads
    q = captured["q"].cpu().view(1, T, heads, head_dim).transpose(1, 2)[0, 1]  # head 2
    k = captured["k"].cpu().view(1, T, heads, head_dim).transpose(1, 2)[0, 1]
    cos, sin = model.rope_cos[:T].cpu(), model.rope_sin[:T].cpu()
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    scores = (q @ k.T) / math.sqrt(head_dim)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(m.weights[1, 1].cpu(), scores.softmax(-1), atol=1e-5)
    assert torch.allclose(model(x, attention=[]).logits, plain, atol=1e-5)
    assert m.queries == m.keys and m.queries[0] == "<|endoftext|>" and len(m.queries) == T


def test_attention_command_json_and_picture(text_runs, tmp_path, capsys):
    run = text_runs["pile-word"].path
    words = [load(run).tokenizer.id_to_token(i) for i in (5, 6, 7)]  # known words
    code, out, _ = run_cli(capsys, "attention", run, " ".join(words), "--json")
    assert code == 0
    [m] = json.loads(out)["maps"]
    weights = torch.tensor(m["layers"])  # layer -> head -> query -> key
    assert weights.shape == (2, 2, 4, 4) and m["queries"] == ["<EOS>", *words]
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 4), atol=1e-5)
    assert (weights.triu(1) == 0).all()  # nothing above the diagonal
    code, out, _ = run_cli(capsys, "attention", run, "the dog", "--out", tmp_path / "a.png")
    assert code == 0 and (tmp_path / "a.png").stat().st_size > 5000


def test_encoder_decoder_shows_three_kinds_of_attention(tmp_path, words_file):
    from conftest import train_run

    extra = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1"]
    cfg = tiny_config("words-seq2seq", data=words_file, steps=2, extra=extra)
    run, _ = train_run(cfg, tmp_path / "s2s", show_progress=False)
    maps = load(run.path).attention("fin")
    assert [m.name for m in maps] == [
        "encoder self-attention",
        "decoder self-attention",
        "cross-attention",
    ]
    enc, dec, cross = (m.weights for m in maps)
    assert enc.shape == (1, 2, 5, 5) and dec.shape == (1, 2, 4, 4) and cross.shape == (1, 2, 4, 5)
    assert maps[2].keys == ["<sos>", "f", "i", "n", "<eos>"] and maps[2].queries[0] == "<sos>"
    for w in (enc, dec, cross):
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    assert (dec.triu(1) == 0).all()


@pytest.mark.parametrize("preset", ["pile-word", "pile-bpe"])
def test_token_surprise_agrees_with_eval_and_pieces_give_the_text(
    text_runs, tmp_path, capsys, preset
):
    run = text_runs[preset].path
    text = "Once upon a time, the Zyxwv river ran: déjà vu!"
    code, out, _ = run_cli(capsys, "tokens", run, text, "--json")
    tokens = json.loads(out)
    assert code == 0 and "".join(t["piece"] for t in tokens) == text
    (tmp_path / "one.txt").write_text(text)
    code, out, _ = run_cli(capsys, "eval", run, "--data", tmp_path / "one.txt", "--json")
    result = json.loads(out)
    assert result["tokens"] == len(tokens)
    bits = result["loss_per_token"] * result["tokens"] / math.log(2)
    assert sum(t["bits"] for t in tokens) == pytest.approx(bits, rel=1e-5)
    if preset == "pile-word":
        assert any(t.get("unk") for t in tokens)  # Zyxwv is not in a 400-word vocabulary


def test_token_surprise_of_a_word_is_its_m1(tiny_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "tokens", tiny_run.path, "market", "--json")
    tokens = json.loads(out)
    assert [t["piece"] for t in tokens] == [*"market", ""]  # the last: end of word
    (tmp_path / "w.txt").write_text("market\n")
    code, out, _ = run_cli(
        capsys, "eval", tiny_run.path, "--data", tmp_path / "w.txt", "--json", "--samples", 0
    )
    m1 = json.loads(out)["bits_per_char"]
    assert sum(t["bits"] for t in tokens) == pytest.approx(m1 * 7, rel=1e-5)


def test_tokens_without_a_terminal_has_no_colour(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "tokens", tiny_run.path, "fin")
    assert code == 0 and "\x1b[" not in out and "bits in all" in out


def test_a_run_without_a_causal_mask_says_its_loss_is_not_real(text_file, tmp_path, capsys):
    from conftest import train_run

    # AdamW at 1e-2: the cheat learns to copy within 100 steps (Muon, the preset's, is slower here)
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "train.lr=0.01", "train.optimizer=adamw"]
    causal, _ = train_run(
        tiny_config("pile-bpe", data=text_file, steps=100, extra=extra),
        tmp_path / "causal",
        show_progress=False,
    )
    cheat, _ = train_run(
        tiny_config("pile-bpe", data=text_file, steps=100, extra=[*extra, "model.causal=false"]),
        tmp_path / "cheat",
        show_progress=False,
    )
    best = lambda run: min(r["val_loss"] for r in run.metrics() if "val_loss" in r)  # noqa: E731
    assert best(cheat) < 0.5 * best(causal)  # it sees the answer
    for argv in (
        ["info", cheat.path],
        ["eval", cheat.path, "--json"],
        ["generate", cheat.path, "x", "--max-new-tokens", 3],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and "without a causal mask" in out + err
    code, out, err = run_cli(capsys, "info", causal.path)
    assert "causal mask" not in out + err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed")
@pytest.mark.parametrize("which", ["words", "pile-bpe"])
def test_report_renders_from_disk_with_every_part(tiny_run, text_runs, tmp_path, capsys, which):
    playwright = pytest.importorskip("playwright.sync_api")
    run = tiny_run.path if which == "words" else text_runs[which].path
    out = tmp_path / "report.html"
    code, printed, _ = run_cli(capsys, "report", run, "--out", out)
    assert code == 0 and printed.strip() == str(out)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            for part in ("configuration", "loss", "evaluation", "accuracy", "attention", "samples"):
                assert page.is_visible(f"#{part} h2"), part
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            assert len(widths) == 2 and all(w > 100 for w in widths)  # loss and attention
            assert page.eval_on_selector_all("#accuracy rect", "r => r.length") >= 3
            text = page.text_content("body")
            assert "baseline" in text and "Temperature 1.5" in text
            if which == "words":
                assert "The likeliest words" in text and "in none of them" in text
            assert all(u.startswith(("file:", "data:")) for u in requests)  # no network
        finally:
            browser.close()
