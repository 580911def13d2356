"""The model card: written at the end of training, rewritten by an evaluation, read back with
huggingface_hub's own ModelCard; the code it shows runs as written (transformers for the
decoder and the encoder-decoder, llama.cpp for a GGUF export)."""

import json
import re
import shutil

import pytest
from huggingface_hub import ModelCard

import tinylm
from conftest import TINY_MODEL, TINY_TEXT_MODEL, tiny_config, train_run
from tinylm import card
from tinylm.card_text import source
from tinylm.preset import load_preset

try:
    import llama_cpp
except ImportError:
    llama_cpp = None


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def run_snippet(code: str, capsys) -> str:
    capsys.readouterr()
    exec(compile(code, "card", "exec"), {})
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, words_file):
    """A word completer trained through tinylm.train, which writes its card at the end."""
    out = tmp_path_factory.mktemp("card") / "words"
    overrides = dict(o.split("=") for o in TINY_MODEL)
    return tinylm.train(
        "words", data=str(words_file), max_steps=40, out=out, overrides=overrides, progress=False
    )


def test_training_writes_a_card_and_an_evaluation_puts_its_figures_in(trained):
    path = trained.path / "README.md"
    first = ModelCard.load(path)
    assert first.data.library_name == "transformers"
    assert first.data.pipeline_tag == "text-generation"
    assert {"tinylm", "llama", "word-completer", "char-tokenizer"} <= set(first.data.tags)
    assert first.data.eval_results is None and "Not measured yet" in first.text
    model = trained.load()
    samples = (trained.path / "samples.txt").read_text()
    assert samples == f"{model.demo()}\n" and samples.strip() in first.text
    facts = json.loads((trained.path / "card.json").read_text())["training"]
    assert facts["steps"] == 40 and facts["processes"] == 1 and facts["stopped"] == "budget"
    assert facts["split"] == json.loads((trained.path / "split/split.json").read_text())["counts"]
    assert f"{facts['steps']} optimizer steps" in first.text

    result = model.evaluate(samples=20)
    rewritten = ModelCard.load(path)
    figures = {r.metric_type: r.metric_value for r in rewritten.data.eval_results}
    assert figures == {
        "bits_per_character": round(result.bits_per_char, 4),
        "accuracy": round(result.next_char_accuracy, 4),
    }
    assert rewritten.data.eval_results[0].task_type == "text-generation"
    row = f"| **this model** | {result.bits_per_char:.3f} | {result.next_char_accuracy:.1%} |"
    assert row in rewritten.text
    bigram = result.baselines["bigram"]
    assert f"| bigram baseline | {bigram['bits_per_char']:.3f} |" in rewritten.text
    for section in ("## Samples", "## Model", "## Data", "## Training", "## Limits", "## Use it"):
        assert section in rewritten.text
    assert "completes single words" in rewritten.text  # its limits
    params = sum(p.numel() for p in model.net.parameters())
    assert f"{params:,} parameters" in rewritten.text


def test_the_cards_transformers_code_runs_as_written(trained, capsys):
    text = (trained.path / "README.md").read_text()
    [code] = [c for c in code_blocks(text, "python") if "transformers" in c]
    assert "AutoModelForCausalLM" in code
    assert run_snippet(code, capsys).startswith("fin")  # the demo's first prefix, continued


def test_a_gguf_export_is_in_the_card_and_its_code_runs(trained, tmp_path, capsys, monkeypatch):
    run = shutil.copytree(trained.path, tmp_path / "words")
    tinylm.export_gguf(run)
    card.write(tinylm.load(run))
    shown = ModelCard.load(run / "README.md")
    assert "gguf" in shown.data.tags and "ollama create words -f Modelfile" in shown.text
    [code] = [c for c in code_blocks(shown.text, "python") if "llama_cpp" in c]
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed")
    monkeypatch.chdir(run)  # the code names the file as it lies beside the Modelfile
    out = run_snippet(code, capsys)
    assert set(out.strip()) <= set("abcdefghijklmnopqrstuvwxyz")  # the rest of a word


def without_demo(run_path):
    """The card reuses samples.txt: these tests are about other sections than the demo's."""
    (run_path / "samples.txt").write_text("(not this test's subject)\n")


def test_the_encoder_decoders_card_loads_it_with_transformers(tmp_path, words_file, capsys):
    cfg = tiny_config("words-seq2seq", data=words_file, steps=10)
    run, _ = train_run(cfg, tmp_path / "seq2seq")
    without_demo(run.path)
    card.write(tinylm.load(run.path))
    shown = ModelCard.load(run.path / "README.md")
    assert shown.data.pipeline_tag == "text2text-generation"
    assert "encoder-decoder" in shown.data.tags
    [code] = [c for c in code_blocks(shown.text, "python") if "transformers" in c]
    assert "EncoderDecoderModel.from_pretrained" in code
    assert run_snippet(code, capsys).startswith("fin")


def test_a_text_generators_card_says_what_its_tokenizer_loses(text_file, tmp_path):
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=400", "train.eval_every=10"]
    trained, _ = train_run(
        tiny_config("pile-word", data=text_file, steps=10, extra=extra), tmp_path / "w"
    )
    run = trained.path
    without_demo(run)
    card.write(tinylm.load(run))
    shown = ModelCard.load(run / "README.md")
    assert "text-generator" in shown.data.tags and "word-tokenizer" in shown.data.tags
    assert "lowercases text, drops punctuation" in shown.text
    assert "neither coherent nor factual" in shown.text
    # a run written before training facts were kept still gets a card
    assert "## Training" in shown.text and "Optimizer muon" in shown.text


def test_a_run_without_a_causal_mask_is_not_handed_to_transformers(trained, tmp_path):
    run = shutil.copytree(trained.path, tmp_path / "acausal")
    model = tinylm.load(run)
    model.cfg.model.causal = False  # as tinylm.yaml says for such a run
    card.write(model)
    shown = ModelCard.load(run / "README.md")
    assert shown.data.library_name == "tinylm"
    assert "not a language model's" in shown.text and "use tinylm" in shown.text
    assert not [c for c in code_blocks(shown.text, "python") if "transformers" in c]


def test_a_hub_dataset_is_named_in_the_metadata():
    named, dataset, language = source(load_preset("pile-bpe"))
    assert dataset == "NeelNanda/pile-10k" and language == "en"
    assert named == "[NeelNanda/pile-10k](https://huggingface.co/datasets/NeelNanda/pile-10k)"
    assert source(load_preset("words"))[1:] == ("web2", "en")
