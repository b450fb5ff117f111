"""Golden values: a few draws of every stream for seed 42, pinned.

"Same seed, same run" must also hold across upgrades of jax, jaxlib and flax, or be
known to break. If one of these fails after an upgrade, the upgrade changed what a
seed draws: every recorded result of older versions no longer reproduces. Say so in
the release notes and update the values here, deliberately.

These values pin what JAX's primitives compute; which primitive derives which draw, in
which order, is pinned apart from them, with jax.random alone, in test_streams.py
(test_every_draw_is_derived_as_the_module_documents). Update values here only while that
test passes: a failure there is a change of jaxseed's derivation, not of JAX.

Integer draws (keys, permutations, masks) are compared exactly; float draws to 1e-6,
since XLA CPU's code for the host's vector extensions may round them differently.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxseed
from jaxseed import augment, streams
from jaxseed.config import Config
from jaxseed.models.cnn import CNN
from jaxseed.models.vae import VAE, binarize, latent_noise


# Computed in each test, never at import: the code under test is what runs (a mutation tester swaps it
# in per test), and importing this module starts no JAX backend.
def roots():
    return streams.root_keys({name: 42 for name in streams.STREAMS})


def example():
    return streams.batch_keys(roots(), streams.PER_EXAMPLE, 1, jnp.array([7]))  # epoch 1, example 7


def words(key):
    return np.asarray(jax.random.key_data(key)).tolist()


def test_root_keys():
    assert {name: words(getattr(roots(), name)) for name in streams.STREAMS} == {
        "init": [1832780943, 270669613], "shuffle": [64467757, 2916123636], "dropout": [2465931498, 255383827],
        "augment": [3134548294, 894150801], "latent": [2954079971, 3276725750], "sample": [2765691542, 824333390]}
    assert words(streams.evaluation_key()) == [917456828, 636652529]


def test_shuffle():
    assert np.asarray(streams.epoch_order(roots().shuffle, 0, 1000))[:8].tolist() == [
        553, 236, 802, 313, 850, 330, 132, 451]


def test_training_subset():
    assert np.asarray(streams.training_subset(roots().sample, 1000, 8)).tolist() == [85, 126, 372, 526, 555, 587, 613,
                                                                                  740]


def test_per_example_keys():
    assert {name: words(getattr(example(), name))[0] for name in streams.PER_EXAMPLE} == {
        "dropout": [529650578, 1051703547], "augment": [616865971, 2162735492], "latent": [4095716482, 1581684245]}


def test_augment_draws():
    drawn = augment.sample_affine(example().augment, 2.0, 10.0)
    np.testing.assert_allclose([float(value[0]) for value in drawn],
                               [1.506917953491211, -0.3517117500305176, -0.013400901108980179], rtol=1e-6)


def test_dropout_mask():
    mask = CNN(init_key=roots().init).drop(jnp.ones((1, 16)), example().dropout)
    assert (np.asarray(mask[0]) > 0).astype(int).tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0]


def test_latent_noise():
    noise = latent_noise(example().latent, 20)
    np.testing.assert_allclose(np.asarray(noise)[0, :3], [0.0830451250076294, 0.011868622153997421,
                                                          -0.789460301399231], rtol=1e-6)


def test_init():
    cnn, vae = CNN(init_key=roots().init), VAE(init_key=roots().init)
    np.testing.assert_allclose(np.ravel(cnn.conv1.kernel[...])[:3],
                               [-0.25817301869392395, 0.5316475033760071, -0.30572304129600525], rtol=1e-6)
    np.testing.assert_allclose(np.ravel(cnn.head.kernel[...])[:2], [0.025391794741153717, 0.09505421668291092],
                               rtol=1e-6)
    np.testing.assert_allclose(np.ravel(vae.enc1.kernel[...])[:3],
                               [-0.027661392465233803, 0.05696222186088562, -0.03275603428483009], rtol=1e-6)


def test_binarisation():
    grey = jnp.full((1, 28, 28, 1), 128, jnp.uint8)  # each pixel ~ Bernoulli(128 / 255)
    pixels = binarize(grey, example().augment, Config(model="vae"))
    assert np.asarray(pixels).ravel()[:16].astype(int).tolist() == [0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0]


def test_the_public_functions():
    """jaxseed.Seeds, epoch_order, example_keys, step_key, named_key: what a user's own loop draws."""
    seeds = jaxseed.Seeds(42, dropout=7)
    assert words(seeds.key("dropout")) == [966301609, 1948237315]
    assert words(seeds.key("depth")) == [4031105503, 3908092409]  # a stream of the user's own, at the base seed
    assert np.asarray(jaxseed.epoch_order(seeds.key("shuffle"), 3, 10)).tolist() == [5, 6, 4, 2, 9, 1, 0, 7, 8, 3]
    assert words(jaxseed.example_keys(seeds.key("dropout"), 3, jnp.array([5, 0]))) == [
        [2048111456, 824608325], [193255023, 1602426013]]
    assert words(jaxseed.step_key(seeds.key("dropout"), 11)) == [595566831, 3771573808]
    assert words(jaxseed.named_key(seeds.key("init"), "encoder/conv1")) == [1651874759, 558373449]
