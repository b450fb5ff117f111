"""A small ResNet on CIFAR-10 with stochastic depth drawn from a stream of its own.

    python -m jaxseed.train --objective examples/resnet_cifar10.py:OBJECTIVE --data cifar10 \
        --augment crop_flip --epochs 10
    python -m jaxseed.ablate --objective examples/resnet_cifar10.py:OBJECTIVE --data cifar10 \
        --augment crop_flip --streams depth,augment --seeds 5

ResNet-8: a 3x3 stem, three residual blocks (16, 32, 64 features; the last two
halve the resolution), global average pooling and a linear head. GroupNorm
instead of BatchNorm: an example's output then depends on that example alone,
never on the batch it lands in, so each per-example draw keeps its meaning.

Its randomness, declared once below: ``init``, ``shuffle``, ``augment`` (the
padded random crop and flip of ``--augment crop_flip``) and its own ``depth``
stream: stochastic depth (Huang et al., 2016) drops each example's residual
branch of block l with probability ``drop_rate`` * l / 2 while training (0, 0.1,
0.2 by default, growing with depth as in Huang et al.), from that example's key
alone. ``--stream depth=7`` varies only that; ``--drop-rate`` is this objective's
own setting (``ResNetSettings``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxseed import augment
from jaxseed.config import Settings, setting
from jaxseed.objective import Objective, to_unit

WIDTHS = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class ResNetSettings(Settings):
    drop_rate: float = setting(0.2, "stochastic depth: the last block's drop probability (block l's: rate * l / 2)",
                               minimum=0.0, below=1.0)


class Block(nnx.Module):
    def __init__(self, features_in: int, features: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(features_in, features, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.norm1 = nnx.GroupNorm(features, num_groups=8, rngs=rngs)
        self.conv2 = nnx.Conv(features, features, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.GroupNorm(features, num_groups=8, rngs=rngs)
        self.project = nnx.Conv(features_in, features, (1, 1), strides=stride, use_bias=False, rngs=rngs) \
            if stride != 1 or features_in != features else None

    def __call__(self, x, keep):
        """keep: float[B], each example's scale of the residual branch (0 drops it)."""
        branch = self.norm2(self.conv2(nnx.relu(self.norm1(self.conv1(x)))))
        shortcut = x if self.project is None else self.project(x)
        return nnx.relu(shortcut + keep[:, None, None, None] * branch)


class ResNet(nnx.Module):
    def __init__(self, channels: int, classes: int, drop_rate: float, key: jax.Array):
        self.drops = tuple(drop_rate * l / (len(WIDTHS) - 1) for l in range(len(WIDTHS)))
        rngs = nnx.Rngs(params=key)  # used only here, to initialise: every other draw is a key argument
        self.stem = nnx.Conv(channels, WIDTHS[0], (3, 3), rngs=rngs)
        features = (WIDTHS[0], *WIDTHS)
        self.blocks = nnx.List([Block(features[i], features[i + 1], 1 if i == 0 else 2, rngs)
                                for i in range(len(WIDTHS))])
        self.head = nnx.Linear(WIDTHS[-1], classes, rngs=rngs)

    def __call__(self, images, depth_keys=None):
        """Logits; while training (``depth_keys`` key[B] given), block l keeps example b's branch
        with probability 1 - drops[l], drawn from fold_in(depth_keys[b], l), scaled by 1 / (1 - drops[l])."""
        x = nnx.relu(self.stem(images))
        for l, block in enumerate(self.blocks):
            keep = jnp.ones(x.shape[0])
            if depth_keys is not None and self.drops[l] > 0:
                survive = 1.0 - self.drops[l]
                kept = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, l), survive))(depth_keys)
                keep = kept / survive
            x = block(x, keep)
        return self.head(x.mean(axis=(1, 2)))


def build(config, spec, key):
    return ResNet(spec.shape()[2], spec.num_classes, config.settings.drop_rate, key)


def train_loss(model, batch, config, keys):
    images = augment.apply(config, to_unit(batch.x), keys.augment)
    logits = model(images, keys.depth)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
    correct = logits.argmax(-1) == batch.y
    return losses.mean(), {"loss": losses.sum(), "accuracy": correct.sum(), "count": batch.y.shape[0]}


def eval_metrics(model, batch, config):
    logits = model(to_unit(batch.x))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
    return {"loss": losses, "accuracy": (logits.argmax(-1) == batch.y).astype(jnp.float32)}, \
        jax.nn.softmax(logits)


OBJECTIVE = Objective(
    build=build, train_loss=train_loss, eval_metrics=eval_metrics, classifier=True,
    streams=("augment", "depth"),
    drawn=lambda config: tuple(name for name, on in (("augment", config.augment != "none"),
                                                     ("depth", config.settings.drop_rate > 0)) if on),
    panels=(("loss", ("train_loss", "test_loss")), ("accuracy", ("train_accuracy", "test_accuracy"))),
    settings=ResNetSettings,
)
