"""Flax NNX models. Parameters come only from the ``init`` stream.

The ``nnx.Rngs`` built in a constructor lives only while the model is built:
it hands each layer a key derived from the init root, and is not kept, so the
split-out state holds parameters alone.
"""

from __future__ import annotations

import jax
from flax import nnx


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

    def __call__(self, images: jax.Array, *, train: bool, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits. In training, ``dropout_key`` (from the ``dropout`` stream) is required."""
        if train and dropout_key is None:
            raise ValueError("CNN in training mode needs dropout_key (a key of the 'dropout' stream)")
        x = nnx.max_pool(nnx.relu(self.conv1(images)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        x = self.dropout(x, deterministic=not train, rngs=dropout_key)
        return self.head(x)


MODELS = {"cnn": CNN}
