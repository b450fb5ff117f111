"""On-device augmentation: a random small rotation and translation per example.

Each example's parameters come from its own key (``streams.per_example_keys``
with the epoch and the example's index in the data set), so they depend only on
(augment seed, epoch, example index).
"""

from __future__ import annotations

from typing import NamedTuple

import dm_pix
import jax
import jax.numpy as jnp


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


def _transform(image: jax.Array, params: AffineParams) -> jax.Array:
    """Rotate ``image`` [H, W, C] about its centre, then shift it; zeros fill in.

    dm_pix pulls: output pixel o reads input pixel M @ o, so M is the inverse map
    o -> R^-1 (o - centre - shift) + centre, with the channel axis left alone.
    """
    height, width = image.shape[:2]
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    cos, sin = jnp.cos(params.angle), jnp.sin(params.angle)
    inverse_rotation = jnp.array([[cos, sin], [-sin, cos]])
    offset = centre - inverse_rotation @ (centre + jnp.stack([params.shift_y, params.shift_x]))
    matrix = jnp.zeros((3, 4)).at[:2, :2].set(inverse_rotation).at[:2, 3].set(offset).at[2, 2].set(1.0)
    return dm_pix.affine_transform(image, matrix, order=1, mode="constant", cval=0.0)


def apply_affine(images: jax.Array, params: AffineParams) -> jax.Array:
    """Transform a batch float[B, H, W, C] with per-example ``params``."""
    return jax.vmap(_transform)(images, params)
