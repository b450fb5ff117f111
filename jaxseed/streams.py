"""The five named key streams, and how every random draw is derived from them.

This module is the only place in jaxseed that turns an integer into a key.

A stream's root key is a pure function of its seed and a fixed stream id:

    root[name] = fold_in(key(seed[name]), STREAM_IDS[name])

so two streams given the same seed still differ, and changing one stream's seed
changes no other stream. Every draw is then derived from a root *by position*,
with ``fold_in`` only (never a chain of ``split``s), so any draw can be
recomputed alone — the basis of exact resume, sharding and ablation:

    init params          model init from root[init]
    epoch permutation    permutation(fold_in(root[shuffle], epoch), n)
    dropout mask, step   fold_in(root[dropout], global_step)
    augmentation, ex.    fold_in(fold_in(root[augment], epoch), example_index)
    latent noise, ex.    fold_in(fold_in(root[latent], global_step), example_index)

``split`` is never used on these keys: with JAX's partitionable threefry,
``split(k, n)[i] == fold_in(k, i)``, so mixing the two would alias draws.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax

from jaxseed.errors import UserError

STREAMS = ("init", "shuffle", "dropout", "augment", "latent")
# Fixed forever: renumbering a stream would change every result ever recorded.
STREAM_IDS = {name: index for index, name in enumerate(STREAMS)}
# jax.random.key takes 32-bit seeds without x64; a wider seed would be truncated.
MAX_SEED = 2**32 - 1


class StreamKeys(NamedTuple):
    """Root key of each stream (a pytree, passed into jitted functions)."""

    init: jax.Array
    shuffle: jax.Array
    dropout: jax.Array
    augment: jax.Array
    latent: jax.Array


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


def root_keys(seeds: Mapping[str, int]) -> StreamKeys:
    """root[name] = fold_in(key(seed[name]), STREAM_IDS[name]) for every stream."""
    return StreamKeys(
        **{name: jax.random.fold_in(jax.random.key(seeds[name]), STREAM_IDS[name]) for name in STREAMS}
    )


def evaluation_key() -> jax.Array:
    """A fixed key for evaluation draws, shared by every run whatever its seeds.

    Its seed is outside the streams' id range, so no training stream can reach it.
    """
    return jax.random.fold_in(jax.random.key(0), len(STREAMS))


def synthetic_data_key() -> jax.Array:
    """A fixed key for generating the synthetic data set (the data, not the run)."""
    return jax.random.fold_in(jax.random.key(0), len(STREAMS) + 1)


def bootstrap_key() -> jax.Array:
    """A fixed key for the resampling of reports (analysis, not training)."""
    return jax.random.fold_in(jax.random.key(0), len(STREAMS) + 2)


def epoch_permutation(shuffle_root: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """Order of the training examples in ``epoch``: int32[num_examples]."""
    return jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), num_examples)


def dropout_key(dropout_root: jax.Array, global_step: jax.Array) -> jax.Array:
    """Key of the dropout masks of one training step."""
    return jax.random.fold_in(dropout_root, global_step)


def per_example_keys(root: jax.Array, position: jax.Array, example_index: jax.Array) -> jax.Array:
    """keys[b] = fold_in(fold_in(root, position), example_index[b]).

    Used for augmentation (position = epoch) and latent noise (position = global
    step): an example's draw depends on its index in the data set, not on its
    place in the batch, the batch size or the device count.
    """
    at_position = jax.random.fold_in(root, position)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(at_position, example_index)
