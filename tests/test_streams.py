"""Streams: roots depend only on (seed, id); draws are by position and distinct."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseed import streams
from jaxseed.errors import UserError


def key_words(key):
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_roots_differ_across_streams_with_one_seed():
    roots = streams.root_keys({name: 7 for name in streams.STREAMS})
    assert len({key_words(k) for k in roots}) == len(streams.STREAMS)


def test_root_depends_only_on_its_own_seed_and_id():
    base = streams.root_keys({name: 1 for name in streams.STREAMS})
    for varied in streams.STREAMS:
        other = streams.root_keys({name: (2 if name == varied else 1) for name in streams.STREAMS})
        for name in streams.STREAMS:
            same = key_words(getattr(base, name)) == key_words(getattr(other, name))
            assert same == (name != varied), (varied, name)


def test_roots_are_pure_functions_of_the_seed():
    a = streams.root_keys({name: 3 for name in streams.STREAMS})
    b = streams.root_keys({name: 3 for name in streams.STREAMS})
    assert [key_words(k) for k in a] == [key_words(k) for k in b]


def test_derived_keys_distinct_across_streams_and_positions():
    roots = streams.root_keys({name: 0 for name in streams.STREAMS})
    seen = set()
    for epoch in range(4):
        for keys in streams.example_keys(roots, epoch, jnp.arange(16)):
            seen.update(tuple(row) for row in np.asarray(jax.random.key_data(keys)).tolist())
    seen.update(key_words(k) for k in (streams.evaluation_key(), streams.synthetic_data_key(), *roots))
    assert len(seen) == 3 * 4 * 16 + 2 + 5  # no collisions at all


def test_reserved_keys_are_no_stream_root_at_any_seed():
    """A future stream, with the next free id, seeded 0 must not equal a reserved key."""
    reserved = {key_words(streams.evaluation_key()), key_words(streams.synthetic_data_key())}
    for stream_id in range(len(streams.STREAMS) + 8):
        root = jax.random.fold_in(jax.random.key(0, impl=streams.GENERATOR), stream_id)
        assert key_words(root) not in reserved
    assert max(streams.STREAM_IDS.values()) < min(streams.EVALUATION_ID, streams.SYNTHETIC_DATA_ID)


def test_example_keys_are_each_streams_per_example_keys():
    roots = streams.root_keys({name: 4 for name in streams.STREAMS})
    index = jnp.array([3, 0, 9])
    keys = streams.example_keys(roots, 2, index)
    for name in streams.PER_EXAMPLE:
        expected = streams.per_example_keys(getattr(roots, name), 2, index)
        assert [key_words(k) for k in getattr(keys, name)] == [key_words(k) for k in expected]


def test_generator_is_pinned_whatever_the_default():
    """jax_default_prng_impl=rbg (common in TPU code) must not change any draw."""
    threefry = [key_words(k) for k in streams.root_keys({name: 42 for name in streams.STREAMS})]
    with jax.default_prng_impl("rbg"):
        assert str(jax.random.key_impl(jax.random.key(42))) != streams.GENERATOR  # the default did change
        assert [key_words(k) for k in streams.root_keys({name: 42 for name in streams.STREAMS})] == threefry


def test_per_example_key_ignores_batch_layout():
    root = streams.root_keys({name: 5 for name in streams.STREAMS}).augment
    whole = np.asarray(jax.random.key_data(streams.per_example_keys(root, 3, jnp.arange(10))))
    part = np.asarray(jax.random.key_data(streams.per_example_keys(root, 3, jnp.array([7, 2]))))
    np.testing.assert_array_equal(part, whole[[7, 2]])


def test_permutation_is_a_permutation_and_changes_by_epoch():
    root = streams.root_keys({name: 0 for name in streams.STREAMS}).shuffle
    p0, p1 = (np.asarray(streams.epoch_permutation(root, e, 100)) for e in (0, 1))
    assert sorted(p0.tolist()) == list(range(100))
    assert not np.array_equal(p0, p1)


def test_resolve_seeds_overrides_one_stream():
    seeds = streams.resolve_seeds(42, {"dropout": "7"})
    assert seeds == {"init": 42, "shuffle": 42, "dropout": 7, "augment": 42, "latent": 42}


@pytest.mark.parametrize("overrides, message", [
    ({"dropuot": 1}, "valid streams: init, shuffle, dropout, augment, latent"),
    ({"latent": 1}, "it uses: init, shuffle, dropout, augment"),
    ({"dropout": "x"}, f"[0, {streams.MAX_SEED}]"),
    ({"dropout": -1}, f"[0, {streams.MAX_SEED}]"),
    ({"dropout": 2**32}, f"[0, {streams.MAX_SEED}]"),
])
def test_resolve_seeds_rejects_bad_input(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        streams.resolve_seeds(0, overrides, used=("init", "shuffle", "dropout", "augment"))
