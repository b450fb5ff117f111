"""An MLP on Fashion-MNIST from an .npz file: your own model through jaxseed, in one file.

    python -m jaxseed.train --objective examples/mlp_fashion_mnist.py:OBJECTIVE \
        --data npz:fashion_mnist.npz --augment none --epochs 5
    python -m jaxseed.ablate --objective examples/mlp_fashion_mnist.py:OBJECTIVE \
        --data npz:fashion_mnist.npz --augment none --epochs 2 --seeds 5

Its randomness, declared once below: ``init`` and ``shuffle`` (every run), the
built-in ``dropout`` stream, and a stream of its own, ``noise``: Gaussian noise
added to each training image (noise injection), one key per example. Vary it
alone with ``--stream noise=7``. Its settings, ``--dropout-rate`` and ``--noise-std``, are its
own (``MLPSettings``).
"""

import dataclasses
import math

import jax
import optax
from flax import nnx

from jaxseed.config import Settings, setting
from jaxseed.objective import Objective, to_unit


@dataclasses.dataclass(frozen=True)
class MLPSettings(Settings):
    """This objective's own settings: each is a flag (--noise-std 0.2), recorded in the manifest."""

    dropout_rate: float = setting(0.5, "dropout rate of the hidden layer", minimum=0.0, below=1.0)
    noise_std: float = setting(0.1, "std of the Gaussian noise added to pixels in [0, 1]", minimum=0.0)


class MLP(nnx.Module):
    def __init__(self, pixels: int, classes: int, dropout_rate: float, key: jax.Array):
        rngs = nnx.Rngs(params=key)  # used only here, to initialise: every other draw is a key argument
        self.hidden = nnx.Linear(pixels, 256, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.out = nnx.Linear(256, classes, rngs=rngs)

    def __call__(self, images, dropout_keys=None):
        x = nnx.relu(self.hidden(images.reshape(images.shape[0], -1)))
        if dropout_keys is not None:  # training: example b's mask from its own key
            x = jax.vmap(lambda row, key: self.dropout(row, deterministic=False, rngs=key))(x, dropout_keys)
        return self.out(x)


def build(config, spec, key):
    return MLP(math.prod(spec.shape()), spec.num_classes, config.settings.dropout_rate, key)


def scores(logits, labels):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses, (logits.argmax(-1) == labels).astype("float32")


def train_loss(model, batch, config, keys):
    images = to_unit(batch.x)
    noise = jax.vmap(lambda key: jax.random.normal(key, images.shape[1:]))(keys.noise)
    losses, correct = scores(model(images + config.settings.noise_std * noise, keys.dropout), batch.y)
    return losses.mean(), {"loss": losses.sum(), "accuracy": correct.sum(), "count": batch.y.shape[0]}


def eval_metrics(model, batch, config):
    logits = model(to_unit(batch.x))
    losses, correct = scores(logits, batch.y)
    return {"loss": losses, "accuracy": correct}, jax.nn.softmax(logits)


OBJECTIVE = Objective(
    build=build, train_loss=train_loss, eval_metrics=eval_metrics, classifier=True,
    streams=("dropout", "noise"),
    drawn=lambda config: tuple(name for name, on in (("dropout", config.settings.dropout_rate > 0),
                                                     ("noise", config.settings.noise_std > 0)) if on),
    panels=(("loss", ("train_loss", "test_loss")), ("accuracy", ("train_accuracy", "test_accuracy"))),
    settings=MLPSettings,
)
