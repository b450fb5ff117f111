"""Flax NNX models. Parameters come only from the ``init`` stream.

The ``nnx.Rngs`` built in a constructor lives only while the model is built:
it hands each layer a key derived from the init root, and is not kept, so the
split-out state holds parameters alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 of x float[B, H, W, C] (H, W even) -> float[B, H/2, W/2, C].

    Same values and gradient, bit for bit, as ``nnx.max_pool(x, (2, 2), strides=(2, 2))``,
    whose gradient XLA computes with select-and-scatter: on CPU the CNN's two pools took
    77 ms per batch of 128 that way, 3 ms with the comparisons below
    (``benchmarks/profile_step.py``).
    """
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_forward(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, grad):
    """Each window's gradient goes to its first maximum in row-major order, as
    select-and-scatter sends it (ties, e.g. of a ReLU's zeros, get nothing else)."""
    x, pooled = residuals
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
    taken = jnp.zeros(pooled.shape, bool)
    rows = []
    for i in range(2):
        row = []
        for j in range(2):
            first = (windows[:, :, i, :, j, :] == pooled) & ~taken
            taken = taken | first
            row.append(jnp.where(first, grad, 0))
        rows.append(jnp.stack(row, axis=3))
    return (jnp.stack(rows, axis=2).reshape(b, h, w, c),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


class CNN(nnx.Module):
    """Two conv blocks, a dense layer with dropout, a 10-way head.

    Block: 3x3 conv -> ReLU -> 2x2 max-pool (32 then 64 features). One conv per
    block keeps an epoch under a minute on two CPU cores; a second conv per block
    tripled the step time here.
    Input float32[B, 28, 28, 1] in [0, 1]; output logits float32[B, 10].
    """

    STREAMS = ("init", "shuffle", "dropout", "augment")

    def __init__(self, *, init_key: jax.Array, dropout_rate: float = 0.5, num_classes: int = 10):
        rngs = nnx.Rngs(params=init_key)
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.head = nnx.Linear(256, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, *, train: bool, dropout_keys: jax.Array | None = None) -> jax.Array:
        """Logits. In training, ``dropout_keys`` key[B] (one per example, from the ``dropout``
        stream) are required: example b's mask is drawn from dropout_keys[b] alone."""
        if train and dropout_keys is None:
            raise ValueError("CNN in training mode needs dropout_keys (keys of the 'dropout' stream)")
        x = max_pool_2x2(nnx.relu(self.conv1(images)))
        x = max_pool_2x2(nnx.relu(self.conv2(x)))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        if train:
            x = self.drop(x, dropout_keys)
        return self.head(x)

    def drop(self, features: jax.Array, dropout_keys: jax.Array) -> jax.Array:
        """Dropout of features float[B, ...], example b's mask drawn from dropout_keys[b] alone
        (nnx.Dropout vmapped: one key per example, whatever batch the example is in)."""
        return jax.vmap(lambda row, key: self.dropout(row, deterministic=False, rngs=key))(features, dropout_keys)


class VAE(nnx.Module):
    """MLP variational autoencoder for 28x28 images (Kingma & Welling, 2014).

    Encoder: 784 -> 512 -> 256 -> (mean, log-variance) of a diagonal Gaussian q(z|x)
    over ``latents`` dimensions. Decoder: z -> 256 -> 512 -> 784 Bernoulli logits.
    """

    STREAMS = ("init", "shuffle", "augment", "latent")

    def __init__(self, *, init_key: jax.Array, latents: int = 20, hidden: tuple[int, int] = (512, 256)):
        rngs = nnx.Rngs(params=init_key)
        wide, narrow = hidden
        self.enc1 = nnx.Linear(28 * 28, wide, rngs=rngs)
        self.enc2 = nnx.Linear(wide, narrow, rngs=rngs)
        self.mean = nnx.Linear(narrow, latents, rngs=rngs)
        self.logvar = nnx.Linear(narrow, latents, rngs=rngs)
        self.dec1 = nnx.Linear(latents, narrow, rngs=rngs)
        self.dec2 = nnx.Linear(narrow, wide, rngs=rngs)
        self.out = nnx.Linear(wide, 28 * 28, rngs=rngs)
        self.latents = latents

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float[B, 28, 28, 1] -> (mean, log-variance), each float[B, latents]."""
        h = nnx.relu(self.enc2(nnx.relu(self.enc1(images.reshape(images.shape[0], -1)))))
        return self.mean(h), self.logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """z float[..., latents] -> Bernoulli logits float[..., 28, 28, 1]."""
        logits = self.out(nnx.relu(self.dec2(nnx.relu(self.dec1(z)))))
        return logits.reshape(*z.shape[:-1], 28, 28, 1)

