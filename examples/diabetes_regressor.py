"""A regressor on float features: scikit-learn's diabetes data through jaxseed.

    python tests/data/cut_diabetes.py            # once: scikit-learn's data -> tests/data/diabetes.npz
    python -m jaxseed.train --objective examples/diabetes_regressor.py:OBJECTIVE \
        --data npz:tests/data/diabetes.npz --epochs 100 --batch-size 32
    python -m jaxseed.ablate --objective examples/diabetes_regressor.py:OBJECTIVE \
        --data npz:tests/data/diabetes.npz --epochs 100 --batch-size 32 --seeds 10

The data: ``x`` float32[N, 10] (age, sex, body-mass index, blood pressure, six
serum measurements), ``y`` the disease progression a year later in units of its
training std. An MLP predicts ``y``; the loss is the squared error, so a test
loss of 0.5 means half the target's variance is left unexplained.

Its randomness, declared once below: ``init``, ``shuffle`` and ``dropout`` (of
each hidden layer, one key per example). ``--dropout-rate`` and ``--hidden`` are
this objective's own settings (``RegressorSettings``).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseed.config import Settings, setting
from jaxseed.objective import Objective


@dataclasses.dataclass(frozen=True)
class RegressorSettings(Settings):
    dropout_rate: float = setting(0.1, "dropout of each hidden layer", minimum=0.0, below=1.0)
    hidden: int = setting(64, "units of each of the two hidden layers", minimum=1, maximum=4096)


class MLP(nnx.Module):
    def __init__(self, features: int, hidden: int, key: jax.Array):
        rngs = nnx.Rngs(params=key)  # used only here, to initialise: every other draw is a key argument
        self.layers = nnx.List([nnx.Linear(features, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs)])
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x, dropout_keys=None, rate: float = 0.0):
        """Predictions float[B] from features float[B, F]; example b's dropout masks from dropout_keys[b] alone."""
        for i, layer in enumerate(self.layers):
            x = nnx.relu(layer(x))
            if dropout_keys is not None and rate > 0:
                keep = jax.vmap(lambda key, row: jax.random.bernoulli(jax.random.fold_in(key, i), 1 - rate,
                                                                      row.shape))(dropout_keys, x)
                x = jnp.where(keep, x / (1 - rate), 0.0)
        return self.out(x)[:, 0]


def build(config, spec, key):
    return MLP(spec.shape()[0], config.settings.hidden, key)


def train_loss(model, batch, config, keys):
    errors = (model(batch.x, keys.dropout, config.settings.dropout_rate) - batch.y) ** 2
    return errors.mean(), {"loss": errors.sum(), "count": errors.shape[0]}


def eval_metrics(model, batch, config):
    errors = model(batch.x) - batch.y
    return {"loss": errors ** 2, "abs_error": jnp.abs(errors)}, None


OBJECTIVE = Objective(
    build=build, train_loss=train_loss, eval_metrics=eval_metrics,
    streams=("dropout",),
    drawn=lambda config: ("dropout",) if config.settings.dropout_rate > 0 else (),
    panels=(("squared error (target std units)", ("train_loss", "test_loss")),),
    settings=RegressorSettings,
)
