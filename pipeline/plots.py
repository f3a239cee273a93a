"""PNG figures written next to the Parquet outputs (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(matrix: np.ndarray, labels: list[str], path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(labels), 1.0 + 0.5 * len(labels)), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    top = matrix.max() or 1
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_png(series: dict[str, list[tuple[float, float]]], path: str, title: str, xlabel: str = "epoch") -> None:
    """One panel per named series of (x, y) points, e.g. {'train loss': [...], 'val accuracy': [...]}."""
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), dpi=110, squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid_png(images: list[np.ndarray], path: str, cols: int = 8, titles: list[str] | None = None,
                   scale: float = 1.0) -> None:
    """Images (HxW or HxWx3 uint8) in a grid, optional caption per image."""
    rows = max(1, -(-len(images) // cols))
    h, w = images[0].shape[:2]
    caption = 0.3 if titles else 0.0  # inches per row for the titles, or the images crowd them out
    fig, axes = plt.subplots(rows, cols, figsize=(cols * w / 40 * scale + 0.2, rows * (h / 40 * scale + caption) + 0.2),
                             dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, img in enumerate(images):
        ax = axes.flat[k]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        if titles:
            ax.set_title(titles[k], fontsize=10)
    fig.tight_layout(pad=0.2)
    fig.savefig(path)
    plt.close(fig)
