"""On-device augmentation, per example, inside the jitted step.

Two kinds (``--augment``): ``affine``, a small random rotation and translation
(the MNIST choice), and ``crop_flip``, a random crop of the image padded with
zeros plus a horizontal flip with probability 1/2 (the CIFAR standard). Each
works on images float[B, H, W, C] of any size and channel count. Each example's
draw comes from its own key (``streams.example_keys`` with the epoch and the
example's index in the data set), so it depends only on (augment seed, epoch,
example index).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


# float32 matmuls on every backend: the default precision is bf16 passes on TPU and TF32 on
# recent GPUs, which would make an example's augmentation depend on the device it runs on.
_EXACT = jax.lax.Precision.HIGHEST


class AffineParams(NamedTuple):
    """Per-example parameters, each float32[B]: shift in pixels, angle in radians."""

    shift_y: jax.Array
    shift_x: jax.Array
    angle: jax.Array


def sample_affine(keys: jax.Array, max_translation: float, max_rotation_degrees: float) -> AffineParams:
    """Draw shift ~ U[-max_translation, max_translation]^2, angle ~ U[-max_rot, max_rot].

    Args:
      keys: one key of the ``augment`` stream per example, shape [B].
    """

    def one(key):
        shift_y, shift_x, angle = jax.random.uniform(key, (3,), minval=-1.0, maxval=1.0)
        return AffineParams(shift_y * max_translation, shift_x * max_translation,
                            angle * jnp.deg2rad(max_rotation_degrees))

    return jax.vmap(one)(keys)


def _source(shape, params: AffineParams) -> jax.Array:
    """Where each output pixel o of an image of ``shape`` [H, W, ...] reads the input:
    s = R^-1 (o - centre - shift) + centre, float[H*W, 2] (row, column), elementwise (a [H*W, 2]
    by [2, 2] matmul per image took 1.9 ms of a 128-image batch's 2.8 here, this 0.16)."""
    height, width = shape[:2]
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    dy, dx = rows.ravel() - centre_y - params.shift_y, cols.ravel() - centre_x - params.shift_x
    cos, sin = jnp.cos(params.angle), jnp.sin(params.angle)
    return jnp.stack([cos * dy + sin * dx + centre_y, cos * dx - sin * dy + centre_x], -1)


def _transform(image: jax.Array, params: AffineParams) -> jax.Array:
    """Rotate ``image`` [H, W, C] about its centre, then shift it; zeros fill in.

    Each output pixel reads the input at s = (y0 + fy, x0 + fx) (``_source``; y0, x0 integers,
    fy, fx in [0, 1)) bilinearly from its four nearest pixels:

        out = (1 - fx) ((1 - fy) in[y0, x0] + fy in[y0+1, x0]) + fx ((1 - fy) in[y0, x0+1] + fy in[y0+1, x0+1])

    Four gathers of H*W pixels from the image padded with a ring of zeros (a pixel outside reads
    the ring): 0.6 ms per 128-image batch on XLA CPU here, where ``_transform_by_matmuls`` took
    5.1 ms and dm_pix.affine_transform's general gathers 14; equal values to 3e-6.
    """
    height, width, channels = image.shape
    source = _source(image.shape, params)
    corner = jnp.floor(source)
    fy, fx = (source - corner).T[..., None]  # [H*W, 1] each
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0))).reshape(-1, channels)

    def pixel(dy, dx):  # in[y0 + dy, x0 + dx], [H*W, C]
        row = jnp.clip(corner[:, 0] + dy + 1, 0, height + 1).astype(jnp.int32)
        col = jnp.clip(corner[:, 1] + dx + 1, 0, width + 1).astype(jnp.int32)
        return padded[row * (width + 2) + col]

    left = (1 - fy) * pixel(0, 0) + fy * pixel(1, 0)
    right = (1 - fy) * pixel(0, 1) + fy * pixel(1, 1)
    return ((1 - fx) * left + fx * right).reshape(image.shape)


def _transform_by_matmuls(image: jax.Array, params: AffineParams) -> jax.Array:
    """``_transform`` as --portable computes it: its bits are those of the reference hash it was
    checked with on emulated CPUs (``_transform`` would change them: benchmarks/README.md).

    out[o] = sum_{r,c} tent(s_y - r) * image[r, c] * tent(s_x - c), tent(d) = max(0, 1 - |d|),
    as two small matmuls.
    """
    height, width = image.shape[:2]
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    output = jnp.stack([rows.ravel(), cols.ravel()], -1).astype(jnp.float32)  # [H*W, 2]
    cos, sin = jnp.cos(params.angle), jnp.sin(params.angle)
    inverse_rotation = jnp.array([[cos, sin], [-sin, cos]])
    source = jnp.matmul(output - centre - jnp.stack([params.shift_y, params.shift_x]), inverse_rotation.T,
                        precision=_EXACT) + centre  # s, as _source computes it
    weight_y = jax.nn.relu(1 - jnp.abs(source[:, :1] - jnp.arange(height)))  # [H*W, H]
    weight_x = jax.nn.relu(1 - jnp.abs(source[:, 1:] - jnp.arange(width)))  # [H*W, W]
    # Channel by channel: each the very computation of a one-channel image (MNIST's bits stay).
    return jnp.stack([jnp.sum(jnp.matmul(weight_y, image[..., c], precision=_EXACT) * weight_x, -1)
                      for c in range(image.shape[-1])], -1).reshape(image.shape)


def apply_affine(images: jax.Array, params: AffineParams, by_matmuls: bool = False) -> jax.Array:
    """Transform a batch float[B, H, W, C] with per-example ``params``; ``by_matmuls``: as
    --portable does (``_transform_by_matmuls``)."""
    return jax.vmap(_transform_by_matmuls if by_matmuls else _transform)(images, params)


class CropFlipParams(NamedTuple):
    """Per-example draws, each int32[B]: the crop's top-left corner in the padded image, and
    whether the image is mirrored left to right (0 or 1)."""

    top: jax.Array
    left: jax.Array
    flip: jax.Array


def sample_crop_flip(keys: jax.Array, padding: int) -> CropFlipParams:
    """Corner ~ U{0, ..., 2 * padding}^2, flip ~ Bernoulli(1/2), each from the example's key alone."""

    def one(key):
        top, left, flip = jax.random.randint(key, (3,), 0, jnp.array([2 * padding + 1, 2 * padding + 1, 2]))
        return CropFlipParams(top, left, flip)

    return jax.vmap(one)(keys)


def apply_crop_flip(images: jax.Array, params: CropFlipParams, padding: int) -> jax.Array:
    """Pad a batch float[B, H, W, C] with ``padding`` zeros on each side, take each example's
    H x W crop at its corner, and mirror it where its flip is 1."""
    height, width, channels = images.shape[1:]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, top, left, flip):
        crop = jax.lax.dynamic_slice(image, (top, left, 0), (height, width, channels))
        return jnp.where(flip == 1, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, params.top, params.left, params.flip)


def apply(config, images: jax.Array, keys: jax.Array) -> jax.Array:
    """``config.augment`` applied to images float[B, H, W, C], example b's draw from keys[b]
    (the ``augment`` stream); ``none`` returns the images unchanged."""
    if config.augment == "affine":
        return apply_affine(images, sample_affine(keys, config.max_translation, config.max_rotation),
                            by_matmuls=config.portable)
    if config.augment == "crop_flip":
        return apply_crop_flip(images, sample_crop_flip(keys, config.crop_padding), config.crop_padding)
    return images
