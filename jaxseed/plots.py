"""Pictures of a run.

Drawn with matplotlib's object API (``Figure``, ``fig.savefig``, ``image.imsave``),
which renders to files without pyplot: importing this module selects no backend
and changes no global state. matplotlib is imported by the functions, when a
picture is drawn: importing it took ~0.4 s of a ~5 s warm start-up, and pictures
come only after training. Each writes into an open file: the run folder
(``rundir``) owns where and how files are written.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np


def plot_curves(metrics: list[dict], out: BinaryIO, panels: dict[str, tuple[str, ...]]) -> None:
    """One panel per entry of ``panels`` (title -> metric names), against epoch; a PNG into ``out``."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in metrics]
    fig = Figure(figsize=(5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels.items()):
        for name in names:
            ax.plot(epochs, [row[name] for row in metrics], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)


def save_grid(images, out: BinaryIO, columns: int) -> None:
    """Tile images float[N, H, W, C] in [0, 1] (C = 3 in colour, else grey: the channels' mean) into
    one PNG, written into ``out``."""
    import matplotlib.image

    images = np.clip(np.asarray(images), 0.0, 1.0)
    if images.shape[-1] != 3:
        images = images.mean(-1, keepdims=True)
    rows = -(-len(images) // columns)
    height, width, channels = images.shape[1:]
    canvas = np.ones((rows * (height + 2) + 2, columns * (width + 2) + 2, channels))
    for i, image in enumerate(images):
        top, left = (2 + k * (size + 2) for k, size in zip(divmod(i, columns), (height, width)))
        canvas[top:top + height, left:left + width] = image
    if channels == 1:
        matplotlib.image.imsave(out, canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        matplotlib.image.imsave(out, canvas, format="png")


def plot_spread(groups: list[str], stds: list[float], intervals: list[tuple[float, float]], label: str,
                out: BinaryIO) -> None:
    """Bar chart of each group's standard deviation with its confidence interval as error bars."""
    from matplotlib.figure import Figure

    stds, intervals = np.asarray(stds), np.asarray(intervals)
    fig = Figure(figsize=(1.2 * len(groups) + 2, 3.5))
    ax = fig.subplots()
    ax.bar(groups, stds, yerr=[stds - intervals[:, 0], intervals[:, 1] - stds], capsize=4, color="tab:blue")
    ax.set_ylabel(label)
    ax.set_title("spread due to each random source\n(std with its 95% chi-square interval)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)


def plot_image_rows(rows: list[tuple[str, np.ndarray, list[str]]], out: BinaryIO) -> None:
    """One row of images per entry (name, images uint8[M, H, W, C], C = 3 in colour, else grey, a
    title per image), the name at the row's left; a PNG into ``out``."""
    from matplotlib.figure import Figure

    columns = max(len(images) for _, images, _ in rows)
    fig = Figure(figsize=(1.5 * columns + 0.5, 1.7 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for line, (name, images, titles) in zip(axes, rows):
        for ax in line[len(images):]:
            ax.axis("off")
        for ax, image, title in zip(line, images, titles):
            if image.shape[-1] == 3:
                ax.imshow(image)
            else:  # grey, or channels that are no colours: their mean
                ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        line[0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
