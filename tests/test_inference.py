"""The engine against an independent reference: a plain model, full forward, no cache."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from tinylm import load
from tinylm.config import ModelConfig
from tinylm.device import compile_unavailable
from tinylm.inference import Engine, Job, Sampling, SamplingError
from tinylm.inference.sampling import GREEDY_BELOW, choose, make_generator
from tinylm.models import Decoder, Seq2Seq

CTX = 24
CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=48, context_length=CTX)
VOCAB = 50


def reference_decoder_logits(model, prompt, generated):
    """Logits before each generated token (and after the last), recomputed from scratch. The
    window policy restated: a prompt longer than the context keeps its last CTX tokens; when
    the window would grow past the context it keeps its last CTX // 2 tokens."""
    history, start, out = list(prompt), max(0, len(prompt) - CTX), []
    for token in [*generated, None]:
        out.append(model(torch.tensor([history[start:]])).logits[0, -1])
        if token is None:
            return out
        history.append(token)
        if len(history) - start > CTX:
            start = len(history) - CTX // 2


def run_recording_logits(engine, jobs, late=()):
    """Run jobs (and `late` ones, added after three steps) recording each job's logits before
    every token, and what it generated."""
    seen = {id(j): [] for j in [*jobs, *late]}
    tokens = {id(j): [] for j in [*jobs, *late]}
    finish = {}

    def record(events):
        for e in events:
            if e.token is not None:
                tokens[id(e.job)].append(e.token)
            else:
                finish[id(e.job)] = (e.finish, e.error)

    record(engine.add(list(jobs)))
    rounds = 0
    while engine.active or (late and rounds <= 3):
        if rounds == 3:
            record(engine.add(list(late)))
        for job in engine.active:
            seen[id(job)].append(job.logits.clone())
        record(engine.step())
        rounds += 1
    return seen, tokens, finish


def new_job(prompt, max_tokens, temperature=1.0, seed=0, **kw):
    return Job(prompt, max_tokens, Sampling(temperature), make_generator(seed), **kw)


@pytest.mark.parametrize(
    "compile, variant",
    [
        (False, {}),
        (True, {}),
        (False, {"qk_norm": True, "activation": "relu2", "tie_embeddings": True}),
    ],
    ids=["eager", "compiled", "qk-norm-relu2-tied"],
)
@torch.no_grad()
def test_engine_logits_equal_a_plain_decoder_with_windows_sliding_while_others_run(
    compile, variant
):
    """The decode step restates the decoder on fused weights (models/fused.py); the plain
    decoder reads each whole sequence again, for every variant of the model."""
    if compile and (why := compile_unavailable(torch.device("cpu"))):
        pytest.skip(why)
    torch.manual_seed(0)
    model = Decoder(dataclasses.replace(CFG, **variant), VOCAB).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 17, 30, 1)]
    jobs = [new_job(p, 45, seed=i) for i, p in enumerate(prompts[:3])]
    late = [new_job(prompts[3], 30, seed=9)]  # joins while the others run
    engine = Engine(model, rows=4, compile=compile)
    seen, tokens, finish = run_recording_logits(engine, jobs, late)
    for job in [*jobs, *late]:
        assert finish[id(job)] == ("length", None)
        generated = tokens[id(job)]
        assert len(generated) == job.max_tokens  # long enough to slide (context 24)
        reference = reference_decoder_logits(model, job.prompt, generated)
        assert len(seen[id(job)]) == len(generated)
        for got, want in zip(seen[id(job)], reference, strict=False):
            assert (got - want).abs().max() <= 1e-4


@torch.no_grad()
def test_engine_logits_equal_a_plain_encoder_decoder():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="seq2seq", d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=16)
    tokenizer = SimpleNamespace(vocab_size=VOCAB, bos_id=1, eos_id=2, pad_id=0)
    model = Seq2Seq.build(cfg, tokenizer).eval()
    # the decoder reads `<sos> prefix`; the encoder reads `<sos> prefix <eos>`
    prompts = [[1, 7, 8, 9], [1, 11], [1, 20, 21, 22, 23, 24]]
    jobs = [new_job(p, 8, seed=i) for i, p in enumerate(prompts)]
    seen, tokens, _ = run_recording_logits(Engine(model, rows=3), jobs)
    for job in jobs:
        history = list(job.prompt)
        for step, got in enumerate(seen[id(job)]):
            x = torch.tensor([[*job.prompt, 2]])
            want = model.hf(input_ids=x, decoder_input_ids=torch.tensor([history])).logits[0, -1]
            assert (got - want).abs().max() <= 1e-4
            if step < len(tokens[id(job)]):
                history.append(tokens[id(job)][step])


@torch.no_grad()
def test_a_failing_job_ends_alone_and_the_others_are_unchanged():
    torch.manual_seed(0)
    model = Decoder(CFG, VOCAB).eval()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]

    def texts(extra):
        jobs = [new_job(p, 12, seed=i) for i, p in enumerate(prompts)]
        engine = Engine(model, rows=5)
        _, tokens, finish = run_recording_logits(engine, [*jobs[:2], *extra, jobs[2]])
        return [tokens[id(j)] for j in jobs], {id(j): finish[id(j)] for j in extra}

    alone, _ = texts([])
    bad_sampling = new_job([1, 2], 12, banned=(10**6,))  # fails when it samples
    bad_prompt = new_job([1, VOCAB + 5], 12)  # fails inside the batched prefill
    beside, finishes = texts([bad_sampling, bad_prompt])
    assert beside == alone
    assert finishes[id(bad_sampling)][0] == finishes[id(bad_prompt)][0] == "error"
    assert all(error for _, error in finishes.values())


@torch.no_grad()
def test_cancelled_job_frees_its_row_at_the_next_step():
    model = Decoder(CFG, VOCAB).eval()
    engine = Engine(model, rows=1)
    job = new_job([1, 2], 100)
    engine.add([job])
    engine.step()
    job.cancelled.set()
    assert [e.finish for e in engine.step()] == ["cancelled"]
    assert engine.room() == 1 and not engine.active


@torch.no_grad()
def test_a_stop_token_comes_with_its_log_probability_and_alternatives():
    """What a scoring client needs when a job ends at once: the token that ended it."""
    model = Decoder(CFG, VOCAB).eval()
    job = new_job([1, 2], 5, temperature=0.0, logprobs=3)
    job.stop_ids = tuple(range(VOCAB))  # whatever comes first ends the job
    [end] = list(Engine(model).generate([job]))
    logp = model(torch.tensor([[1, 2]])).logits[0, -1].log_softmax(-1)
    assert end.finish == "stop" and end.token is None and end.stop_token == int(logp.argmax())
    assert end.logprob == pytest.approx(float(logp.max()), abs=1e-5)
    assert [i for i, _ in end.top] == logp.topk(3).indices.tolist()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
    ],
)
def test_sampling_values_are_checked_in_one_place(kwargs, field):
    with pytest.raises(SamplingError) as e:
        Sampling(**kwargs)
    assert e.value.field == field


def test_a_tiny_temperature_is_greedy_and_never_overflows():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    g = make_generator(0)
    for t in (1e-40, GREEDY_BELOW / 2, 0.0):
        assert choose(logits, Sampling(t), g) == 1
    assert choose(logits, Sampling(1.0), g, banned=torch.tensor([1])) != 1


def test_top_p_keeps_the_token_that_crosses_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draws = {choose(logits, Sampling(1.0, top_p=0.7), make_generator(s)) for s in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7, so the 0.3 token that crosses it is kept
    draws = {choose(logits, Sampling(1.0, top_k=1), make_generator(s)) for s in range(50)}
    assert draws == {0}


def test_seeds_out_of_range_are_refused():
    with pytest.raises(SamplingError):
        make_generator(10**40)
    make_generator(2**64 - 1)


@pytest.fixture(
    scope="module", params=["decoder", "compiled decoder", "no causal mask", "encoder-decoder"]
)
def word_run(request, tiny_run, words_file, tmp_path_factory):
    """The ways the search reads a model: a tree of key/value caches (a causal decoder; eager,
    or its forward compiled), a full forward per continuation (a decoder without a
    causal mask) and the encoder-decoder. Returns (run, compile)."""
    if request.param == "compiled decoder" and (why := compile_unavailable(torch.device("cpu"))):
        pytest.skip(why)
    if request.param in ("decoder", "compiled decoder"):
        return tiny_run, request.param == "compiled decoder"
    from conftest import tiny_config, train_run

    preset, extra = "words", ["model.causal=false"]
    if request.param == "encoder-decoder":
        preset, extra = "words-seq2seq", ["model.d_model=32", "model.n_heads=2"]
    cfg = tiny_config(preset, data=words_file, steps=40, extra=extra)
    out = tmp_path_factory.mktemp("runs") / request.param.replace(" ", "-")
    return train_run(cfg, out, show_progress=False)[0], False


def test_likeliest_words_are_exact_and_their_probabilities_are_the_chain_rule(word_run):
    """Two prefixes, searched side by side, each checked by itself."""
    word_run, compile = word_run
    loaded = load(word_run.path, compile=compile)
    model, tok = loaded.net, loaded.tokenizer
    found = loaded.complete(["ca", "st"], 5)
    for prefix in ("ca", "st"):
        result = found[prefix]
        assert result.exact and len(result.words) == 5
        probs = [s.probability for s in result.words]
        assert probs == sorted(probs, reverse=True) and len({s.word for s in result.words}) == 5

        def next_logp(history, prefix=prefix):  # read from scratch on this history, no cache
            x = torch.tensor([history], device=loaded.device)
            if isinstance(model, Seq2Seq):
                enc = [[tok.bos_id, *tok.encode(prefix), tok.eos_id]]
                enc = torch.tensor(enc, device=x.device)
                return model.hf(input_ids=enc, decoder_input_ids=x).logits[0, -1].log_softmax(-1)
            return model(x).logits[0, -1].log_softmax(-1)

        def chain_rule(word, prefix=prefix, next_logp=next_logp):
            """p(rest of the word, then <eos> | <sos> prefix), one letter at a time"""
            ids = [tok.bos_id, *tok.encode(word), tok.eos_id]
            with torch.no_grad():
                return sum(
                    float(next_logp(ids[: i + 1])[ids[i + 1]])
                    for i in range(len(prefix), len(ids) - 1)
                )

        for s in result.words:
            assert s.word.startswith(prefix)
            assert math.exp(chain_rule(s.word)) == pytest.approx(s.probability, rel=1e-4)
        # no word of the training list that starts with the prefix beats the fifth suggestion
        fifth = probs[-1]
        for word in [w for w in word_run.read_split("train") if w.startswith(prefix)][:60]:
            assert math.exp(chain_rule(word)) <= fifth * (1 + 1e-4) or word in {
                s.word for s in result.words
            }
