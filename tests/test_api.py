"""The Python API: what a notebook does, against the command line and independent
computations."""

import json
import math
import time

import pytest
import torch

import tinylm
from conftest import TINY_MODEL
from tinylm.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, words_file):
    """A word completer trained through tinylm.train, overrides given as a dict."""
    out = tmp_path_factory.mktemp("api") / "w"
    overrides = dict(o.split("=") for o in TINY_MODEL)
    return tinylm.train(
        "words", data=str(words_file), max_steps=60, out=out, overrides=overrides, progress=False
    )


def test_train_returns_a_run_with_its_metrics_and_summary(api_run):
    assert isinstance(api_run, tinylm.Run) and api_run.summary["step"] == 60
    assert [r["step"] for r in api_run.metrics if "val_loss" in r] == [50, 60]
    assert api_run.config.model.d_model == 32 and api_run.main
    png = api_run.plot()._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_complete_equals_the_command_line_and_answers_in_milliseconds(api_run, capsys):
    model = api_run.load()
    found = model.complete(["fin", "inv"], top=5)
    assert [w.prefix for w in found] == ["fin", "inv"] and len(found["fin"].words) == 5
    probs = [w.probability for w in found["fin"].words]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    code, out, _ = run_cli(capsys, "complete", api_run.path, "fin", "inv", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines == [json.loads(x) for w in found for x in w.json_lines()]
    assert run_cli(capsys, "complete", api_run.path, "fin", "inv")[1] == f"{found}\n"
    assert "fin" in found._repr_html_()
    start = time.perf_counter()
    for _ in range(5):
        model.complete("tra")
    assert (time.perf_counter() - start) / 5 < 0.5  # a loaded model: no reloading per call


def test_a_model_loaded_under_inference_mode_answers_as_one_loaded_outside(api_run, text_runs):
    """Notebooks wrap inference in torch.inference_mode(); its tensors keep no version."""
    words, text = api_run.load(), tinylm.load(text_runs["pile-bpe"].path)
    with torch.inference_mode():
        words_inside, text_inside = api_run.load(), tinylm.load(text_runs["pile-bpe"].path)
        found = words_inside.complete("fin", top=5)
        g = text_inside.generate("Once upon", max_new_tokens=8, seed=1)
    assert str(found) == str(words.complete("fin", top=5))
    assert g.text == text.generate("Once upon", max_new_tokens=8, seed=1).text


def test_generate_and_stream_agree_and_a_seed_gives_one_text(text_runs):
    model = tinylm.load(text_runs["pile-bpe"].path)
    g = model.generate("Once upon", max_new_tokens=12, temperature=0.8, seed=1)
    assert isinstance(g, tinylm.Generation) and str(g).startswith("Once upon")
    streamed = "".join(model.stream("Once upon", max_new_tokens=12, temperature=0.8, seed=1))
    assert streamed == g.text and g.tokens <= 12
    assert model.generate("Once upon", max_new_tokens=12, seed=1).text == g.text
    assert "<b>Once upon</b>" in g._repr_html_()


def test_evaluate_equals_eval_json(api_run, capsys):
    model = api_run.load()
    result = model.evaluate(samples=20)
    assert isinstance(result, tinylm.WordEvaluation)
    code, out, _ = run_cli(capsys, "eval", api_run.path, "--json", "--samples", 20)
    assert code == 0 and json.loads(out) == json.loads(json.dumps(result.to_dict()))
    assert "bits per character" in result._repr_html_() and "Test words" in str(result)


def test_views_inside_the_model(api_run, text_runs, capsys):
    model = api_run.load()
    att = model.attention("tra")
    [m] = att
    assert m.queries == ["<sos>", "t", "r", "a"] and m.weights.shape == (2, 2, 4, 4)
    assert att._repr_png_()[:4] == b"\x89PNG"
    tokens = model.tokens("market")
    assert [t.piece for t in tokens] == [*"market", ""] and "<span" in tokens._repr_html_()
    run = text_runs["pile-bpe"].path
    text = tinylm.load(run).tokens("The river")
    assert "".join(t.piece for t in text) == "The river"
    code, out, _ = run_cli(capsys, "tokens", run, "The river", "--json")
    assert code == 0 and json.loads(out) == text.to_dict()


def test_a_mistake_raises_one_sentence(api_run, text_runs):
    with pytest.raises(tinylm.UserError, match="knows"):
        api_run.load().complete("fi9")
    with pytest.raises(tinylm.UserError, match="word completers"):
        tinylm.load(text_runs["pile-bpe"].path).complete("the")
    with pytest.raises(tinylm.UserError, match="temperature"):
        api_run.load().generate("fin", temperature=3)
    with pytest.raises(tinylm.UserError, match="Unknown preset"):
        tinylm.train("wrods")


def test_reading_a_long_generation_costs_time_linear_in_its_length(text_runs):
    """The detokenizer gives each new token's text without decoding the history again: reading
    8,000 tokens takes about four times as long as reading 2,000, not sixteen times."""
    tok = tinylm.load(text_runs["pile-bpe"].path).tokenizer
    ids = torch.randint(1, tok.vocab_size, (8000,), generator=torch.Generator().manual_seed(0))
    ids = ids.tolist()

    def read(n: int) -> float:
        best = math.inf
        for _ in range(3):
            reader, start = tok.detokenizer(), time.perf_counter()
            text = "".join(reader.add(i).text for i in ids[:n]) + reader.flush()
            best = min(best, time.perf_counter() - start)
        assert text == tok.decode(ids[:n])
        return best

    assert read(8000) / read(2000) < 8
