"""Streams: roots depend only on (seed, id); draws are by position and distinct."""

import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseed
from jaxseed import streams
from jaxseed.errors import UserError


def key_words(key):
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_roots_differ_across_streams_with_one_seed():
    roots = streams.root_keys({name: 7 for name in streams.STREAMS})
    assert len({key_words(k) for k in roots.values()}) == len(streams.STREAMS)


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
    assert [key_words(k) for k in a.values()] == [key_words(k) for k in b.values()]


def test_derived_keys_distinct_across_streams_and_positions():
    roots = streams.root_keys({name: 0 for name in streams.STREAMS})
    seen = set()
    for epoch in range(4):
        for keys in streams.batch_keys(roots, streams.PER_EXAMPLE, epoch, jnp.arange(16)).values():
            seen.update(tuple(row) for row in np.asarray(jax.random.key_data(keys)).tolist())
    seen.update(key_words(k) for k in (streams.evaluation_key(), streams.synthetic_data_key(), *roots.values()))
    assert len(seen) == 3 * 4 * 16 + 2 + len(streams.STREAMS)  # no collisions at all


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
    keys = streams.batch_keys(roots, streams.PER_EXAMPLE, 2, index)
    for name in streams.PER_EXAMPLE:
        expected = streams.example_keys(getattr(roots, name), 2, index)
        assert [key_words(k) for k in getattr(keys, name)] == [key_words(k) for k in expected]


def test_generator_is_pinned_whatever_the_default():
    """jax_default_prng_impl=rbg (common in TPU code) must not change any draw."""
    threefry = [key_words(k) for k in streams.root_keys({name: 42 for name in streams.STREAMS}).values()]
    with jax.default_prng_impl("rbg"):
        assert str(jax.random.key_impl(jax.random.key(42))) != streams.GENERATOR  # the default did change
        assert [key_words(k) for k in streams.root_keys({name: 42 for name in streams.STREAMS}).values()] == threefry


def test_per_example_key_ignores_batch_layout():
    root = streams.root_keys({name: 5 for name in streams.STREAMS}).augment
    whole = np.asarray(jax.random.key_data(streams.example_keys(root, 3, jnp.arange(10))))
    part = np.asarray(jax.random.key_data(streams.example_keys(root, 3, jnp.array([7, 2]))))
    np.testing.assert_array_equal(part, whole[[7, 2]])


def test_permutation_is_a_permutation_and_changes_by_epoch():
    root = streams.root_keys({name: 0 for name in streams.STREAMS}).shuffle
    p0, p1 = (np.asarray(streams.epoch_order(root, e, 100)) for e in (0, 1))
    assert sorted(p0.tolist()) == list(range(100))
    assert not np.array_equal(p0, p1)


def test_resolve_seeds_overrides_one_stream():
    seeds = streams.resolve_seeds(42, {"dropout": "7"})
    assert seeds == {"init": 42, "shuffle": 42, "dropout": 7, "augment": 42, "latent": 42, "sample": 42}


@pytest.mark.parametrize("overrides, message", [
    ({"dropuot": 1}, "unknown stream .dropuot.; this objective.s streams: init, shuffle, dropout, augment"),
    ({"latent": 1}, "it uses: init, shuffle, dropout, augment"),
    ({"dropout": "x"}, f"[0, {streams.MAX_SEED}]"),
    ({"dropout": -1}, f"[0, {streams.MAX_SEED}]"),
    ({"dropout": 2**32}, f"[0, {streams.MAX_SEED}]"),
])
def test_resolve_seeds_rejects_bad_input(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        streams.resolve_seeds(0, overrides, used=("init", "shuffle", "dropout", "augment"))


def test_an_objectives_own_stream_has_a_stable_id_apart_from_every_other():
    """Its id comes from its name by sha256 (not Python's salted hash): the same in every process,
    at or above 2**16 (jaxseed's own streams' ids are below) and below the reserved keys' 2**31."""
    assert streams.stream_id("depth") == 65536 + int.from_bytes(
        hashlib.sha256(b"jaxseed stream depth").digest()[:4], "big") % (2**31 - 2**16)
    script = "from jaxseed import streams; print(streams.stream_id('depth'))"
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                   env={**os.environ, "PYTHONHASHSEED": "7"})
    assert int(other_process.stdout) == streams.stream_id("depth")
    ids = [streams.stream_id(name) for name in ("depth", "noise", "sampler", "a", "z9")]
    assert len(set(ids)) == len(ids) and all(2**16 <= i < streams.EVALUATION_ID for i in ids)
    seeds = streams.resolve_seeds(3, {"depth": 4}, ("init", "shuffle", "dropout", "depth"))
    assert seeds == {**{name: 3 for name in streams.STREAMS}, "depth": 4}
    roots = streams.root_keys(seeds)
    assert key_words(roots.depth) == key_words(jax.random.fold_in(jax.random.key(4, impl=streams.GENERATOR), ids[0]))
    assert key_words(roots.init) == key_words(streams.root_keys({**seeds, "depth": 5}).init)


@pytest.mark.parametrize("name", ["init", "dropout", "sample", "evaluation", "default", "Depth", "1x", "", "a" * 33, 7])
def test_a_stream_name_that_is_taken_or_malformed_is_refused(name):
    with pytest.raises(UserError):
        streams.check_stream_name(name)


def test_keys_name_the_declared_streams_when_one_is_missing():
    """Unlike nnx.Rngs, which falls back to its default stream, asking for an undeclared stream fails."""
    keys = streams.root_keys({"init": 0, "shuffle": 0})
    with pytest.raises(AttributeError, match="declared are: init, shuffle"):
        keys.dropout
    with pytest.raises(KeyError, match="no keys of stream 'depth'"):
        keys["depth"]
    mapped = jax.tree.map(lambda key: key, keys)  # a pytree: passes through jax transformations
    assert list(mapped) == ["init", "shuffle"]


def test_keys_flatten_by_name_whatever_the_order_they_came_in():
    """A jitted function sees the same pytree structure (and leaf order) for the same streams given
    in any order: sorted by name."""
    roots = streams.root_keys({name: 9 for name in streams.STREAMS})
    forward = streams.Keys({name: roots[name] for name in streams.STREAMS})
    backward = streams.Keys({name: roots[name] for name in reversed(streams.STREAMS)})
    leaves, structure = jax.tree_util.tree_flatten(backward)
    assert [key_words(leaf) for leaf in leaves] == [key_words(roots[name]) for name in sorted(streams.STREAMS)]
    assert structure == jax.tree_util.tree_structure(forward)
    assert list(jax.tree_util.tree_unflatten(structure, leaves)) == sorted(streams.STREAMS)


# The derivation, written with jax.random's primitives alone: golden values (test_golden.py) are
# regenerated after a JAX upgrade, so they cannot be what pins which key feeds which draw.
def threefry(seed):
    return jax.random.key(seed, impl="threefry2x32")


def test_every_draw_is_derived_as_the_module_documents():
    seeds = {"init": 1, "shuffle": 2, "dropout": 3, "augment": 4, "latent": 5, "sample": 6}
    roots = streams.root_keys(seeds)
    for stream_id, name in enumerate(("init", "shuffle", "dropout", "augment", "latent", "sample")):
        assert key_words(roots[name]) == key_words(jax.random.fold_in(threefry(seeds[name]), stream_id)), name
    epoch, index = 3, jnp.array([0, 7, 2])
    keys = streams.batch_keys(roots, streams.PER_EXAMPLE, epoch, index)
    for name in streams.PER_EXAMPLE:  # the epoch folded in first, then the example's index
        expected = [jax.random.fold_in(jax.random.fold_in(roots[name], epoch), int(i)) for i in index]
        assert [key_words(k) for k in keys[name]] == [key_words(k) for k in expected], name
    order = jax.random.permutation(jax.random.fold_in(roots.shuffle, epoch), 50)
    np.testing.assert_array_equal(streams.epoch_order(roots.shuffle, epoch, 50), order)
    kept = np.sort(np.asarray(jax.random.permutation(roots.sample, 50))[:20])
    np.testing.assert_array_equal(streams.training_subset(roots.sample, 50, 20), kept)
    subset_order = jax.random.permutation(jax.random.fold_in(roots.shuffle, epoch), 20)
    np.testing.assert_array_equal(streams.training_order(roots, epoch, 50, 20), kept[np.asarray(subset_order)])
    np.testing.assert_array_equal(streams.training_order(roots, epoch, 50, None), order)
    assert key_words(streams.evaluation_key()) == key_words(jax.random.fold_in(threefry(0), 2**31))
    assert key_words(streams.synthetic_data_key()) == key_words(jax.random.fold_in(threefry(0), 2**31 + 1))


def test_the_public_functions_are_derived_as_documented():
    """jaxseed.Seeds, step_key and named_key by jax.random alone; epoch_order and example_keys are the
    functions checked above."""
    seeds = jaxseed.Seeds(5, dropout=7, depth=9)
    assert (seeds["init"], seeds["dropout"], seeds["depth"], seeds["noise"]) == (5, 7, 9, 5)
    assert seeds.as_dict() == {**{name: 5 for name in streams.STREAMS}, "dropout": 7, "depth": 9}
    assert key_words(seeds.key("dropout")) == key_words(jax.random.fold_in(threefry(7), 2))
    assert key_words(seeds.key("depth")) == key_words(jax.random.fold_in(threefry(9), streams.stream_id("depth")))
    root = seeds.key("init")
    assert key_words(jaxseed.step_key(root, 11)) == key_words(jax.random.fold_in(root, 11))
    digest = hashlib.sha256(b"jaxseed name encoder/conv1").digest()
    assert key_words(jaxseed.named_key(root, "encoder/conv1")) == key_words(
        jax.random.fold_in(root, int.from_bytes(digest[:4], "big")))
    assert key_words(jaxseed.named_key(root, "encoder/conv2")) != key_words(jaxseed.named_key(root, "encoder/conv1"))


@pytest.mark.parametrize("make, message", [
    (lambda: jaxseed.Seeds(-1), "seed must be an integer in"),
    (lambda: jaxseed.Seeds(1, dropout=2**32), "seed of stream 'dropout' must be an integer in"),
    (lambda: jaxseed.Seeds(1, evaluation=3), "the stream name 'evaluation' is taken by jaxseed; reserved: augment, "
     "default, dropout, evaluation, init, latent, params, sample, shuffle, synthetic_data$"),
    (lambda: jaxseed.Seeds(1)["Bad name"], "a stream name is 1-32 lower-case letters"),
])
def test_seeds_refuse_what_a_run_refuses(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_layers_keyed_by_name_start_alike_in_two_architectures():
    """Model B is model A with one layer inserted. With one nnx.Rngs shared by every layer (or Linen's
    automatic names) the layers after it start from other weights; keyed by name (jaxseed.layer_rngs, or
    Linen's explicit names) the layers both models have start bit for bit alike."""
    import flax.linen as linen
    from flax import nnx

    root = jaxseed.Seeds(0).key("init")

    class Nnx(nnx.Module):
        def __init__(self, extra: bool, by_name: bool):
            shared = nnx.Rngs(params=root)
            rngs = (lambda name: jaxseed.layer_rngs(root, name)) if by_name else (lambda name: shared)
            self.extra = nnx.Linear(8, 8, rngs=rngs("extra")) if extra else None
            self.hidden = nnx.Linear(8, 8, rngs=rngs("hidden"))
            self.out = nnx.Linear(8, 2, rngs=rngs("out"))

    alone = nnx.Linear(8, 8, rngs=nnx.Rngs(params=jaxseed.named_key(root, "hidden")))
    assert (Nnx(False, True).hidden.kernel[...] == alone.kernel[...]).all()  # the layer's key is its name's
    for by_name in (True, False):
        a, b = Nnx(False, by_name), Nnx(True, by_name)
        same = [(a.hidden.kernel[...] == b.hidden.kernel[...]).all(), (a.out.kernel[...] == b.out.kernel[...]).all()]
        assert all(same) if by_name else not any(same)

    class Linen(linen.Module):
        extra: bool
        named: bool

        @linen.compact
        def __call__(self, x):
            name = (lambda n: n) if self.named else (lambda n: None)
            if self.extra:
                x = linen.Dense(8, name=name("extra"))(x)
            return linen.Dense(2, name=name("out"))(linen.Dense(8, name=name("hidden"))(x))

    x = jnp.ones((1, 8))
    a, b = (Linen(extra, True).init(root, x)["params"] for extra in (False, True))
    assert all((a[n]["kernel"] == b[n]["kernel"]).all() for n in ("hidden", "out"))
    a, b = (Linen(extra, False).init(root, x)["params"] for extra in (False, True))
    assert not (a["Dense_0"]["kernel"] == b["Dense_1"]["kernel"]).all()  # the same layer, renumbered: other weights


def test_keys_and_seeds_say_what_they_hold():
    assert repr(streams.Keys({"init": 0, "depth": 1})) == "Keys(init, depth)"
    assert repr(jaxseed.Seeds(42, dropout=7, depth=3)) == "Seeds(42, dropout=7, depth=3)"


def test_keys_and_seeds_refuse_in_words():
    with pytest.raises(KeyError, match="no keys of stream 'x' here; the streams declared are: none"):
        streams.Keys({})["x"]
    with pytest.raises(AttributeError, match="^_private$"):
        streams.Keys({"init": 0})._private
    assert streams.check_seed(streams.MAX_SEED) == 2**32 - 1
    with pytest.raises(UserError, match=r"^seed of stream 'dropout' must be an integer in \[0, 4294967295\], got -1$"):
        streams.resolve_seeds(0, {"dropout": -1})
