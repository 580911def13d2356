"""Small HTML pieces shared by the results' Jupyter views and the report page: tables, bar
charts as inline SVG, pictures as data URIs. No network, no scripts."""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

escape = html.escape

STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid"
    " #ddd}table{border-collapse:collapse}td,th{padding:.2rem .7rem;text-align:left;"
    "border-bottom:1px solid #eee}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "pre{background:#f6f6f6;padding:.8rem;overflow:auto}img{max-width:100%}"
    ".warn{background:#fde8e8;border:1px solid #e99;padding:.8rem}.muted{color:#666}"
)


def cell(value, digits: int = 3) -> str:
    """A table cell: numbers right-aligned with `digits` decimals, text escaped."""
    if isinstance(value, float):
        return f'<td class="n">{value:.{digits}f}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    return f"<td>{escape(str(value))}</td>"


def table(head: Iterable[str], rows: Iterable[Iterable], digits: int = 3) -> str:
    heads = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(v, digits) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{heads}</tr>{body}</table>"


def bar(share: float, label: str) -> str:
    """A probability as a short horizontal bar beside its label."""
    width = max(1, round(120 * min(max(share, 0.0), 1.0)))
    return (
        f'<span style="display:inline-block;width:{width}px;height:.7em;background:#4a7;'
        f'margin-right:.4em"></span>{escape(label)}'
    )


def bars(labels: list[str], values: list[float], caption: str) -> str:
    """A bar chart as inline SVG (values in [0, 1])."""
    bar_w, gap, height = (60 if len(labels) <= 10 else 22), 6, 120
    width = len(labels) * (bar_w + gap) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
        f'role="img" aria-label="{escape(caption)}">'
    ]
    for i, (name, v) in enumerate(zip(labels, values, strict=True)):
        x, h = 30 + i * (bar_w + gap), max(1, v * height)
        parts.append(
            f'<rect x="{x}" y="{10 + height - h:.1f}" width="{bar_w}" height="{h:.1f}" '
            f'fill="#4a7"><title>{escape(name)}: {v:.3f}</title></rect>'
            f'<text x="{x + bar_w / 2}" y="{height + 26}" font-size="10" '
            f'text-anchor="middle">{escape(name)}</text>'
        )
    parts.append(f'<text x="0" y="{height + 50}" font-size="11">{escape(caption)}</text></svg>')
    return "".join(parts)


def png_bytes(draw: Callable[[Path], object]) -> bytes:
    """What draw(path) writes to a PNG file, as bytes (for `_repr_png_` and data URIs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "picture.png"
        draw(path)
        return path.read_bytes()


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
