"""Pictures a person can read: kept vs dense width per group, training curves."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def _pyplot():
    """matplotlib, imported on the first chart: stages that draw none skip its import."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def kept_widths_chart(dense: dict[str, int], kept: dict[str, int], path: Path, title: str) -> Path:
    plt = _pyplot()
    names = list(dense)
    height = max(3.0, 0.28 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    y = range(len(names))
    ax.barh(y, [dense[n] for n in names], color="#d0d0d0", label="dense")
    ax.barh(y, [kept[n] for n in names], color="#2f6db5", label="kept")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_chart(history: list[dict], x: str, ys: list[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ys:
        points = [(r[x], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=key, marker="." if len(points) < 40 else None)
    ax.set_xlabel(x)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
