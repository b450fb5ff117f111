"""Your own training loop with jaxseed's streams: plain JAX and optax, no jaxseed loop.

    python examples/own_loop.py --seed 0 --dropout-seed 7 --epochs 2
    python -m jaxseed.study examples/own_loop.py:run --streams init,shuffle,dropout --seeds 5
    python -m jaxseed.study examples/own_loop.py:run --compare examples/own_loop.py:run_three_epochs --seeds 10

Every random draw comes from a named stream's root key, by position: the initial
weights from ``init``, each epoch's order from ``shuffle`` and the epoch, each
example's dropout mask from ``dropout``, the epoch and the example's index. So
``--dropout-seed`` changes the masks and nothing else, and resuming at an epoch
needs no RNG state: the keys of epoch e are recomputed from e (``train``'s
``first_epoch``; a checkpoint holds the parameters, the optimiser state and e). ``run`` is one run
as ``jaxseed.study`` calls it: the run's Seeds in, its test metrics, which test examples it gets
right and a fingerprint of its weights out.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxseed

DATA = "tests/data/fashion-mnist-small.npz"  # 1,000 + 500 examples of Fashion-MNIST
BATCH, HIDDEN, DROP = 100, 128, 0.5


def init(key, pixels, classes):
    k1, k2 = (jax.random.fold_in(key, i) for i in range(2))  # by position, as every draw here
    return {"w1": jax.random.normal(k1, (pixels, HIDDEN)) * pixels**-0.5, "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, classes)) * HIDDEN**-0.5, "b2": jnp.zeros(classes)}


def loss(params, x, y, dropout_keys):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1 - DROP, (HIDDEN,)))(dropout_keys)  # one mask per example
    logits = (hidden * keep / (1 - DROP)) @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


optimizer = optax.adam(1e-3)


@jax.jit
def train_step(params, opt_state, x, y, dropout_keys):
    value, grads = jax.value_and_grad(loss)(params, x, y, dropout_keys)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value


def train(seed: int, dropout_seed: int, epochs: int, data: str = DATA, state=None, first_epoch: int = 0,
          log: bool = True):
    """(params, optimiser state) after ``epochs`` epochs, resumed from ``state`` at ``first_epoch`` if given."""
    return fit(jaxseed.Seeds(seed, dropout=dropout_seed), epochs, data, state, first_epoch, log)


def fit(seeds: jaxseed.Seeds, epochs: int, data: str = DATA, state=None, first_epoch: int = 0, log: bool = True):
    arrays = np.load(data, allow_pickle=False)
    x = jnp.asarray(arrays["x_train"].reshape(len(arrays["x_train"]), -1) / 255.0, jnp.float32)
    y = jnp.asarray(arrays["y_train"])
    if state is None:
        params = init(seeds.key("init"), x.shape[1], int(y.max()) + 1)
        state = params, optimizer.init(params)
    params, opt_state = state
    for epoch in range(first_epoch, epochs):
        order = jaxseed.epoch_order(seeds.key("shuffle"), epoch, len(x))
        for start in range(0, len(x) - BATCH + 1, BATCH):
            index = order[start:start + BATCH]  # the examples' places in the training set
            keys = jaxseed.example_keys(seeds.key("dropout"), epoch, index)
            params, opt_state, value = train_step(params, opt_state, x[index], y[index], keys)
        if log:
            print(f"epoch {epoch + 1}: train loss {float(value):.4f}")
    return params, opt_state


def run(seeds: jaxseed.Seeds, epochs: int = 2, data: str = DATA) -> jaxseed.Result:
    """One run of a study: train on ``seeds``, then evaluate on the test set (no dropout)."""
    params, _ = fit(seeds, epochs, data, log=False)
    arrays = np.load(data, allow_pickle=False)
    x = arrays["x_test"].reshape(len(arrays["x_test"]), -1) / 255.0
    logits = jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, arrays["y_test"])
    correct = np.asarray(logits.argmax(-1) == arrays["y_test"])
    return jaxseed.Result(metrics={"test_accuracy": correct.mean(), "test_loss": losses.mean()},
                          per_example={"correct": correct}, fingerprint=jaxseed.fingerprint(params))


def run_three_epochs(seeds: jaxseed.Seeds) -> jaxseed.Result:
    """``run`` with a third epoch: compared with ``run`` under the same randomness (``--compare``)."""
    return run(seeds, epochs=3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    train(args.seed, args.dropout_seed, args.epochs, args.data)
