"""jaxseed.plots: each picture read back, its pixels and its size checked."""

import io

import matplotlib.image
import numpy as np

from jaxseed import plots


def read(png: io.BytesIO) -> np.ndarray:
    png.seek(0)
    return matplotlib.image.imread(png, format="png")  # float RGBA in [0, 1]


def test_save_grid_puts_each_image_in_its_tile():
    """Grey images (the channels' mean) and colour ones, row by row, 2 white pixels around each tile."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 4, 3, 1)) / 255.0
    out = io.BytesIO()
    plots.save_grid(grey, out, columns=2)
    picture = read(out)
    assert picture.shape[:2] == (3 * (4 + 2) + 2, 2 * (3 + 2) + 2)
    for i, image in enumerate(grey):
        row, column = divmod(i, 2)
        tile = picture[2 + row * 6:2 + row * 6 + 4, 2 + column * 5:2 + column * 5 + 3]
        np.testing.assert_allclose(tile[..., :3], np.repeat(image, 3, -1), atol=1 / 255)
    assert (picture[0] == 1).all() and (picture[-6:, 7:] == 1).all()  # the border, and the missing sixth tile
    colour = rng.integers(0, 256, (2, 4, 3, 3)) / 255.0
    plots.save_grid(colour, out := io.BytesIO(), columns=2)
    np.testing.assert_allclose(read(out)[2:6, 7:10, :3], colour[1], atol=1 / 255)
    two = rng.random((1, 4, 3, 2))  # channels that are no colours: their mean
    plots.save_grid(two, out := io.BytesIO(), columns=1)
    np.testing.assert_allclose(read(out)[2:6, 2:5, 0], two[0].mean(-1), atol=1 / 255)


def test_curves_and_spread_have_one_panel_per_entry_and_draw_the_values():
    rows = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.5 / e, "test_accuracy": 0.9} for e in (1, 2, 3)]
    plots.plot_curves(rows, out := io.BytesIO(), {"loss": ("train_loss", "test_loss"), "accuracy": ("test_accuracy",)})
    picture = read(out)
    assert picture.shape[:2] == (350, 1000)
    blue = np.array([0x1f, 0x77, 0xb4]) / 255  # matplotlib's first colour: the first curve of each panel
    is_blue = (np.abs(picture[..., :3] - blue) < 0.02).all(-1)
    assert is_blue[:, :500].sum() > 50 and is_blue[:, 500:].sum() > 50
    plots.plot_spread(["init", "shuffle", "none"], [0.2, 0.1, 0.0], [(0.1, 0.4), (0.05, 0.2), (0.0, 0.0)], "std",
                      out := io.BytesIO())
    bars = (np.abs(read(out)[..., :3] - blue) < 0.02).all(-1)
    assert read(out).shape[:2] == (350, 560)
    counts = bars.sum(0)  # blue pixels per column: each bar a run of columns, its height the count
    edges = np.flatnonzero(np.diff(np.r_[0, counts > 0, 0]))
    heights = [counts[start:stop].max() for start, stop in zip(edges[::2], edges[1::2])]
    assert len(heights) == 2 and abs(heights[0] / heights[1] - 2) < 0.1  # std 0.2 and 0.1; none's is 0
