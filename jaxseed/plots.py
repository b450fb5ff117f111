"""Pictures of a run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics: list[dict], path: str, panels: dict[str, tuple[str, ...]]) -> None:
    """One panel per entry of ``panels`` (title -> metric names), against epoch."""
    epochs = [row["epoch"] for row in metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels.items()):
        for name in names:
            ax.plot(epochs, [row[name] for row in metrics], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
