"""`tinylm report RUN`: one self-contained HTML page about a run, to open from disk or share.

Configuration and parameters, loss curves, the evaluation beside its baselines, accuracy per
letter (word completers) or by position in the context (text), an attention picture for a
demo prompt, samples at three temperatures (and the likeliest words), and where sampled words
come from. Pictures are embedded (PNG data URIs, inline SVG): the page needs no network.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import torch

from tinylm.inference import LoadedRun, Sampling

TEMPERATURES = (0.5, 1.0, 1.5)
STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.2rem .7rem;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}pre{background:#f6f6f6;padding:.8rem;overflow:auto}
img{max-width:100%}.warn{background:#fde8e8;border:1px solid #e99;padding:.8rem}.muted{color:#666}"""


def write_report(loaded: LoadedRun, out: Path) -> Path:
    from tinylm.atomic import write_text

    sections = [
        ("configuration", "Configuration and parameters", _configuration(loaded)),
        ("loss", "Training and validation loss", _loss(loaded)),
        ("evaluation", "Evaluation, beside baselines", _evaluation(loaded)),
        ("accuracy", "Accuracy per letter" if loaded.task.words else "Accuracy by position",
         _accuracy(loaded)),
        ("attention", "Attention", _attention(loaded)),
        ("samples", "Samples", _samples(loaded)),
    ]  # fmt: skip
    name = html.escape(loaded.run.path.resolve().name)
    body = [f"<h1>{name}: a {loaded.task.kind}</h1>", _warning(loaded)]
    for anchor, title, content in sections:
        body.append(f'<section id="{anchor}"><h2>{title}</h2>{content}</section>')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip
    out = Path(out)
    write_text(out, page)
    return out


def _warning(loaded: LoadedRun) -> str:
    return f'<p class="warn">{html.escape(loaded.caveat)}</p>' if loaded.caveat else ""


def _configuration(loaded: LoadedRun) -> str:
    from tinylm.models import param_breakdown

    rows = "".join(f'<tr><td>{part}</td><td class="n">{n:,}</td></tr>'
                   for part, n in param_breakdown(loaded.model).items())  # fmt: skip
    yaml = html.escape(loaded.cfg.to_yaml())
    return f"<table><tr><th>part</th><th>parameters</th></tr>{rows}</table><pre>{yaml}</pre>"


def _loss(loaded: LoadedRun) -> str:
    from tinylm.plots import plot_losses

    records = loaded.run.metrics()
    if not records:
        return '<p class="muted">No metrics logged yet.</p>'
    return _png(lambda path: plot_losses([(loaded.run.path.name, records)], path), "loss curves")


def _evaluation(loaded: LoadedRun) -> str:
    result = _eval_result(loaded)
    if result is None:
        return '<p class="muted">This run has no test split (data.test_fraction was 0).</p>'
    if loaded.task.words:
        rows = [("model", result["bits_per_char"], result["next_char_accuracy"])]
        rows += [(f"{k} baseline", v["bits_per_char"], v["next_char_accuracy"])
                 for k, v in result["baselines"].items()]  # fmt: skip
        head = "<tr><th></th><th>bits per character (M1)</th><th>next-character accuracy (M2)</th></tr>"  # fmt: skip
        body = "".join(f'<tr><td>{n}</td><td class="n">{a:.3f}</td><td class="n">{b:.3f}</td></tr>'
                       for n, a, b in rows)  # fmt: skip
        table = f"<table>{head}{body}</table>"
        s = result.get("sampled_words")
        if s:
            table += (f"<p>Of {s['samples']} words sampled at temperature 1: {s['in_train']:.1%} "
                      f"are in the training split, {s['in_val']:.1%} in validation, "
                      f"{s['in_test']:.1%} in test, and {s['new']:.1%} in none of them (new), "
                      f"e.g. {html.escape(', '.join(s['examples'][:10]))}.</p>")  # fmt: skip
        return f"<p>{result['words']:,} test words.</p>" + table
    rows = [("model", result["bits_per_byte"])]
    rows += [(f"{k} baseline", v["bits_per_byte"]) for k, v in result.get("baselines", {}).items()]
    body = "".join(f'<tr><td>{n}</td><td class="n">{v:.4f}</td></tr>' for n, v in rows)
    return (f"<p>{result['documents']:,} test documents, {result['tokens']:,} tokens: "
            f"{result['loss_per_token']:.4f} nats per token (perplexity {result['perplexity']:,.1f}), "
            f"top-1 {result['top1_accuracy']:.1%}, top-5 {result['top5_accuracy']:.1%}"
            f"{', <UNK> ' + format(result['unk_rate'], '.1%') if result['unk_rate'] else ''}.</p>"
            f"<table><tr><th></th><th>bits per byte</th></tr>{body}</table>")  # fmt: skip


def _eval_result(loaded: LoadedRun) -> dict | None:
    """The run's test figures: eval.json when it holds them, else computed (and saved)."""
    from tinylm.evaluate import evaluate_run

    result = loaded.run.read_json("eval.json")
    if result and result.get("data") == "test split":
        return result
    if loaded.cfg.data.test_fraction <= 0:
        return None
    return evaluate_run(loaded.run)


def _accuracy(loaded: LoadedRun) -> str:
    if loaded.task.words:
        result = _eval_result(loaded)
        if result is None:
            return '<p class="muted">No test split.</p>'
        letters = result["accuracy_per_letter"]
        return _bars(list(letters), list(letters.values()), "next-character accuracy")
    labels, values = accuracy_by_position(loaded)
    if not labels:
        return '<p class="muted">No test documents.</p>'
    return _bars(labels, values, "top-1 accuracy of the token at each position of the context")


@torch.no_grad()
def accuracy_by_position(loaded: LoadedRun, docs: int = 200, buckets: int = 8):
    """Top-1 accuracy by position in the context, on the first window of test documents:
    how much a token's prediction gains from the history before it."""
    from tinylm import training_data
    from tinylm.inference.scoring import score

    corpus, split = training_data.text_split(loaded.run, loaded.cfg)
    texts = [corpus.documents[i] for i in split["test"][:docs]]
    ctx, tok = loaded.cfg.model.context_length, loaded.tokenizer
    sequences = [[tok.bos_id, *ids][: ctx + 1] for ids in tok.encode_batch(texts)]
    sequences = [s for s in sequences if len(s) > 1]
    if not sequences:
        return [], []
    hits, counts = torch.zeros(ctx), torch.zeros(ctx)
    for s in score(loaded.model, sequences, ctx, top=1):
        n = len(s.targets)
        hits[:n] += (s.top_ids[:, 0] == s.targets).float()
        counts[:n] += 1
    width = -(-ctx // buckets)
    labels, values = [], []
    for b in range(0, ctx, width):
        if counts[b : b + width].sum():
            labels.append(f"{b + 1}–{min(ctx, b + width)}")
            values.append(float(hits[b : b + width].sum() / counts[b : b + width].sum()))
    return labels, values


def _attention(loaded: LoadedRun) -> str:
    from tinylm.explain import attention
    from tinylm.plots import plot_attention

    prompt = (loaded.cfg.demo or ["the" if not loaded.task.words else "fin"])[0]
    maps = attention(loaded, prompt)
    picture = _png(lambda path: plot_attention(maps, path), f"attention weights for {prompt}")
    return (f"<p>What each token (row) looks at (column) while the model reads "
            f"<code>{html.escape(prompt)}</code>, per layer and head; each row sums to 1.</p>"
            + picture)  # fmt: skip


def _samples(loaded: LoadedRun) -> str:
    demo = loaded.cfg.demo or (["fin", "tra", "com"] if loaded.task.words else ["The"])
    parts = []
    if loaded.task.words:
        rows = []
        for prefix in demo:
            found = loaded.likeliest(prefix, 5).words
            cells = ", ".join(f"{html.escape(s.word)} ({s.probability:.1%})" for s in found)
            rows.append(f"<tr><td>{html.escape(prefix)}</td><td>{cells}</td></tr>")
        parts.append(f"<h3>The likeliest words</h3><table>{''.join(rows)}</table>")
    for t in TEMPERATURES:
        outs = loaded.sample(demo, Sampling(t, top_p=1.0), n=3 if loaded.task.words else 1, seed=0)
        per = len(outs) // len(demo)
        rows = []
        for i, prompt in enumerate(demo):
            texts = [prompt + o.text + ("" if o.finished or not loaded.task.words else "…")
                     for o in outs[i * per : (i + 1) * per]]  # fmt: skip
            rows.append(f"<tr><td>{html.escape(' · '.join(texts))}</td></tr>")
        parts.append(f"<h3>Temperature {t}</h3><table>{''.join(rows)}</table>")
    return "".join(parts)


def _png(draw, alt: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "picture.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _bars(labels: list[str], values: list[float], caption: str) -> str:
    """A bar chart as inline SVG (values in [0, 1])."""
    bar, gap, height = (60 if len(labels) <= 10 else 22), 6, 120
    width = len(labels) * (bar + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" role="img" aria-label="{html.escape(caption)}">']  # fmt: skip
    for i, (name, v) in enumerate(zip(labels, values, strict=True)):
        x, h = 30 + i * (bar + gap), max(1, v * height)
        parts.append(f'<rect x="{x}" y="{10 + height - h:.1f}" width="{bar}" height="{h:.1f}" fill="#4a7"><title>{html.escape(name)}: {v:.3f}</title></rect>')  # fmt: skip
        parts.append(f'<text x="{x + bar / 2}" y="{height + 26}" font-size="10" text-anchor="middle">{html.escape(name)}</text>')  # fmt: skip
    parts.append(
        f'<text x="0" y="{height + 50}" font-size="11">{html.escape(caption)}</text></svg>'
    )
    return "".join(parts)
