"""A Flax Linen model in your own loop, with a key per step from jaxseed's streams.

    python examples/linen_loop.py --seed 0 --dropout-seed 7 --epochs 2

Linen draws dropout from the key handed to ``apply(..., rngs={"dropout": key})``; here
that key is ``jaxseed.step_key(dropout root, step)``. A per-step key is what Linen's
layers take as they are, but it moves with the batch size and the order: an example's
mask depends on the step it lands in (``examples/equinox_loop.py`` draws one key per
example instead). The layers have explicit names: Linen folds a module's path into its
keys, so a layer named alike starts alike in a model with one more layer.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxseed

DATA = "tests/data/fashion-mnist-small.npz"
BATCH = 100


class MLP(nn.Module):
    classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Dense(128, name="hidden")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.classes, name="out")(x)


def train(seed: int, dropout_seed: int, epochs: int, data: str = DATA) -> dict:
    arrays = np.load(data, allow_pickle=False)
    x = jnp.asarray(arrays["x_train"].reshape(len(arrays["x_train"]), -1) / 255.0, jnp.float32)
    y = jnp.asarray(arrays["y_train"])
    seeds = jaxseed.Seeds(seed, dropout=dropout_seed)
    model = MLP(int(y.max()) + 1)
    params = model.init(seeds.key("init"), x[:1], train=False)["params"]
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y, key):
        def loss(params):
            logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    steps_per_epoch = len(x) // BATCH
    for epoch in range(epochs):
        order = jaxseed.epoch_order(seeds.key("shuffle"), epoch, len(x))
        for i in range(steps_per_epoch):
            index = order[i * BATCH:(i + 1) * BATCH]
            key = jaxseed.step_key(seeds.key("dropout"), epoch * steps_per_epoch + i)
            params, opt_state, value = train_step(params, opt_state, x[index], y[index], key)
        print(f"epoch {epoch + 1}: train loss {float(value):.4f}")
    return params


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    train(args.seed, args.dropout_seed, args.epochs)
