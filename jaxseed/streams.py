"""The five named key streams, and how every random draw is derived from them.

This module is the only place in jaxseed that turns an integer into a key.

Keys use an explicit generator, ``threefry2x32`` (``GENERATOR``), whatever
``jax_default_prng_impl`` the environment sets. A stream's root key is a pure
function of its seed and a fixed stream id:

    root[name] = fold_in(key(seed[name]), STREAM_IDS[name])

so two streams given the same seed still differ, and changing one stream's seed
changes no other stream. Every draw is then derived from a root *by position*,
with ``fold_in`` only (never a chain of ``split``s), so any draw can be
recomputed alone — the basis of exact resume, sharding and ablation:

    stream    draw                       position
    init      initial parameters         none: the root itself
    shuffle   each epoch's order         (epoch)                  permutation(fold_in(root, epoch), n)
    dropout   an example's dropout mask  (epoch, example index)   fold_in(fold_in(root, epoch), index)
    augment   an example's augmentation  (epoch, example index)   likewise
    latent    an example's VAE noise     (epoch, example index)   likewise

The example index is the example's place in its split, so a per-example draw
does not depend on the batch it lands in, the batch size, the order (``shuffle``)
or how a batch is split over devices; ``example_keys`` derives them for a batch.

``split`` is never used on these keys: with JAX's partitionable threefry,
``split(k, n)[i] == fold_in(k, i)``, so mixing the two would alias draws.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple

import jax

from jaxseed.errors import UserError

GENERATOR = "threefry2x32"
THREEFRY_PARTITIONABLE = True  # the mode every draw is defined in (pinned_generator)
STREAMS = ("init", "shuffle", "dropout", "augment", "latent")
# Fixed forever: renumbering a stream would change every result ever recorded.
STREAM_IDS = {name: index for index, name in enumerate(STREAMS)}
# Keys that belong to no run's seeds take ids from 2**31 up; stream ids stay below,
# so no present or future stream's root can equal one of them at any seed.
_RESERVED_BASE = 2**31
EVALUATION_ID, SYNTHETIC_DATA_ID = _RESERVED_BASE, _RESERVED_BASE + 1
assert max(STREAM_IDS.values()) < _RESERVED_BASE
# Seeds are 32-bit: jax.random.key takes no wider seed without x64.
MAX_SEED = 2**32 - 1


class StreamKeys(NamedTuple):
    """Root key of each stream (a pytree, passed into jitted functions)."""

    init: jax.Array
    shuffle: jax.Array
    dropout: jax.Array
    augment: jax.Array
    latent: jax.Array


class ExampleKeys(NamedTuple):
    """One key per example of a batch for each per-example stream, each key[B]."""

    dropout: jax.Array
    augment: jax.Array
    latent: jax.Array


# Streams drawn per example from (epoch, example index).
PER_EXAMPLE = ExampleKeys._fields


def check_seed(value: int | str, what: str = "seed") -> int:
    """Return ``value`` as an int in [0, MAX_SEED] or raise UserError."""
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be an integer in [0, {MAX_SEED}], got {value!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be an integer in [0, {MAX_SEED}], got {seed}")
    return seed


def resolve_seeds(
    seed: int, overrides: Mapping[str, int] | None = None, used: tuple[str, ...] = STREAMS
) -> dict[str, int]:
    """Seed of every stream: ``seed`` for all, then ``overrides`` by name.

    Args:
      seed: the run's base seed.
      overrides: stream name -> seed, for the streams to vary.
      used: the streams the chosen model draws from; overriding another is an error.
    """
    seeds = {name: check_seed(seed) for name in STREAMS}
    for name, value in (overrides or {}).items():
        if name not in STREAM_IDS:
            raise UserError(f"unknown stream {name!r}; valid streams: {', '.join(STREAMS)}")
        if name not in used:
            raise UserError(f"this model does not use the {name!r} stream; it uses: {', '.join(used)}")
        seeds[name] = check_seed(value, f"seed of stream {name!r}")
    return seeds


def pinned_generator(function: Callable) -> Callable:
    """Run ``function`` with JAX's partitionable threefry, the mode every draw here is defined in
    (default since JAX 0.5; an environment may turn it off, which would change every draw)."""

    @functools.wraps(function)
    def pinned(*args, **kwargs):
        with jax.threefry_partitionable(THREEFRY_PARTITIONABLE):
            return function(*args, **kwargs)

    return pinned


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl=GENERATOR)


def root_keys(seeds: Mapping[str, int]) -> StreamKeys:
    """root[name] = fold_in(key(seed[name]), STREAM_IDS[name]) for every stream."""
    return StreamKeys(**{name: jax.random.fold_in(_key(seeds[name]), STREAM_IDS[name]) for name in STREAMS})


def evaluation_key() -> jax.Array:
    """A fixed key for evaluation draws, shared by every run whatever its seeds."""
    return jax.random.fold_in(_key(0), EVALUATION_ID)


def synthetic_data_key() -> jax.Array:
    """A fixed key for generating the synthetic data set (the data, not the run)."""
    return jax.random.fold_in(_key(0), SYNTHETIC_DATA_ID)


def epoch_permutation(shuffle_root: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """Order of the training examples in ``epoch``: int32[num_examples]."""
    return jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), num_examples)


def per_example_keys(root: jax.Array, position: int | jax.Array, example_index: jax.Array) -> jax.Array:
    """keys[b] = fold_in(fold_in(root, position), example_index[b]), key[B]."""
    at_position = jax.random.fold_in(root, position)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(at_position, example_index)


def example_keys(roots: StreamKeys, epoch: int | jax.Array, example_index: jax.Array) -> ExampleKeys:
    """Everything a training step draws, besides the epoch's permutation.

    For each per-example stream s and each example b of the batch:
        keys.s[b] = fold_in(fold_in(root[s], epoch), example_index[b])
    Used by the training step, the vmapped replicas and the fingerprints alike.
    """
    return ExampleKeys(**{name: per_example_keys(getattr(roots, name), epoch, example_index) for name in PER_EXAMPLE})
