"""The model card's text (card.py writes it): what the model is, its test figures beside the
baselines, samples, the model, its data and training, its limits, and how to load it with
tinylm, transformers, and llama.cpp / Ollama where a GGUF export is in the run directory. Each
section reads the run's files and the loaded model (an api.Model); the transformers code is
tested to run as written (tests/test_card.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tinylm.models import param_breakdown
from tinylm.runs import RunDir

# config.json's architecture -> (how transformers loads it, the Hub's pipeline tag, what it is)
LOADERS = {
    "LlamaForCausalLM": (
        "AutoModelForCausalLM",
        "text-generation",
        "a decoder-only transformer in Llama's layout (rotary positions, RMSNorm, a gated "
        "feed-forward)",
    ),
    "Qwen3ForCausalLM": (
        "AutoModelForCausalLM",
        "text-generation",
        "a decoder-only transformer in Qwen3's layout (Llama's, with RMSNorm on each head's "
        "queries and keys)",
    ),
    "EncoderDecoderModel": (
        "EncoderDecoderModel",
        "text2text-generation",
        "an encoder-decoder: Hugging Face's EncoderDecoderModel from two BertConfigs",
    ),
}
TOKENIZERS = {
    "char": "single characters (those of the training words) and `<pad>`, `<sos>`, `<eos>`",
    "word": "whole words, lowercased and split on whitespace and punctuation, with `<UNK>` for "
    "the rest and `<EOS>`",
    "bpe": "byte-level BPE trained on the training split (no text is unknown to it)",
}
TOKENIZER_LIMITS = {
    "char": "It knows only the characters of its training words; a prefix with another is refused.",
    "word": "Its word-level tokenizer lowercases text, drops punctuation and turns every word "
    "outside its vocabulary into `<UNK>`: the model reads and writes neither case nor "
    "punctuation, nor a word it did not keep.",
    "bpe": "",
}
SOURCES = {"words": ("the web2 word list (NLTK's `words` corpus)", "web2", "en")}


def hf_config(run: RunDir) -> dict:
    return json.loads((run.path / "config.json").read_text())


def loader(run: RunDir) -> tuple[str, str, str]:
    """(how transformers loads the run, the Hub's pipeline tag, what it is)."""
    arch = (hf_config(run).get("architectures") or ["?"])[0]
    return LOADERS.get(arch, LOADERS["LlamaForCausalLM"])


def source(cfg) -> tuple[str, str, str | None]:
    """(how the card names the data, its dataset id for model-index, its language or None)."""
    src = cfg.data.source
    if src in SOURCES:
        return SOURCES[src]
    if src.startswith("hf:"):
        name = src[3:]
        english = name == "NeelNanda/pile-10k"  # the text presets' data
        return f"[{name}](https://huggingface.co/datasets/{name})", name, "en" if english else None
    return f"a local file or folder, `{Path(src).name}`", Path(src).stem, None


def gguf_files(run: RunDir) -> list[str]:
    return sorted(p.name for p in run.path.glob("*.gguf"))


def body(model, evaluation: dict | None, facts: dict, samples: str) -> str:
    """The card's text, section by section."""
    run, task = model.run, model.task
    params = param_breakdown(model.net)
    _, _, what = loader(run)
    name = facts.get("repo") or run.path.resolve().name
    intro = (
        f"A {task.name} trained from scratch with tinylm: {task.purpose}. It is {what}, "
        f"{params['total']:,} parameters."
    )
    parts = [f"# {name}", intro]
    parts += figures_section(model, evaluation)
    parts += ["## Samples", f"After training (seed 0):\n\n```text\n{samples.rstrip()}\n```"]
    parts += model_section(model, params) + data_section(model, facts)
    parts += training_section(model, facts) + limits_section(model)
    parts += use_section(model, facts)
    return "\n\n".join(parts) + "\n"


def number(value: float, metric: str) -> str:
    if metric == "accuracy":
        return f"{value:.1%}"
    return f"{value:,.1f}" if metric == "perplexity" else f"{value:.3f}"


def figures_section(model, evaluation: dict | None) -> list[str]:
    """The test figures beside the baselines, as eval.json holds them."""
    task = model.task
    if evaluation is None:
        if model.cfg.data.test_fraction <= 0:
            return ["## Test figures", "This run kept no test split (data.test_fraction 0)."]
        return ["## Test figures", "Not measured yet: `tinylm eval RUN` measures them."]
    head = "| | " + " | ".join(label for _, _, label in task.figures) + " |"
    rule = "|---|" + "---:|" * len(task.figures)
    rows = [("**this model**", evaluation)]
    rows += [(f"{b} baseline", v) for b, v in evaluation.get("baselines", {}).items()]
    lines = [
        f"| {label} | "
        + " | ".join(number(v[k], m) if k in v else "–" for k, m, _ in task.figures)
        + " |"
        for label, v in rows
    ]
    count = evaluation.get(task.items, 0)
    said = f"On {count:,} held-out test {task.items}, never trained on (eval.json):"
    return ["## Test figures", said, "\n".join([head, rule, *lines])]


def model_section(model, params: dict) -> list[str]:
    cfg, tok = model.cfg, model.tokenizer
    m = cfg.model
    arch = hf_config(model.run).get("architectures", ["?"])[0]
    parts = ", ".join(f"{part} {n:,}" for part, n in params.items() if part != "total")
    rows = [
        ("architecture", f"{loader(model.run)[2]} (`{arch}` in config.json)"),
        ("parameters", f"{params['total']:,} ({parts})"),
        (
            "shape",
            f"width {m.d_model}, {m.n_layers} layers, {m.n_heads} heads, feed-forward "
            f"{m.d_ff}, context {m.context_length} tokens",
        ),
        (
            "tokenizer",
            f"{cfg.tokenizer.kind}: {TOKENIZERS[cfg.tokenizer.kind]}; {tok.vocab_size:,} entries",
        ),
        ("causal mask", "yes" if m.causal else "**no**: every position sees the whole input"),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return ["## Model", table + "\n\nThe whole configuration is in tinylm.yaml."]


def data_section(model, facts: dict) -> list[str]:
    named, _, _ = source(model.cfg)
    split = facts.get("training", {}).get("split") or {}
    counts = ", ".join(f"{n:,} {part}" for part, n in split.items())
    unit = model.task.items
    said = (
        f"{named[0].upper()}{named[1:]}, split by tinylm into training, validation and test {unit}"
    )
    return ["## Data", said + (f" ({counts})." if counts else ".")]


def counted(n: int, thing: str) -> str:
    return (
        f"{n} {thing}" if n == 1 else f"{n} {thing}es" if thing.endswith("s") else f"{n} {thing}s"
    )


REASONS = {"budget": "its budget", "early stopping": "early stopping (no better validation)"}


def training_section(model, facts: dict) -> list[str]:
    t, c = facts.get("training"), model.cfg.train
    recipe = (
        f"Optimizer {c.optimizer}, peak learning rate {c.lr:g}, {c.schedule} schedule, "
        f"{c.batch_tokens:,} tokens a step, seed {c.seed}."
    )
    if not t:
        return ["## Training", recipe]
    said = (
        f"{t['steps']:,} optimizer steps over {t['targets']:,} {model.task.data.unit} in "
        f"{t['seconds']:,.0f} s of training (validation excluded), stopped by "
        f"{REASONS.get(t['stopped'], t['stopped'])}; best validation loss "
        f"{t['best_val_loss']:.4f} nats. On {t['device']}: {counted(t['processes'], 'process')} "
        f"on {counted(t['machines'], 'machine')}, {t['precision']}; tinylm {t['tinylm']}, PyTorch "
        f"{t['torch']}; finished {t['finished']}."
    )
    loss = (
        "\n\n![Training and validation loss](loss.png)"
        if model.run.loss_plot_path.is_file()
        else ""
    )
    return ["## Training", f"{said} {recipe}{loss}"]


def limits_section(model) -> list[str]:
    kind = model.cfg.tokenizer.kind
    notes = [model.caveat, model.task.limits, TOKENIZER_LIMITS[kind]]
    return ["## Limits", "\n".join(f"- {n}" for n in notes if n)]


CAUSAL_LM = """```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{ref}")
tokenizer = AutoTokenizer.from_pretrained("{ref}")
# tinylm reads a prompt after its start token, which encoding does not add
ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer({prompt!r}, add_special_tokens=False).input_ids]])
out = model.generate(
    ids, attention_mask=torch.ones_like(ids), max_new_tokens={n}, do_sample=True,
    temperature=0.8, top_p=0.95, pad_token_id=tokenizer.eos_token_id,
)
print(tokenizer.decode(out[0, 1:], skip_special_tokens=True))
```"""
ENCODER_DECODER = """```python
import torch
from transformers import AutoTokenizer, EncoderDecoderModel

model = EncoderDecoderModel.from_pretrained("{ref}")
tokenizer = AutoTokenizer.from_pretrained("{ref}")
letters = tokenizer({prompt!r}, add_special_tokens=False).input_ids
bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
# the encoder reads <sos> prefix <eos>; the decoder writes on after <sos> prefix
out = model.generate(
    input_ids=torch.tensor([[bos, *letters, eos]]), decoder_input_ids=torch.tensor([[bos, *letters]]),
    max_new_tokens={n}, do_sample=True, temperature=0.8, top_p=0.95, eos_token_id=eos,
    pad_token_id=tokenizer.pad_token_id,
)
print(tokenizer.decode(out[0, 1:], skip_special_tokens=True))
```"""
SNIPPETS = {"AutoModelForCausalLM": CAUSAL_LM, "EncoderDecoderModel": ENCODER_DECODER}
GGUF = """```bash
{fetch}ollama create {name} -f Modelfile
ollama run {name} {quoted}
```

```python
from llama_cpp import Llama  # pip install llama-cpp-python

llm = Llama("{file}", n_ctx={ctx}, verbose=False)  # it puts the start token first, as tinylm
print(llm({prompt!r}, max_tokens={n}, temperature=0.8, top_k=0, top_p=1.0)["choices"][0]["text"])
```"""


def use_section(model, facts: dict) -> list[str]:
    """How to load it: tinylm, transformers (what loads a causal run as it is), and llama.cpp /
    Ollama when a GGUF export is in the run directory."""
    run, task, cfg = model.run, model.task, model.cfg
    repo = facts.get("repo")
    ref = repo or str(run.path)
    prompt = (cfg.demo or task.default_demo)[0]
    n = task.max_new_tokens(task.prompt(prompt), None)
    named = f"hf:{repo}" if repo else ref
    parts = [
        "## Use it",
        f"With tinylm (`tinylm {task.command} --help` for its options):",
        f"```bash\ntinylm {task.command} {shlex.quote(named)} {shlex.quote(prompt)}\n```",
        f'```python\nimport tinylm\n\nmodel = tinylm.load("{named}")\n'
        f"print(model.{task.command}({prompt!r}))\n```",
    ]
    hf_class = loader(run)[0]
    if cfg.model.causal:
        parts += [
            f"With transformers, as `{hf_class}` (the same logits as tinylm's):",
            SNIPPETS[hf_class].format(ref=ref, prompt=prompt, n=n),
        ]
    else:
        parts.append(
            "transformers loads its weights but would compute them with a causal mask, which "
            "this run was trained without: use tinylm."
        )
    return parts + gguf_section(run, repo, prompt, n, cfg.model.context_length)


def gguf_section(run: RunDir, repo: str | None, prompt: str, n: int, ctx: int) -> list[str]:
    """llama.cpp (through llama-cpp-python) and Ollama, on the GGUF file the Modelfile names."""
    files = gguf_files(run)
    if not files:
        return []
    modelfile = run.path / "Modelfile"
    file = modelfile.read_text().split()[1].removeprefix("./") if modelfile.is_file() else files[0]
    name = (repo or run.path.resolve().name).split("/")[-1].lower()
    fetch = f"hf download {repo} {file} Modelfile --local-dir {name} && cd {name}\n" if repo else ""
    listed = ", ".join(f"`{f}`" for f in files)
    said = (
        f"With llama.cpp or Ollama, from its GGUF export ({listed}, written by `tinylm export "
        f"RUN --gguf`; the Modelfile beside it names `{file}`):"
    )
    text = GGUF.format(
        fetch=fetch, name=name, quoted=shlex.quote(prompt), file=file, ctx=ctx, prompt=prompt, n=n
    )
    return [said, text]
