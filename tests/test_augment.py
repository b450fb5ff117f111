"""Augmentation: exact on known transforms, bounded parameters, keyed per example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseed import augment, streams
from jaxseed.config import Config


def single_pixel(y, x):
    return jnp.zeros((1, 28, 28, 1)).at[0, y, x, 0].set(1.0)


def params(shift_y=0.0, shift_x=0.0, angle=0.0):
    return augment.AffineParams(jnp.array([shift_y]), jnp.array([shift_x]), jnp.array([angle]))


def test_identity_leaves_the_image():
    image = jax.random.uniform(jax.random.key(0), (1, 28, 28, 1))
    np.testing.assert_allclose(augment.apply_affine(image, params()), image, atol=1e-6)


def test_integer_shift_moves_a_pixel():
    out = augment.apply_affine(single_pixel(10, 14), params(2.0, -1.0))
    np.testing.assert_allclose(out[0, 12, 13, 0], 1.0, atol=1e-6)
    assert float(out.sum()) == 1.0


def test_quarter_turn_about_the_centre():
    out = augment.apply_affine(single_pixel(10, 14), params(angle=np.pi / 2))
    # (10, 14) is (-3.5, +0.5) from the centre (13.5, 13.5); a quarter turn maps it to (13, 10).
    assert np.argwhere(np.asarray(out[0, ..., 0]) > 0.99).tolist() == [[13, 10]]


def test_half_pixel_shift_interpolates():
    out = augment.apply_affine(single_pixel(10, 14), params(0.5, 0.0))
    np.testing.assert_allclose([out[0, 10, 14, 0], out[0, 11, 14, 0]], [0.5, 0.5], atol=1e-6)


def test_parameters_within_bounds_and_keyed_per_example():
    keys = streams.example_keys(jax.random.key(3), 0, jnp.arange(1000))
    drawn = augment.sample_affine(keys, 2.0, 10.0)
    assert float(jnp.abs(drawn.shift_y).max()) <= 2.0 and float(jnp.abs(drawn.shift_x).max()) <= 2.0
    assert float(jnp.abs(drawn.angle).max()) <= np.deg2rad(10.0) + 1e-7
    assert float(jnp.abs(drawn.angle).max()) > np.deg2rad(9.0)  # the range is used
    subset = augment.sample_affine(keys[jnp.array([5, 900])], 2.0, 10.0)
    np.testing.assert_array_equal(subset.angle, drawn.angle[jnp.array([5, 900])])


@pytest.mark.parametrize("by_matmuls", [False, True])  # four taps, and --portable's tent-weight matmuls
def test_matches_scipy_ndimage_as_an_oracle(by_matmuls):
    """Bilinear rotation and shift agree with scipy.ndimage.affine_transform (an independent resampler),
    pixels moved outside the image (or in from outside) included.

    ndimage maps each output pixel o to the input at matrix @ o + offset; ours reads
    s = R^-1 (o - centre - shift) + centre, so matrix = R^-1, offset = centre - R^-1 (centre + shift).
    'grid-constant' treats pixels outside the image as zeros, as the tent weights do.
    """
    image = np.asarray(jax.random.uniform(jax.random.key(5), (28, 28)), np.float64)
    centre = np.array([13.5, 13.5])
    for shift_y, shift_x, angle in [(1.3, -0.7, 0.15), (-2.0, 0.4, -0.17), (0.0, 0.0, 0.1), (20.5, -26.2, 0.3)]:
        ours = np.asarray(augment.apply_affine(jnp.asarray(image, jnp.float32)[None, ..., None],
                                               params(shift_y, shift_x, angle), by_matmuls))[0, ..., 0]
        cos, sin = np.cos(angle), np.sin(angle)
        inverse = np.array([[cos, sin], [-sin, cos]])
        offset = centre - inverse @ (centre + np.array([shift_y, shift_x]))
        oracle = ndimage.affine_transform(image, inverse, offset, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(ours, oracle, atol=2e-6)


def crop_flip_oracle(image, top, left, flip, padding):
    """One example by hand: pad with zeros, crop at (top, left), mirror the width axis if drawn."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crop = padded[top:top + height, left:left + width]
    return crop[:, ::-1] if flip else crop


def test_crop_flip_matches_pad_crop_and_mirror_by_hand():
    """On a non-square image with distinct values everywhere, so that a vertical flip, or a corner
    read from the wrong axis, gives other pixels; for every example the drawn corner and flip."""
    padding, batch = 2, 16
    images = np.arange(batch * 5 * 7 * 2, dtype=np.float32).reshape(batch, 5, 7, 2)
    keys = streams.example_keys(jax.random.key(11), 3, jnp.arange(batch))
    drawn = augment.sample_crop_flip(keys, padding)
    top, left, flip = (np.asarray(part) for part in drawn)
    # The draws exercise what the oracle checks: corners off the diagonal, both flips.
    assert np.any(top != left) and set(flip.tolist()) == {0, 1}
    assert top.min() >= 0 and left.min() >= 0 and max(top.max(), left.max()) <= 2 * padding
    ours = np.asarray(augment.apply_crop_flip(jnp.asarray(images), drawn, padding))
    for b in range(batch):
        np.testing.assert_array_equal(ours[b], crop_flip_oracle(images[b], top[b], left[b], flip[b], padding),
                                      err_msg=f"example {b}: top {top[b]}, left {left[b]}, flip {flip[b]}")
    config = Config(augment="crop_flip", crop_padding=padding)
    np.testing.assert_array_equal(augment.apply(config, jnp.asarray(images), keys), ours)  # the --augment path


def test_crop_flip_known_corner_and_flip():
    """A 2 x 3 image, padding 1: the crop at (0, 2) is the zero row above and the image's right two
    columns, then a zero column; mirrored, left and right swap."""
    image = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[None, ..., None]
    for flip, expected in ((0, [[0, 0, 0], [2, 3, 0]]), (1, [[0, 0, 0], [0, 3, 2]])):
        drawn = augment.CropFlipParams(jnp.array([0]), jnp.array([2]), jnp.array([flip]))
        np.testing.assert_array_equal(augment.apply_crop_flip(image, drawn, 1)[0, ..., 0], expected)


def test_crop_flip_corners_cover_every_offset_and_flip_half():
    """Corner ~ U{0, ..., 2 * padding} on each axis, flip ~ Bernoulli(1/2): 4,000 examples' draws reach
    every offset, and no other."""
    params = augment.sample_crop_flip(streams.example_keys(jax.random.key(5), 0, jnp.arange(4000)), 3)
    for offsets in (params.top, params.left):
        assert sorted(set(np.asarray(offsets).tolist())) == list(range(7))
    assert sorted(set(np.asarray(params.flip).tolist())) == [0, 1] and abs(float(params.flip.mean()) - 0.5) < 0.05


def test_apply_follows_the_config():
    """augment.apply, as the step calls it: affine, crop_flip, or the images unchanged."""
    images = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)), jnp.float32)
    keys = streams.example_keys(jax.random.key(2), 0, jnp.arange(4))
    affine, crop_flip = Config(augment="affine"), Config(augment="crop_flip", crop_padding=3)
    np.testing.assert_array_equal(augment.apply(affine, images, keys), augment.apply_affine(
        images, augment.sample_affine(keys, affine.max_translation, affine.max_rotation)))
    np.testing.assert_array_equal(augment.apply(crop_flip, images, keys), augment.apply_crop_flip(
        images, augment.sample_crop_flip(keys, 3), 3))
    np.testing.assert_array_equal(augment.apply(Config(augment="none"), images, keys), images)
    assert not np.array_equal(augment.apply(affine, images, keys), images)
    np.testing.assert_array_equal(augment.apply(affine.replace(portable=True), images, keys), augment.apply_affine(
        images, augment.sample_affine(keys, affine.max_translation, affine.max_rotation), by_matmuls=True))


def test_affine_moves_every_channel_alike():
    """A colour image's channels get the same rotation and shift, each its own plane."""
    image = jnp.asarray(np.random.default_rng(1).random((2, 12, 10, 3)), jnp.float32)
    params = augment.sample_affine(streams.example_keys(jax.random.key(4), 0, jnp.arange(2)), 2.0, 10.0)
    whole = augment.apply_affine(image, params)
    for c in range(3):
        np.testing.assert_array_equal(whole[..., c:c + 1], augment.apply_affine(image[..., c:c + 1], params))
