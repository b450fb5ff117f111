"""On-device augmentation: a random small rotation and translation per example.

Each example's parameters come from its own key (``streams.per_example_keys``
with the epoch and the example's index in the data set), so they depend only on
(augment seed, epoch, example index).
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


def _transform(image: jax.Array, params: AffineParams) -> jax.Array:
    """Rotate ``image`` [H, W, 1] about its centre, then shift it; zeros fill in.

    Each output pixel o reads the input at s = R^-1 (o - centre - shift) + centre,
    bilinearly: out[o] = sum_{r,c} tent(s_y - r) * image[r, c] * tent(s_x - c), with
    tent(d) = max(0, 1 - |d|). Written as two small matmuls rather than with
    dm_pix.affine_transform: its gathers took 14 ms per 128-image batch on XLA CPU
    here, the matmuls 4 ms, with equal values inside the image (to 4e-6).
    """
    height, width = image.shape[:2]
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    output = jnp.stack([rows.ravel(), cols.ravel()], -1).astype(jnp.float32)  # [H*W, 2]
    cos, sin = jnp.cos(params.angle), jnp.sin(params.angle)
    inverse_rotation = jnp.array([[cos, sin], [-sin, cos]])
    source = jnp.matmul(output - centre - jnp.stack([params.shift_y, params.shift_x]), inverse_rotation.T,
                        precision=_EXACT) + centre
    weight_y = jax.nn.relu(1 - jnp.abs(source[:, :1] - jnp.arange(height)))  # [H*W, H]
    weight_x = jax.nn.relu(1 - jnp.abs(source[:, 1:] - jnp.arange(width)))  # [H*W, W]
    return jnp.sum(jnp.matmul(weight_y, image[..., 0], precision=_EXACT) * weight_x, -1).reshape(height, width, 1)


def apply_affine(images: jax.Array, params: AffineParams) -> jax.Array:
    """Transform a batch float[B, H, W, 1] with per-example ``params``."""
    return jax.vmap(_transform)(images, params)
