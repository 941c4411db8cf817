"""PNG plots of a run: training curves and the threshold sweep (matplotlib, Agg, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs on machines without a display

import matplotlib.pyplot as plt

from gallery.metrics import SweepResult

__all__ = ["plot_curves", "plot_sweep"]


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Loss and LR per epoch, and the validation MAP@5 where it was measured."""
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["loss"] for r in records], marker="o")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].plot(epochs, [r["lr"] for r in records], marker="o")
    axes[1].set(title="learning rate (end of epoch)", xlabel="epoch")
    scored = [r for r in records if "map5" in r]
    for key, label in (("map5", "all"), ("map5_known", "known"), ("map5_new", "new")):
        axes[2].plot(
            [r["epoch"] for r in scored], [r[key] for r in scored], marker="o", label=label
        )
    axes[2].set(title="open-set validation MAP@5", xlabel="epoch", ylim=(0, 1))
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(result: SweepResult, path: Path, *, title: str = "threshold sweep") -> None:
    """MAP@5 (all, known, new) against the new_individual threshold; the best one marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(result.thresholds, result.map_all, label="all")
    ax.plot(result.thresholds, result.map_known, label="known", alpha=0.8)
    ax.plot(result.thresholds, result.map_new, label="new", alpha=0.8)
    best = result.best_threshold
    ax.axvline(best, color="grey", linestyle="--", label=f"best {best:.3f}")
    ax.set(title=title, xlabel="new_individual threshold (cosine)", ylabel="MAP@5", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
