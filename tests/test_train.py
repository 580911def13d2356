import json
import math
import os
import signal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_config, train_run
from tinylm import checkpoints, load
from tinylm.errors import UserError
from tinylm.evaluate import ngram_baselines
from tinylm.inference import Sampling
from tinylm.models import decoder
from tinylm.runs import RunDir


def test_a_few_seconds_of_training_beat_the_unigram_baseline(tiny_run):
    result = load(tiny_run.path).evaluate(samples=50).to_dict()
    unigram = result["baselines"]["unigram"]
    assert result["words"] > 100
    assert result["bits_per_char"] < unigram["bits_per_char"] - 0.3
    assert result["next_char_accuracy"] > unigram["next_char_accuracy"]
    assert 0 <= result["sampled_words"]["new"] <= 1
    assert tiny_run.read_json("eval.json") == json.loads(json.dumps(result))  # what was shown


def checkpoint_meta(run: RunDir) -> dict:
    with safe_open(run.checkpoint_path, "pt") as f:
        return json.loads(f.metadata()["tinylm"])["meta"]["state"]


def test_run_directory_has_everything(tiny_run, words_file):
    names = {p.name for p in tiny_run.path.iterdir()}
    assert {
        "tinylm.yaml",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "model.safetensors",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "loss.png",
        "split",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    # the split: disjoint, and all the usable words of the data file
    split = {name: tiny_run.read_split(name) for name in ("train", "val", "test")}
    words = {w for w in words_file.read_text().split() if w.isalpha()}
    assert sum(map(len, split.values())) == len(words) == len(set().union(*split.values()))
    # the tokenizer spells every training word back
    tok = tiny_run.tokenizer()
    assert all(tok.decode(tok.encode(w)) == w for w in split["train"][:200])
    # the log: a training line every 10 steps to 150, a validation every 50 (and the last)
    records = tiny_run.metrics()
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 151, 10))
    assert [r["step"] for r in records if "val_loss" in r] == [50, 100, 150]
    # the checkpoint is the end of training; the weights are the best validation's
    meta = checkpoint_meta(tiny_run)
    best = min(r["val_loss"] for r in records if "val_loss" in r)
    assert meta["step"] == 150 and meta["best_val"] == best and meta["last_eval_step"] == 150
    cfg = tiny_run.config()
    model = tiny_run.load_model(cfg)
    from tinylm.data.batching import PackedWordBatches
    from tinylm.training.loop import validation_loss

    batches = PackedWordBatches(split["val"], tok, 8192, seed=cfg.train.seed).eval_batches()
    cpu = torch.device("cpu")
    assert validation_loss(model, batches, cpu, None, 10**9) == pytest.approx(best, rel=1e-5)
    assert tiny_run.loss_plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def final_weights(run: RunDir) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run.checkpoint_path).items() if k.startswith("model.")}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, words_file, optimizer):
    # dropout: the RNG state must resume too; muon: two optimizers' states in one checkpoint
    extra = ["train.eval_every=20", "model.dropout=0.1", f"train.optimizer={optimizer}"]
    cfg = tiny_config(data=words_file, steps=60, extra=extra)
    whole, summary = train_run(cfg, tmp_path / "whole", show_progress=False)
    assert summary["step"] == 60

    cfg = tiny_config(data=words_file, steps=60, extra=extra)
    part, summary = train_run(
        cfg, tmp_path / "part", should_stop=lambda s: s.step == 25, show_progress=False
    )
    assert summary["reason"] == "interrupted" and summary["step"] == 25
    cfg = tiny_config(data=words_file, steps=60, extra=extra)
    part, summary = train_run(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert summary["step"] == 60

    a, b = final_weights(whole), final_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda run: [(r["step"], r.get("loss"), r.get("val_loss")) for r in run.metrics()]  # noqa: E731
    assert losses(whole) == losses(part)


def test_compiled_training_is_reproducible_and_resumes_bit_for_bit(tmp_path, words_file):
    """As the presets ship (torch.compile on, precision auto, default threads): the same seed
    gives the same weights, and a run interrupted and resumed ends on them too. Without
    torch's deterministic mode Inductor's embedding backward adds token rows into the gradient
    with atomic adds from several threads, in an order that changes from step to step (this
    test failed 3 times in 3 then: the second run differed in 13 tensors)."""
    extra = [
        "train.compile=true",
        "train.precision=auto",
        "train.optimizer=muon",
        "train.eval_every=10",
        "model.n_layers=1",
    ]
    stops = {"a": None, "b": None, "part": lambda s: s.step == 15}
    runs = {}
    for name, should_stop in stops.items():
        cfg = tiny_config(data=words_file, steps=30, extra=extra)
        runs[name], _ = train_run(cfg, tmp_path / name, should_stop=should_stop)
    cfg = tiny_config(data=words_file, steps=30, extra=extra)
    runs["part"], summary = train_run(cfg, tmp_path / "part", resume=True)
    assert summary["step"] == 30
    a = final_weights(runs["a"])
    for name in ("b", "part"):
        other = final_weights(runs[name])
        assert [k for k in a if not torch.equal(a[k], other[k])] == [], name
    assert not torch.are_deterministic_algorithms_enabled()  # restored once training ends


def test_ctrl_c_stops_cleanly_and_keeps_a_checkpoint(tmp_path, words_file):
    def press_ctrl_c(state):
        if state.step == 15:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    cfg = tiny_config(data=words_file, steps=1000)
    run, summary = train_run(cfg, tmp_path / "r", should_stop=press_ctrl_c, show_progress=False)
    assert summary["reason"] == "interrupted" and summary["step"] in (15, 16)  # after that step
    assert checkpoint_meta(run)["step"] == summary["step"]  # the checkpoint is that step's
    assert [r["step"] for r in run.metrics()] == [10]  # logged every 10 steps, no validation
    run.load_model()  # usable weights, although no validation ran
    assert run.loss_plot_path.read_bytes()[:4] == b"\x89PNG"


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tiny_run, monkeypatch):
    cfg = tiny_run.config()
    model = tiny_run.load_model(cfg)
    before = final_weights(tiny_run)

    def crash_mid_write(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 1000)  # half a file, then the machine "dies"
        raise OSError("disk vanished")

    monkeypatch.setattr(decoder, "save_file", crash_mid_write)
    monkeypatch.setattr(checkpoints, "save_file", crash_mid_write)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(OSError):
        tiny_run.save_checkpoint(model, optimizer, {"state": {}})
    with pytest.raises(OSError):
        tiny_run.save_weights(model, tiny_run.tokenizer(cfg))
    monkeypatch.undo()
    after = final_weights(tiny_run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    tiny_run.load_model(cfg)  # still loads
    assert not [p for p in tiny_run.path.iterdir() if p.name.endswith(".tmp")]


def test_early_stopping_with_patience(tmp_path, words_file):
    extra = ["train.lr=0", "train.eval_every=10", "train.patience=2"]  # nothing can improve
    cfg = tiny_config(data=words_file, steps=500, extra=extra)
    run, summary = train_run(cfg, tmp_path / "r", show_progress=False)
    assert summary["reason"] == "early stopping"
    assert summary["step"] == 30  # first validation sets the best, two more without gain


def test_time_budget(tmp_path, words_file):
    cfg = tiny_config(data=words_file, steps=None)
    cfg.train.time = 2.0
    run, summary = train_run(cfg, tmp_path / "r", show_progress=False)
    assert summary["reason"] == "budget"
    assert 2.0 <= summary["elapsed"] < 6.0


def test_without_a_compiler_training_goes_on_uncompiled(tmp_path, words_file, monkeypatch, capsys):
    monkeypatch.setattr("tinylm.device.shutil.which", lambda name: None)
    cfg = tiny_config(data=words_file, steps=3, extra=["train.compile=true"])
    run, summary = train_run(cfg, tmp_path / "r", show_progress=False, device="cpu")
    assert summary["step"] == 3
    assert "training without torch.compile: no C++ compiler" in capsys.readouterr().err


def test_seq2seq_trains_and_completes_a_word(tmp_path, words_file):
    extra = [
        "model.d_model=32",
        "model.n_heads=2",
        "model.dropout=0",
        "train.lr=3e-3",
        "train.eval_every=40",
    ]
    cfg = tiny_config("words-seq2seq", data=words_file, steps=120, extra=extra)
    run, summary = train_run(cfg, tmp_path / "s2s", show_progress=False)
    vals = [r["val_loss"] for r in run.metrics() if "val_loss" in r]
    unigram = ngram_baselines(run.read_split("train"), run.read_split("val"))["unigram"]
    assert vals[-1] < vals[0]
    assert vals[-1] < unigram["bits_per_char"] * math.log(2)  # beyond letter frequencies
    loaded = load(run.path)
    outs = loaded.sample(["fin"], Sampling(1.0), n=4, seed=0)
    assert all(o.text.isalpha() or o.text == "" for o in outs)
    assert any(o.finished for o in outs)
    # Greedy completion against the argmax chain computed here by plain forward passes: the
    # encoder reads <sos> t r a <eos>, the decoder <sos> t r a, then takes its likeliest symbol
    # (never <pad>, <sos> or space) until <eos>, at most 15 - 3 letters.
    tok, model = run.tokenizer(), loaded.net
    enc = torch.tensor([[tok.bos_id, *tok.encode("tra"), tok.eos_id]], device=loaded.device)
    dec, letters, finished = [tok.bos_id, *tok.encode("tra")], [], False
    with torch.no_grad():
        while len(letters) < 12:
            logits = model.hf(
                input_ids=enc,
                attention_mask=torch.ones_like(enc),
                decoder_input_ids=torch.tensor([dec], device=enc.device),
            ).logits[0, -1]
            logits[[tok.pad_id, tok.bos_id, tok.tok.token_to_id(" ")]] = -math.inf
            nxt = int(logits.argmax())
            if nxt == tok.eos_id:
                finished = True
                break
            dec.append(nxt)
            letters.append(nxt)
    [greedy] = loaded.sample(["tra"], Sampling(0.0))
    assert (greedy.text, greedy.finished) == (tok.decode(letters), finished)
    top = loaded.complete("tra", 3)["tra"]
    assert len(top.words) == 3 and all(w.word.startswith("tra") for w in top.words)


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["decoder", "seq2seq"])
def test_accumulated_gradients_equal_the_whole_batchs(words_file, arch):
    """fp32: a batch cut into micro-batches gives the gradient of the batch in one pass, also
    when micro-batches hold different numbers of targets (seq2seq pads its targets)."""
    from tinylm.config import ModelConfig
    from tinylm.models import MODELS, build_model
    from tinylm.tokenizer import build_char
    from tinylm.training.loop import forward_backward

    words = words_file.read_text().split()
    tok = build_char(words)
    cfg = ModelConfig(arch=arch, d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=16)
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    model.eval()  # no dropout: the two ways must see the same function
    batch = MODELS[arch].word_batches(words, tok, 600, seed=0).batch(3)
    rows = len(batch["targets"])
    assert rows >= 8
    cpu = torch.device("cpu")
    whole_loss, n = forward_backward(None, model, batch, 10**6, cpu, None)
    whole = gradients(model)
    model.zero_grad(set_to_none=True)
    width = batch["targets"].shape[1]
    parts_loss, m = forward_backward(None, model, batch, 3 * width, cpu, None)  # 3 rows a pass
    parts = gradients(model)
    assert n == m == int((batch["targets"] != -100).sum())
    assert abs(float(whole_loss) - float(parts_loss)) <= 1e-6
    assert whole.keys() == parts.keys()
    for name in whole:
        assert (whole[name] - parts[name]).abs().max() <= 1e-6, name


def test_ddp_averages_once_per_step_on_the_last_micro_batch():
    from contextlib import contextmanager

    from tinylm.training.loop import forward_backward

    class FakeDDP(torch.nn.Module):  # records which passes run outside no_sync
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.in_no_sync, self.passes = False, []

        @contextmanager
        def no_sync(self):
            self.in_no_sync = True
            yield
            self.in_no_sync = False

        def forward(self, input_ids, targets):
            from tinylm.models.decoder import ModelOutput

            self.passes.append("no_sync" if self.in_no_sync else "sync")
            return ModelOutput(logits=input_ids, loss=self.w * input_ids.float().mean())

    ddp = FakeDDP()
    batch = {"input_ids": torch.arange(32).view(8, 4), "targets": torch.zeros(8, 4).long()}
    forward_backward(ddp, ddp, batch, 8, torch.device("cpu"), None)  # 2 rows a pass
    assert ddp.passes == ["no_sync", "no_sync", "no_sync", "sync"]
    assert float(ddp.w.grad) == pytest.approx(float(torch.arange(32).float().mean()))


def test_the_global_batch_is_split_exactly_over_ranks_and_micro_batches():
    from conftest import TINY_TEXT_MODEL
    from tinylm.data.splits import TextData

    cfg = tiny_config("pile-bpe", extra=TINY_TEXT_MODEL)  # 512 tokens, windows of 32
    assert TextData.batch_split(cfg, 1) == (512, 512)  # automatic: the whole batch in one pass
    assert TextData.batch_split(cfg, 4) == (128, 128)
    cfg.train.micro_batch_tokens = 64
    assert TextData.batch_split(cfg, 2) == (256, 64)  # 2 ranks x 4 micro-batches x 64 = 512
    cfg.train.batch_tokens, cfg.train.micro_batch_tokens = 2**20, 0
    assert TextData.batch_split(cfg, 2) == (2**19, 16_384)  # passes of at most 16,384 tokens
    for world, micro in ((3, 0), (1, 48), (1, 96)):
        cfg.train.batch_tokens, cfg.train.micro_batch_tokens = 512, micro
        with pytest.raises(UserError):
            TextData.batch_split(cfg, world)


def test_muon_orthogonalizes_the_hidden_matrices_and_adamw_the_rest(words_file, tmp_path):
    from tinylm.optim import MuonAdamW

    cfg = tiny_config(data=words_file, steps=40, extra=["train.optimizer=muon"])
    run, summary = train_run(cfg, tmp_path / "m", show_progress=False)
    first = next(r["loss"] for r in run.metrics() if "loss" in r)  # steps 1-10
    assert summary["best_val"] < first - 0.3  # it learns
    model = run.load_model()
    opt = MuonAdamW(model, cfg.train)
    muon, adamw = opt.parts
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon and all(n.endswith("proj.weight") for n in in_muon)
    assert "model.embed_tokens.weight" not in in_muon
    assert len(opt.param_groups) == len(muon.param_groups) + len(adamw.param_groups)


def test_batched_muon_gives_torch_muons_updates():
    from tinylm.optim import Muon

    torch.manual_seed(0)
    shapes = [(24, 24), (24, 24), (72, 24), (24, 72), (72, 24), (16, 40)]  # wide, tall, alone
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    before = [p.detach().clone() for p in ours]
    mine = Muon(ours, lr=3e-3, weight_decay=0.1)
    reference = torch.optim.Muon(theirs, lr=3e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        mine.step()
        reference.step()
    for p, q, p0 in zip(ours, theirs, before, strict=True):
        # bit for bit on the x86 CPUs tried; a BLAS may round a batched bf16 matmul otherwise
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        assert (p - p0).abs().max() > 1e-3  # three steps of about 5e-3 each


def test_newton_schulz_runs_in_the_runs_precision(words_file):
    # Newton–Schulz is an odd polynomial of the matrix: it keeps the singular vectors and moves
    # each singular value towards 1. In fp32 that holds to fp32's rounding; bf16 is far coarser.
    from tinylm.models import build_model
    from tinylm.optim import MuonAdamW, orthogonalize
    from tinylm.tokenizer import build_char

    torch.manual_seed(0)
    g = torch.randn(3, 24, 72)
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    off_diagonal = {}
    for dtype in (torch.float32, torch.bfloat16):
        core = u.mT @ orthogonalize(g, dtype).double() @ vh.mT  # diagonal if the vectors are kept
        diagonal = torch.diagonal(core, dim1=-2, dim2=-1)
        off_diagonal[dtype] = (core - torch.diag_embed(diagonal)).abs().max()
        assert 0.6 < diagonal.min() and core.max() < 1.3
    # fp32 keeps the singular vectors to 1e-4, which bf16 would not: the bound tells them apart
    assert off_diagonal[torch.float32] < 1e-4 < off_diagonal[torch.bfloat16] < 5e-2
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        cfg = tiny_config(
            data=words_file, extra=["train.optimizer=muon", f"train.precision={precision}"]
        )
        opt = MuonAdamW(build_model(cfg.model, build_char(["abc"])), cfg.train)
        assert opt.parts[0].ns_dtype == dtype
