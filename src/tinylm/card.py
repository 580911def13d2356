"""The model card: README.md in every run directory, with the Hugging Face Hub's metadata
(YAML between `---` lines, huggingface_hub's ModelCardData), so that a run directory is a Hub
model repository as it stands (`tinylm push`).

It says what the model is (task, architecture, parameters, tokenizer), what it was trained on,
for how long and on which machine, its test figures beside the baselines (eval.json, also as
the Hub's `model-index`), sample outputs (the demo, kept in samples.txt), its limits, and how to
load it: tinylm, transformers, and llama.cpp / Ollama where a GGUF export is in the run.

When: written at the end of training (`tinylm.train`, so `tinylm train` too; rank 0; not after
Ctrl-C), rewritten by an evaluation on the test split (`tinylm eval`, `model.evaluate()`, the
report `tinylm train` prints) so that it shows eval.json's figures, and by `tinylm push` just
before it uploads, so that the card shared names its repository and the GGUF files sent with
it. Replaced atomically, as every run file.

`library_name` is transformers, which loads every causal run as it is (a decoder as
AutoModelForCausalLM, the encoder-decoder as EncoderDecoderModel); a run trained without a
causal mask says tinylm, since transformers would compute it causally. The facts no other
shared file records (how training went and on which machine, the split's sizes, the Hub
repository) are kept beside the card in card.json.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from tinylm import __version__
from tinylm.atomic import write_text
from tinylm.card_text import body, gguf_files, hf_config, loader, source
from tinylm.device import autocast_dtype, pick_device
from tinylm.runs import RunDir

CARD, FACTS, SAMPLES = "README.md", "card.json", "samples.txt"


def record_training(run: RunDir, summary: dict, cfg, env, device: str) -> None:
    """Keep, in card.json, how training went and where: what no shared file says otherwise
    (metrics.jsonl and the checkpoint stay at home). Called by rank 0 when training ends."""
    dev = env.device if env.world_size > 1 else pick_device(device)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    facts = run.read_json(FACTS) or {}
    facts["training"] = {
        "steps": summary["step"],
        "seconds": round(summary["elapsed"], 1),
        "targets": summary["tokens"],
        "best_val_loss": summary["best_val"],
        "stopped": summary["reason"],
        "device": device_name(dev),
        "processes": env.world_size,
        "machines": max(1, env.world_size // max(local, 1)),
        "precision": "bf16 autocast" if autocast_dtype(cfg.train.precision, dev) else "fp32",
        "tinylm": __version__,
        "torch": torch.__version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "split": (run.read_json("split/split.json") or {}).get("counts", {}),
    }
    run.write_json(FACTS, facts)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "an Apple GPU (MPS)"
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = models[0] if models else cpu
    return f"a CPU, {cpu} ({os.cpu_count()} cores)"


def write(model, repo: str | None = None, fresh_samples: bool = False) -> Path:
    """Write RUN/README.md for `model` (an api.Model); `repo`: the Hub repository it goes to
    (kept in card.json); `fresh_samples`: run the demo again (new weights) rather than reuse
    samples.txt."""
    from huggingface_hub import ModelCard  # 0.3-0.6 s with httpx: for cards only

    run = model.run
    facts = run.read_json(FACTS) or {}
    if repo:
        facts["repo"] = repo
        run.write_json(FACTS, facts)
    samples = run.path / SAMPLES
    if fresh_samples or not samples.is_file():
        write_text(samples, f"{model.demo()}\n")
    evaluation = run.read_json("eval.json")
    if not evaluation or evaluation.get("data") != "test split":
        evaluation = None
    card = ModelCard(
        f"---\n{metadata(model, evaluation, facts).to_yaml()}\n---\n\n"
        + body(model, evaluation, facts, samples.read_text())
    )
    write_text(run.path / CARD, str(card))
    return run.path / CARD


def metadata(model, evaluation: dict | None, facts: dict):
    """The card's YAML (a ModelCardData): what the Hub indexes (library, pipeline, tags, data,
    figures)."""
    from huggingface_hub import EvalResult, ModelCardData

    cfg, run = model.cfg, model.run
    _, pipeline, _ = loader(run)
    named, dataset_id, language = source(cfg)
    tags = ["tinylm", hf_config(run).get("model_type", "custom"), model.task.name.replace(" ", "-")]
    tags += [f"{cfg.tokenizer.kind}-tokenizer", "from-scratch"]
    tags += ["gguf"] if gguf_files(run) else []
    results = None
    if evaluation:
        results = [
            EvalResult(
                task_type=pipeline,
                dataset_type=dataset_id,
                dataset_name=f"{dataset_id}, held-out test split",
                metric_type=metric,
                metric_name=label,
                metric_value=round(evaluation[key], 4),
            )
            for key, metric, label in model.task.figures
        ]
    return ModelCardData(
        library_name="transformers" if cfg.model.causal else "tinylm",
        pipeline_tag=pipeline,
        tags=tags,
        datasets=[dataset_id] if cfg.data.source.startswith("hf:") else None,
        language=language,
        model_name=facts.get("repo") or run.path.resolve().name,
        eval_results=results,
    )
