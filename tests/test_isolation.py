"""Vary one stream's seed: its own draws change, every other stream's stay bit-identical."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseed import augment, manifest, step, streams
from jaxseed.config import Config
from jaxseed.models import cnn, vae
from jaxseed.objective import image_spec

CONFIG = Config(train_limit=512, batch_size=64, epochs=2)
NUM_TRAIN = 512


def draws(seeds: dict) -> dict:
    """What every stream draws, computed by the same functions training uses."""
    keys = streams.root_keys(seeds)
    tx = step.make_optimizer(CONFIG, NUM_TRAIN)
    graphdef, state = step.init_state(cnn.OBJECTIVE, CONFIG, image_spec((28, 28, 1), 10), keys, tx)
    model = nnx.merge(graphdef, state.params)
    per_epoch = [streams.batch_keys(keys, streams.PER_EXAMPLE, epoch, jnp.arange(NUM_TRAIN)) for epoch in (0, 1)]
    dropout_masks = [model.drop(jnp.ones((NUM_TRAIN, 256)), drawn.dropout) for drawn in per_epoch]
    return {
        "init": manifest.tree_hash(state.params),
        "shuffle": manifest.arrays_hash(streams.epoch_order(keys.shuffle, e, NUM_TRAIN) for e in (0, 1)),
        "augment": manifest.arrays_hash(np.stack(augment.sample_affine(drawn.augment, 2.0, 10.0))
                                        for drawn in per_epoch),
        "dropout": manifest.arrays_hash(dropout_masks),
        "latent": manifest.arrays_hash(vae.latent_noise(drawn.latent, 20) for drawn in per_epoch),
        "sample": manifest.arrays_hash([streams.training_subset(keys.sample, NUM_TRAIN, NUM_TRAIN // 2)]),
    }


BASE = {name: 11 for name in streams.STREAMS}


@pytest.fixture(scope="module")
def base_draws():
    return draws(BASE)


@pytest.mark.parametrize("varied", streams.STREAMS)
def test_varying_one_stream_changes_only_its_draws(base_draws, varied):
    other = draws({**BASE, varied: 12})
    for name in streams.STREAMS:
        if name == varied:
            assert other[name] != base_draws[name], f"changing {varied} did not change its own draws"
        else:
            assert other[name] == base_draws[name], f"changing {varied} changed the {name} draws"


def test_same_seed_same_draws(base_draws):
    assert draws(BASE) == base_draws
