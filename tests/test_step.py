"""jaxseed.step: the pure training step and the jitted call of several, driven by hand."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseed import data, objective, step, streams
from jaxseed.config import Config
from jaxseed.models import cnn
from jaxseed.objective import Batch, image_spec

SEEDS = {name: 42 for name in streams.STREAMS}
SPEC = image_spec((28, 28, 1), 10)  # the synthetic set's


def one_replica(tree):
    """A single run's arrays with the loop's leading replica axis (R = 1)."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], tree)


def test_loop_strategies_agree(tiny_config):
    """Unrolled calls of 4, of 3+1, and lax.scan compute the same run: the VAE's, whose steps draw
    per example too (a scan over the CNN's convolutions is ~20x slower on CPU, jax#12868).

    Not bitwise: XLA fuses differently per loop form."""
    params = {}
    dataset = data.load("synthetic", train_limit=256)
    vae = objective.resolve("vae")
    for loop_form, per_call in [("unroll", 4), ("unroll", 3), ("scan", 4)]:  # calls of 4; of 3 and 1; a scan
        config = tiny_config.replace(model="vae", loop=loop_form, steps_per_call=per_call)
        keys = streams.root_keys({name: 42 for name in vae.run_streams})
        tx = step.make_optimizer(config, 256)
        graphdef, state = step.init_state(vae, config, SPEC, keys, tx)
        state, replica_keys = one_replica(state), one_replica(keys)
        perm = streams.epoch_order(keys.shuffle, 0, 256)[None]
        first = 0
        while first < 4:
            n = min(per_call, 4 - first)
            runner = step.make_run_steps(vae, config, graphdef, tx, 1, n, loop_form)
            state, _, _ = runner(state, dataset.train, perm, replica_keys, 0, first)
            first += n
        params[(loop_form, per_call)] = jax.tree.leaves(state.params)
    reference = params[("unroll", 4)]
    for name, leaves in params.items():
        for a, b in zip(reference, leaves):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(name))


def test_train_step_compiles_once(tiny_config):
    keys = streams.root_keys(SEEDS)
    tx = step.make_optimizer(tiny_config, 256)
    graphdef, state = step.init_state(cnn.OBJECTIVE, tiny_config, SPEC, keys, tx)
    state, replica_keys = one_replica(state), one_replica(keys)
    dataset = data.load("synthetic", train_limit=256)
    runner = step.make_run_steps(cnn.OBJECTIVE, tiny_config, graphdef, tx, 1, 1, "unroll")
    for epoch in range(2):
        perm = streams.epoch_order(keys.shuffle, epoch, 256)[None]
        for first in range(4):
            state, _, _ = runner(state, dataset.train, perm, replica_keys, epoch, first)
    assert runner._cache_size() == 1
    assert int(state.step[0]) == 8


def synthetic_batch(index):
    dataset = data.synthetic()
    index = np.asarray(index)
    return Batch({"x": jnp.asarray(dataset.train["x"][index]), "y": jnp.asarray(dataset.train["y"][index])},
                 jnp.asarray(index))


def test_key_reuse_checker_can_fail():
    """The checker above catches a key reused inside the step: here the CNN's objective is
    miswired to draw its dropout masks from the augmentation keys."""
    def reuse(model, batch, config, keys):
        return cnn.train_loss(model, batch, config, streams.Keys({"augment": keys.augment, "dropout": keys.augment}))

    miswired = dataclasses.replace(cnn.OBJECTIVE, train_loss=reuse)
    config = Config(data="synthetic")
    keys, tx = streams.root_keys(SEEDS), optax.sgd(0.0)
    graphdef, state = step.init_state(miswired, config, SPEC, keys, tx)
    jitted_step = jax.jit(functools.partial(step.train_step, objective=miswired, graphdef=graphdef, tx=tx,
                                            config=config))
    with jax.debug_key_reuse(True), pytest.raises(jax.errors.KeyReuseError):
        jitted_step(state, synthetic_batch(np.arange(8)), keys, 0)


@pytest.mark.parametrize("model", ["cnn", "vae"])
def test_an_examples_draws_do_not_depend_on_its_batch(model):
    """With the parameters held fixed (learning rate 0), the loss of 64 examples is the same in
    one batch as in two batches of 32 taken in another order at later steps: each example's
    augmentation, dropout mask and latent noise come from (epoch, its index) alone, not from the
    step, its place in the batch or the batch size."""
    config, found = Config(model=model, data="synthetic"), objective.resolve(model)
    keys, tx = streams.root_keys(SEEDS), optax.sgd(0.0)
    graphdef, state = step.init_state(found, config, SPEC, keys, tx)
    jitted_step = jax.jit(functools.partial(step.train_step, objective=found, graphdef=graphdef, tx=tx,
                                            config=config))
    index = np.arange(64)
    state, whole = jitted_step(state, synthetic_batch(index), keys, 3)
    state, second = jitted_step(state, synthetic_batch(index[32:][::-1]), keys, 3)
    state, first = jitted_step(state, synthetic_batch(index[:32]), keys, 3)
    assert int(state.step) == 3
    np.testing.assert_allclose(float(first["loss"]) + float(second["loss"]), float(whole["loss"]), rtol=1e-5)
    _, other_epoch = jitted_step(state, synthetic_batch(index), keys, 4)
    assert float(other_epoch["loss"]) != float(whole["loss"])  # the epoch is a position: new draws
