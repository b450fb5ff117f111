"""A small character-level transformer on fortunes: a model of text, not of images, through jaxseed.

    python tests/data/cut_fortunes.py            # once: Debian's fortunes -> tests/data/fortunes.npz
    python -m jaxseed.train --objective examples/char_transformer.py:OBJECTIVE \
        --data npz:tests/data/fortunes.npz --epochs 20 --batch-size 32
    python -m jaxseed.ablate --objective examples/char_transformer.py:OBJECTIVE \
        --data npz:tests/data/fortunes.npz --epochs 5 --batch-size 32 --seeds 5

The data: one fortune per example, ``x`` its first 97 characters as ids (0 pads,
1 masks, then ' ' .. '~'), ``length`` how many are characters. The model reads
characters 0 .. 95 and predicts each next one (causal self-attention, two
pre-norm blocks); the loss counts the real characters only.

Its randomness, declared once below: ``init``, ``shuffle``, ``dropout`` (after
attention and in each block's MLP, one key per example) and a stream of its
own, ``masking``: token masking, each input character replaced by the mask id
with probability ``mask_rate`` (its targets stay the true characters).
``--stream masking=7`` varies only that. ``--dropout-rate`` and ``--mask-rate``
are this objective's own settings (``TextSettings``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxseed.config import Settings, setting
from jaxseed.objective import Objective

PAD, MASK, VOCABULARY = 0, 1, 97  # as tests/data/cut_fortunes.py writes them
WIDTH, HEADS, BLOCKS = 64, 4, 2


@dataclasses.dataclass(frozen=True)
class TextSettings(Settings):
    dropout_rate: float = setting(0.1, "dropout after attention and in each MLP", minimum=0.0, below=1.0)
    mask_rate: float = setting(0.1, "probability of replacing each input character by the mask id", minimum=0.0,
                               below=1.0)


def dropout(x: jax.Array, keys: jax.Array | None, site: int, rate: float) -> jax.Array:
    """Inverted dropout of x float[B, ...], example b's mask from fold_in(keys[b], site) alone."""
    if keys is None or rate == 0:
        return x
    keep = jax.vmap(lambda key, row: jax.random.bernoulli(jax.random.fold_in(key, site), 1 - rate, row.shape))(keys, x)
    return jnp.where(keep, x / (1 - rate), 0.0)


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(HEADS, WIDTH, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.up = nnx.Linear(WIDTH, 4 * WIDTH, rngs=rngs)
        self.down = nnx.Linear(4 * WIDTH, WIDTH, rngs=rngs)

    def __call__(self, x, mask, keys, site: int, rate: float):
        x = x + dropout(self.attention(self.norm1(x), mask=mask), keys, site, rate)
        return x + dropout(self.down(nnx.gelu(self.up(self.norm2(x)))), keys, site + 1, rate)


class CharTransformer(nnx.Module):
    def __init__(self, length: int, key: jax.Array):
        rngs = nnx.Rngs(params=key)  # used only here, to initialise: every other draw is a key argument
        self.embed = nnx.Embed(VOCABULARY, WIDTH, rngs=rngs)
        self.position = nnx.Param(jax.random.normal(rngs.params(), (length, WIDTH)) * 0.02)
        self.blocks = nnx.List([Block(rngs) for _ in range(BLOCKS)])
        self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.out = nnx.Linear(WIDTH, VOCABULARY, rngs=rngs)

    def __call__(self, ids, dropout_keys=None, rate: float = 0.0):
        """Logits float[B, T, VOCABULARY] of each next character, from ids int[B, T]."""
        x = self.embed(ids) + self.position[...]
        causal = nnx.make_causal_mask(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, causal, dropout_keys, 2 * i, rate)
        return self.out(self.norm(x))


def build(config, spec, key):
    return CharTransformer(spec.shape()[0] - 1, key)


def scores(model, batch, inputs, dropout_keys=None, rate=0.0):
    """Per example: mean cross-entropy over its real next characters (nats), and the fraction predicted."""
    targets = batch.x[:, 1:].astype(jnp.int32)
    logits = model(inputs, dropout_keys, rate)
    real = jnp.arange(targets.shape[1]) < batch.length[:, None] - 1
    count = jnp.maximum(real.sum(1), 1)
    losses = (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * real).sum(1) / count
    correct = ((logits.argmax(-1) == targets) & real).sum(1) / count
    return losses, correct


def train_loss(model, batch, config, keys):
    inputs = batch.x[:, :-1].astype(jnp.int32)
    rate = config.settings.mask_rate
    if rate > 0:  # example b's masked positions from its own key
        masked = jax.vmap(lambda key, row: jax.random.bernoulli(key, rate, row.shape))(keys.masking, inputs)
        inputs = jnp.where(masked & (inputs != PAD), MASK, inputs)
    losses, correct = scores(model, batch, inputs, keys.dropout, config.settings.dropout_rate)
    return losses.mean(), {"loss": losses.sum(), "accuracy": correct.sum(), "count": losses.shape[0]}


def eval_metrics(model, batch, config):
    losses, correct = scores(model, batch, batch.x[:, :-1].astype(jnp.int32))
    return {"loss": losses, "accuracy": correct}, None


OBJECTIVE = Objective(
    build=build, train_loss=train_loss, eval_metrics=eval_metrics,
    streams=("dropout", "masking"),
    drawn=lambda config: tuple(name for name, on in (("dropout", config.settings.dropout_rate > 0),
                                                     ("masking", config.settings.mask_rate > 0)) if on),
    panels=(("loss (nats per character)", ("train_loss", "test_loss")),
            ("next characters predicted", ("train_accuracy", "test_accuracy"))),
    settings=TextSettings,
)
