"""A real third-party client end to end: lm-evaluation-harness scores a run's bits per byte on
a few local documents (docs/lm-eval.md), once through transformers on the run directory
(`--model hf`) and once through `tinylm serve` (`--model local-completions`)."""

import json

import pytest
from live_server import LiveServer

from conftest import synthetic_documents
from tinylm import load
from tinylm.evaluate import evaluate_text
from tinylm.serve import create_app

TASK = """\
task: tinylm_docs
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
  cache_dir: {cache}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


def bits_per_byte(task_manager, kind: str, **model_args) -> float:
    import lm_eval

    out = lm_eval.simple_evaluate(
        model=kind,
        model_args=model_args,
        tasks=["tinylm_docs"],
        task_manager=task_manager,
        device="cpu",
        log_samples=False,
        bootstrap_iters=0,
    )
    return out["results"]["tinylm_docs"]["bits_per_byte,none"]


def test_lm_eval_scores_a_run_alike_through_transformers_and_the_server(text_runs, tmp_path):
    from lm_eval.tasks import TaskManager

    run = text_runs["pile-bpe"].path
    docs = synthetic_documents(5, 60, seed=9)  # each a dozen windows of the 32-token context
    docs.append("A literal <|endoftext|> is text, and so is “this” — naïve café 🙂.")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tinylm_docs.yaml").write_text(
        TASK.format(docs=tmp_path / "docs.jsonl", cache=tmp_path / "hf-cache")
    )
    tasks = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    loaded = load(run)
    context = loaded.cfg.model.context_length

    hf = bits_per_byte(tasks, "hf", pretrained=str(run))
    with LiveServer(create_app(run, name="tiny")) as server:
        url = f"{server.url}/v1/completions"
        served = bits_per_byte(
            tasks, "local-completions", model="tiny", base_url=url, tokenizer=str(run)
        )
        # told the context (+2: lm-eval keeps one token for generation, one for context),
        # lm-eval cuts the same windows as with --model hf
        same_windows = bits_per_byte(
            tasks,
            "local-completions",
            model="tiny",
            base_url=url,
            tokenizer=str(run),
            max_length=context + 2,
        )
    ours = evaluate_text(loaded.net, loaded.tokenizer, docs, context=context).bits_per_byte

    assert abs(hf - served) / served <= 0.005
    # lm-eval's default 2048-token requests, longer than the context (each document here fits
    # in one): the server scores them in half-overlapping windows, as `tinylm eval` does
    assert served == pytest.approx(ours, rel=1e-5)
    assert same_windows == pytest.approx(hf, rel=1e-5)
