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
    for root in roots:
        for position in range(4):
            keys = streams.per_example_keys(root, position, jnp.arange(16))
            seen.update(tuple(row) for row in np.asarray(jax.random.key_data(keys)).tolist())
            seen.add(key_words(streams.dropout_key(root, position)))
    seen.add(key_words(streams.evaluation_key()))
    assert len(seen) == 5 * 4 * 16 + 5 * 4 + 1  # no collisions at all


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
