"""`tinylm report RUN`: one self-contained HTML page about a run, to open from disk or share.

Configuration and parameters, loss curves, the evaluation beside its baselines, accuracy per
letter (word completers) or by position in the context (text), an attention picture for a
demo prompt, and the demo: samples at three temperatures (and the likeliest words). Each part
is a result's own HTML (results.py), the view a notebook shows; pictures are embedded (PNG
data URIs, inline SVG), so the page needs no network.
"""

from __future__ import annotations

from pathlib import Path

from tinylm import html
from tinylm.atomic import write_text
from tinylm.views import LossCurves


def write_report(model, out: Path) -> Path:
    """The page about `model`'s run (an api.Model), written atomically to `out`."""
    evaluation = test_figures(model)
    sections = [
        ("configuration", "Configuration and parameters", configuration(model)),
        ("loss", "Training and validation loss", loss(model)),
        ("evaluation", "Evaluation, beside baselines", evaluation_html(evaluation)),
        ("accuracy", "Accuracy", accuracy(evaluation)),
        ("attention", "Attention", attention(model)),
        ("samples", "Samples", model.demo()._repr_html_()),
    ]
    name = html.escape(model.run.path.resolve().name)
    warning = f'<p class="warn">{html.escape(model.caveat)}</p>' if model.caveat else ""
    body = [f"<h1>{name}: a {model.task.name}</h1>", warning]
    for anchor, title, content in sections:
        body.append(f'<section id="{anchor}"><h2>{title}</h2>{content}</section>')
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{html.STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    out = Path(out)
    write_text(out, page)
    return out


def test_figures(model):
    """The run's test figures: eval.json when it holds them, else computed (and saved); None
    for a run without a test split."""
    saved = model.run.read_json("eval.json")
    if saved and saved.get("data") == "test split":
        try:
            return model.task.evaluation(**saved)
        except TypeError:  # written by an older tinylm, without today's figures
            pass
    if model.cfg.data.test_fraction <= 0:
        return None
    return model.evaluate()


def configuration(model) -> str:
    info = model.info()
    table = html.table(["part", "parameters"], info.parameters.items())
    return f"{table}<pre>{html.escape(info.config)}</pre>"


def loss(model) -> str:
    records = model.run.metrics()
    if not records:
        return '<p class="muted">No metrics logged yet.</p>'
    curves = LossCurves([(model.run.path.name, records)])
    return html.image(curves._repr_png_(), "loss curves")


def evaluation_html(result) -> str:
    if result is None:
        return '<p class="muted">This run has no test split (data.test_fraction was 0).</p>'
    return result._repr_html_()


def accuracy(result) -> str:
    if result is None:
        return '<p class="muted">No test split.</p>'
    labels, values, caption = result.accuracy()
    return html.bars(labels, values, caption)


def attention(model) -> str:
    prompt = (model.cfg.demo or model.task.default_demo)[0]
    picture = html.image(model.attention(prompt)._repr_png_(), f"attention weights for {prompt}")
    return (
        f"<p>What each token (row) looks at (column) while the model reads "
        f"<code>{html.escape(prompt)}</code>, per layer and head; each row sums to 1.</p>" + picture
    )
