"""An Equinox model in your own loop, keys as arguments, from jaxseed's streams.

    python examples/equinox_loop.py --seed 0 --dropout-seed 7 --epochs 2

Each layer is initialised from its own key, ``jaxseed.named_key(init root, layer name)``,
so a model with one more layer starts the shared ones alike; each example's dropout
mask comes from its own key, ``jaxseed.example_keys`` (the epoch and the example's
place in the training set), so the order and the batch size move no mask.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxseed

DATA = "tests/data/fashion-mnist-small.npz"
BATCH = 100


class MLP(eqx.Module):
    hidden: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, pixels: int, classes: int, key: jax.Array):
        self.hidden = eqx.nn.Linear(pixels, 128, key=jaxseed.named_key(key, "hidden"))
        self.dropout = eqx.nn.Dropout(0.5)
        self.out = eqx.nn.Linear(128, classes, key=jaxseed.named_key(key, "out"))

    def __call__(self, x, key=None):  # one example; a key for training, None to evaluate
        x = self.dropout(jax.nn.relu(self.hidden(x)), key=key, inference=key is None)
        return self.out(x)


@eqx.filter_jit
def train_step(model, opt_state, x, y, dropout_keys, optimizer):
    def loss(model):
        logits = jax.vmap(model)(x, dropout_keys)  # example b's mask from dropout_keys[b]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    value, grads = eqx.filter_value_and_grad(loss)(model)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, value


def train(seed: int, dropout_seed: int, epochs: int, data: str = DATA) -> MLP:
    arrays = np.load(data, allow_pickle=False)
    x = jnp.asarray(arrays["x_train"].reshape(len(arrays["x_train"]), -1) / 255.0, jnp.float32)
    y = jnp.asarray(arrays["y_train"])
    seeds = jaxseed.Seeds(seed, dropout=dropout_seed)
    model = MLP(x.shape[1], int(y.max()) + 1, seeds.key("init"))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    for epoch in range(epochs):
        order = jaxseed.epoch_order(seeds.key("shuffle"), epoch, len(x))
        for start in range(0, len(x) - BATCH + 1, BATCH):
            index = order[start:start + BATCH]
            keys = jaxseed.example_keys(seeds.key("dropout"), epoch, index)
            model, opt_state, value = train_step(model, opt_state, x[index], y[index], keys, optimizer)
        print(f"epoch {epoch + 1}: train loss {float(value):.4f}")
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    train(args.seed, args.dropout_seed, args.epochs)
