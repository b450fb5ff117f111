"""The built-in classifier: a small CNN, trained with cross-entropy on augmented images.

Its randomness, declared once in ``OBJECTIVE``: ``init`` (parameters), ``shuffle``
(order), and per example ``dropout`` (its mask) and ``augment`` (its affine or
crop-and-flip draw). The ``nnx.Rngs`` built in the constructor lives only while
the model is built: it hands each layer a key derived from the init root, and is
not kept, so the split-out state holds parameters alone.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxseed import augment
from jaxseed.config import Config, Settings, setting
from jaxseed.objective import Batch, DataSpec, Objective, to_unit


def _pool(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """2x2 max-pool with stride 2 of x float[B, H, W, C] (H, W even) -> float[B, H/2, W/2, C],
    and in each window the place (int8, 0-3 in row-major order) of its first maximum.

    The max is a reduce of a reshape, which XLA computes once. An elementwise max of the four
    corners (the same bits) was recomputed by XLA inside the transpose it makes of conv2's input
    for conv2's kernel gradient, reading conv1's output a whole image apart per element: 3.7 ms
    of a 36 ms training step on CPU, against 0.9 ms for the transpose of the reduced max
    (``benchmarks/README.md``).
    """
    b, h, w, c = x.shape
    pooled = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    corners = [x[:, i::2, j::2, :] for i in (0, 1) for j in (0, 1)]
    place = functools.reduce(lambda later, k: jnp.where(corners[k] == pooled, jnp.int8(k), later),
                             (2, 1, 0), jnp.int8(3))  # the first of the corners equal to the max
    return pooled, place


def _unpool(place: jax.Array, grad: jax.Array) -> jax.Array:
    """Each window's gradient grad float[B, H, W, C] to its place int8[B, H, W, C] (0-3; any other
    value sends it nowhere) -> float[B, 2H, 2W, C]: what select-and-scatter does after a max-pool."""
    b, h, w, c = grad.shape
    corner = (2 * jnp.arange(2, dtype=jnp.int8)[:, None] + jnp.arange(2, dtype=jnp.int8))[:, None, :, None]
    return jnp.where(place[:, :, None, :, None] == corner, grad[:, :, None, :, None], 0).reshape(b, 2 * h, 2 * w, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 of x float[B, H, W, C] (H, W even) -> float[B, H/2, W/2, C].

    Same values and gradient, bit for bit, as ``nnx.max_pool(x, (2, 2), strides=(2, 2))``,
    whose gradient XLA computes with select-and-scatter: on CPU the CNN's two pools took
    77 ms per batch of 128 that way, 3 ms with the comparisons of ``_pool``
    (``benchmarks/profile_step.py``). Each window's gradient goes to its first maximum in
    row-major order, as select-and-scatter sends it (ties, e.g. of a ReLU's zeros, get nothing
    else); JAX's own gradient of a max splits ties and so changes the bits.
    """
    return _pool(x)[0]


def _max_pool_backward(place, grad):
    return (_unpool(place, grad),)


max_pool_2x2.defvjp(_pool, _max_pool_backward)  # the places are the residuals


def _convolve(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution ``nnx.Conv`` computes with its defaults (stride 1, SAME padding), bias apart."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _block(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return _block_forward(x, kernel, bias)[0]


def _block_forward(x, kernel, bias):
    pooled, place = _pool(_convolve(x, kernel) + bias)
    # ReLU's gradient (0 at 0, as jax.nn.relu's) folded into the places: a window whose maximum is <= 0 sends none
    return nnx.relu(pooled), (x, kernel, jnp.where(pooled > 0, place, -1))


def _block_backward(residuals, grad):
    x, kernel, place = residuals
    _, convolve_vjp = jax.vjp(_convolve, x, kernel)  # its forward is dead code to XLA: the gradients need x, kernel
    return (*convolve_vjp(_unpool(place, grad)), jnp.where(place >= 0, grad, 0).sum((0, 1, 2)))


_block.defvjp(_block_forward, _block_backward)


def conv_relu_pool(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``max_pool_2x2(relu(conv(x)))`` for a 3x3 ``nnx.Conv`` with its default stride and padding,
    with the bias gradient summed over the pooled gradient.

    The same values bit for bit (ReLU is monotone, so it commutes with the max; here it follows the
    pool, on a quarter of the values), and the same input and kernel gradients bit for bit (each
    window's gradient reaches one position, that of its first maximum, and passes there where the
    maximum is > 0). The bias gradient is the same sum over a quarter of the terms (the other
    positions' are zeros), in another order: XLA CPU summed autodiff's over every position in
    blocked reduce-windows, 9.2 ms of a 62.3 ms step here (``benchmarks/README.md``).
    """
    return _block(x, conv.kernel[...], conv.bias[...])


@dataclasses.dataclass(frozen=True)
class CNNSettings(Settings):
    """The CNN's own settings (each a flag: --dropout-rate)."""

    dropout_rate: float = setting(0.5, "CNN: dropout rate of the dense layer", minimum=0.0, below=1.0)


class CNN(nnx.Module):
    """Two conv blocks, a dense layer with dropout, a classifying head.

    Block: 3x3 conv -> ReLU -> 2x2 max-pool (32 then 64 features). One conv per
    block keeps an MNIST epoch under a minute on two CPU cores; a second conv per
    block tripled the step time here.
    Input float32[B, H, W, C] in [0, 1] (H, W divisible by 4); output logits float32[B, classes].
    """

    def __init__(self, *, init_key: jax.Array, dropout_rate: float = 0.5, image_shape=(28, 28, 1),
                 num_classes: int = 10, portable: bool = False):
        height, width, channels = image_shape
        rngs = nnx.Rngs(params=init_key)
        self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.dense = nnx.Linear((height // 4) * (width // 4) * 64, 256, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.head = nnx.Linear(256, num_classes, rngs=rngs)
        self.portable = portable

    def __call__(self, images: jax.Array, *, train: bool, dropout_keys: jax.Array | None = None) -> jax.Array:
        """Logits. In training, ``dropout_keys`` key[B] (one per example, from the ``dropout``
        stream) are required: example b's mask is drawn from dropout_keys[b] alone."""
        if train and dropout_keys is None:
            raise ValueError("CNN in training mode needs dropout_keys (keys of the 'dropout' stream)")
        x = images
        for conv in (self.conv1, self.conv2):
            # --portable keeps autodiff's bias gradients: its bits are those of its reference hash, checked
            # on emulated CPUs (the faster form would change them: benchmarks/README.md)
            x = max_pool_2x2(nnx.relu(conv(x))) if self.portable else conv_relu_pool(conv, x)
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        if train:
            x = self.drop(x, dropout_keys)
        return self.head(x)

    def drop(self, features: jax.Array, dropout_keys: jax.Array) -> jax.Array:
        """Dropout of features float[B, ...], example b's mask drawn from dropout_keys[b] alone
        (nnx.Dropout vmapped: one key per example, whatever batch the example is in)."""
        return jax.vmap(lambda row, key: self.dropout(row, deterministic=False, rngs=key))(features, dropout_keys)


def build(config: Config, spec: DataSpec, key: jax.Array) -> CNN:
    height, width, _ = spec.shape()
    if height % 4 or width % 4:
        raise ValueError(f"the CNN's two 2x2 pools need a height and width divisible by 4, got {height}x{width}")
    return CNN(init_key=key, dropout_rate=config.settings.dropout_rate, image_shape=spec.shape(),
               num_classes=spec.num_classes, portable=config.portable)


def train_loss(model: CNN, batch: Batch, config: Config, keys):
    """Cross-entropy on augmented images; each example's augmentation from its ``augment``
    key, its dropout mask from its ``dropout`` key (both key[B])."""
    images = augment.apply(config, to_unit(batch.x), keys.augment)
    logits = model(images, train=True, dropout_keys=keys.dropout)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
    correct = jnp.argmax(logits, -1) == batch.y
    return losses.mean(), {"loss": losses.sum(), "accuracy": correct.sum(), "count": batch.y.shape[0]}


def eval_metrics(model: CNN, batch: Batch, config: Config):
    logits = model(to_unit(batch.x), train=False)
    metrics = {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch.y),
               "accuracy": (jnp.argmax(logits, -1) == batch.y).astype(jnp.float32)}
    return metrics, jax.nn.softmax(logits)


OBJECTIVE = Objective(
    name="cnn",
    build=build,
    train_loss=train_loss,
    eval_metrics=eval_metrics,
    streams=("dropout", "augment"),
    drawn=lambda config: tuple(name for name, off in (("dropout", config.settings.dropout_rate == 0),
                                                      ("augment", config.augment == "none")) if not off),
    classifier=True,
    panels=(("loss", ("train_loss", "test_loss")), ("accuracy", ("train_accuracy", "test_accuracy"))),
    settings=CNNSettings,
)
