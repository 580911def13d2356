"""Loss-curve pictures: one run's training and validation loss, or several runs on one picture,
and attention heatmaps. matplotlib is imported by each function that draws: it takes ~0.9 s to
import, which every command that draws nothing would pay."""

from __future__ import annotations

from pathlib import Path

from tinylm import atomic

X_AXES = {"tokens": "tokens seen", "time": "training seconds", "step": "optimizer step"}


def plot_losses(curves: list[tuple[str, list[dict]]], out: Path, x: str = "tokens") -> Path:
    """Draw training (thin) and validation (thick, dots) loss of each (label, metrics) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (label, records) in enumerate(curves):
        color = f"C{i % 10}"
        train = [r for r in records if "loss" in r]
        val = [r for r in records if "val_loss" in r]
        if train:
            ax.plot(
                [r[x] for r in train], [r["loss"] for r in train], color=color, alpha=0.45, lw=1
            )
        if val:
            ax.plot(
                [r[x] for r in val],
                [r["val_loss"] for r in val],
                color=color,
                lw=2,
                marker="o",
                ms=3,
                label=f"{label} (best val {min(r['val_loss'] for r in val):.3f})",
            )
        elif train:
            ax.plot([], [], color=color, label=label)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("training (thin) and validation (thick) loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    out = Path(out)
    kind = out.suffix.lstrip(".").lower()
    kind = kind if kind in fig.canvas.get_supported_filetypes() else "png"
    try:
        atomic.atomic_write(out, lambda tmp: fig.savefig(tmp, format=kind))
    finally:
        plt.close(fig)
    return out


def plot_attention(maps, out: Path, title: str = "") -> Path:
    """One heatmap per layer and head, a block of rows per map (e.g. encoder, decoder and
    cross-attention), axes labelled with the tokens: rows are queries, columns keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(m, layer) for m in maps for layer in range(len(m.weights))]
    heads = max(m.weights.shape[1] for m in maps)
    size = max(max(len(m.queries), len(m.keys)) for m in maps)
    cell = min(3.2, max(1.6, 0.18 * size + 0.8))
    fig, axes = plt.subplots(
        len(rows),
        heads,
        figsize=(cell * heads + 0.8, cell * len(rows) + 0.6),
        dpi=100,
        squeeze=False,
    )
    for r, (m, layer) in enumerate(rows):
        for h in range(heads):
            ax = axes[r][h]
            if h >= m.weights.shape[1]:
                ax.axis("off")
                continue
            ax.imshow(m.weights[layer, h].numpy(), cmap="viridis", vmin=0, vmax=1)
            small = 7 if size <= 24 else 5
            ax.set_xticks(range(len(m.keys)), m.keys, rotation=90, fontsize=small)
            ax.set_yticks(range(len(m.queries)), m.queries, fontsize=small)
            ax.set_title(f"{m.name}: layer {layer + 1}, head {h + 1}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
