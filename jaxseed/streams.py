"""The named key streams, and how every random draw is derived from them.

This module is the only place in jaxseed that turns an integer into a key.

Keys use an explicit generator, ``threefry2x32`` (``GENERATOR``), whatever
``jax_default_prng_impl`` the environment sets. A stream's root key is a pure
function of its seed and a fixed stream id:

    root[name] = fold_in(key(seed[name]), stream_id(name))

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
    sample    the training examples kept none: the root itself        sort(permutation(root, n)[:m])
              (--subsample m/n)
    <own>     what an objective draws    (epoch, example index)   likewise, for a stream it declares

The six built-in ids are fixed; a stream an objective declares itself (stochastic
depth, noise injection) has an id derived from its name, apart from theirs.

The example index is the example's place in its split, so a per-example draw
does not depend on the batch it lands in, the batch size, the order (``shuffle``)
or how a batch is split over devices; ``batch_keys`` derives them for a batch.

``split`` is never used on these keys: with JAX's partitionable threefry,
``split(k, n)[i] == fold_in(k, i)``, so mixing the two would alias draws.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxseed.errors import UserError

GENERATOR = "threefry2x32"
THREEFRY_PARTITIONABLE = True  # the mode every draw is defined in (pinned_generator)
STREAMS = ("init", "shuffle", "dropout", "augment", "latent", "sample")
# Fixed forever: renumbering a stream would change every result ever recorded.
STREAM_IDS = {name: index for index, name in enumerate(STREAMS)}
# Ids below 2**16 belong to jaxseed's own streams, present and future; a stream an objective
# declares itself gets an id in [2**16, 2**31) from its name (``stream_id``). Keys that belong to no
# run's seeds take ids from 2**31 up, so no stream's root can equal one of them at any seed.
_USER_BASE, _RESERVED_BASE = 2**16, 2**31
EVALUATION_ID, SYNTHETIC_DATA_ID = _RESERVED_BASE, _RESERVED_BASE + 1
# Names an objective may not give its own streams: the built-in ones, the fixed keys', and
# nnx.Rngs' fallback names.
RESERVED_NAMES = frozenset({*STREAMS, "evaluation", "synthetic_data", "default", "params"})
# Streams of every run (``sample`` draws only with --subsample); the others are drawn per example,
# by an objective that declares them.
EVERY_RUN = ("init", "shuffle", "sample")
PER_EXAMPLE = ("dropout", "augment", "latent")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Seeds are 32-bit: jax.random.key takes no wider seed without x64.
MAX_SEED = 2**32 - 1


def stream_id(name: str) -> int:
    """The fixed id of stream ``name``: a built-in one's, or for an objective's own stream
    2**16 + (the first 4 bytes of sha256("jaxseed stream " + name)) mod (2**31 - 2**16):
    stable across processes and versions (Python's ``hash`` of a string is salted per process)."""
    if name in STREAM_IDS:
        return STREAM_IDS[name]
    check_stream_name(name)
    digest = hashlib.sha256(f"jaxseed stream {name}".encode()).digest()
    return _USER_BASE + int.from_bytes(digest[:4], "big") % (_RESERVED_BASE - _USER_BASE)


def check_stream_name(name: Any) -> str:
    """``name`` if an objective may declare it as a stream of its own, else UserError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"a stream name is 1-32 lower-case letters, digits or _, starting with a letter; "
                        f"got {name!r}")
    if name in RESERVED_NAMES:
        raise UserError(f"the stream name {name!r} is taken by jaxseed; reserved: {', '.join(sorted(RESERVED_NAMES))}")
    return name


@jax.tree_util.register_pytree_node_class
class Keys(Mapping):
    """Keys by stream name, read as ``keys.dropout`` or ``keys["depth"]``; a pytree, so it
    passes into jitted functions. Asking for a stream that is not there is an error naming
    those that are (``nnx.Rngs`` falls back to its ``default`` stream instead)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, Any]):
        object.__setattr__(self, "_keys", dict(keys))

    def __getitem__(self, name: str):
        try:
            return self._keys[name]
        except KeyError:
            raise KeyError(f"no keys of stream {name!r} here; the streams declared are: "
                           f"{', '.join(self._keys) or 'none'}") from None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(error.args[0]) from None

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keys({', '.join(self._keys)})"

    def tree_flatten(self):  # by name: the same structure whatever order the seeds came in
        names = tuple(sorted(self._keys))
        return tuple(self._keys[name] for name in names), names

    @classmethod
    def tree_unflatten(cls, names, keys):
        return cls(zip(names, keys))


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
      used: the streams the chosen objective draws from; overriding another is an error.
    Returns:
      the seed of each built-in stream, then of each stream of ``used`` that is the objective's own.
    """
    names = seed_names(used)
    seeds = {name: check_seed(seed) for name in names}
    for name, value in (overrides or {}).items():
        if name not in names:
            raise UserError(f"unknown stream {name!r}; this objective's streams: {', '.join(used)}")
        if name not in used:
            raise UserError(f"this model does not use the {name!r} stream; it uses: {', '.join(used)}")
        seeds[name] = check_seed(value, f"seed of stream {name!r}")
    return seeds


def seed_names(used: tuple[str, ...]) -> tuple[str, ...]:
    """The streams a run records a seed for: every built-in one, then those of ``used`` that are an objective's own."""
    return (*STREAMS, *(name for name in used if name not in STREAM_IDS))


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


def root_key(name: str, seed: int) -> jax.Array:
    """The root key of stream ``name`` at ``seed``: fold_in(key(seed, impl="threefry2x32"), stream_id(name))."""
    return jax.random.fold_in(_key(seed), stream_id(name))


def root_keys(seeds: Mapping[str, int]) -> Keys:
    """The root key of every stream of ``seeds`` (name -> seed), by name."""
    return Keys({name: root_key(name, seed) for name, seed in seeds.items()})


class Seeds:
    """One seed for every stream, overridden by name: ``Seeds(42, dropout=7)``.

    A name is a built-in stream's or one of your own (``[a-z][a-z0-9_]*``, not reserved).
    ``seeds[name]`` is that stream's seed, ``seeds.key(name)`` its root key (``root_key``),
    ``seeds.as_dict()`` what a run records: every built-in stream's seed and each override's.

        seeds = jaxseed.Seeds(42, dropout=7)
        order = jaxseed.epoch_order(seeds.key("shuffle"), epoch, n)
    """

    def __init__(self, seed: int, **overrides: int):
        self.seed = check_seed(seed)
        self.overrides = {_checked_name(name): check_seed(value, f"seed of stream {name!r}")
                          for name, value in overrides.items()}

    def __getitem__(self, name: str) -> int:
        return self.overrides.get(_checked_name(name), self.seed)

    def key(self, name: str) -> jax.Array:
        return root_key(name, self[name])

    def as_dict(self) -> dict[str, int]:
        return {**{name: self.seed for name in STREAMS}, **self.overrides}

    def __repr__(self) -> str:
        return f"Seeds({', '.join([str(self.seed), *(f'{k}={v}' for k, v in self.overrides.items())])})"


def _checked_name(name: str) -> str:
    return name if name in STREAM_IDS else check_stream_name(name)


def evaluation_key() -> jax.Array:
    """A fixed key for evaluation draws, shared by every run whatever its seeds."""
    return jax.random.fold_in(_key(0), EVALUATION_ID)


def synthetic_data_key() -> jax.Array:
    """A fixed key for generating the synthetic data set (the data, not the run)."""
    return jax.random.fold_in(_key(0), SYNTHETIC_DATA_ID)


def epoch_order(shuffle_root: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The order of the training examples in ``epoch``: int32[num_examples],
    permutation(fold_in(root, epoch), num_examples) (defined under JAX's partitionable
    threefry, the default since JAX 0.5; jaxseed's loop pins it)."""
    return jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), num_examples)


def training_subset(sample_root: jax.Array, num_examples: int, num_kept: int) -> jax.Array:
    """The training examples a run keeps (``--subsample``): the indices int32[num_kept], in
    increasing order, of the first ``num_kept`` of a permutation drawn from the root itself,
    so that keeping every example is exactly no subsampling."""
    return jnp.sort(jax.random.permutation(sample_root, num_examples)[:num_kept])


def training_order(roots: Keys, epoch: int | jax.Array, num_examples: int, num_kept: int | None) -> jax.Array:
    """The original indices of the examples of ``epoch`` in training order: a permutation
    (``shuffle``) of all of them, or with ``num_kept`` of the subset ``sample`` keeps."""
    if num_kept is None:
        return epoch_order(roots.shuffle, epoch, num_examples)
    return training_subset(roots.sample, num_examples, num_kept)[epoch_order(roots.shuffle, epoch, num_kept)]


def example_keys(root: jax.Array, position: int | jax.Array, example_index: jax.Array) -> jax.Array:
    """One key per example of a batch: keys[b] = fold_in(fold_in(root, position), example_index[b]), key[B].

    ``position`` is the epoch (jaxseed's evaluation passes its own positions), ``example_index``
    the examples' places in the training set. An example's key does not depend on the batch it
    lands in, the batch size, the order or how a batch is split over devices.
    """
    at_position = jax.random.fold_in(root, position)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(at_position, example_index)


def batch_keys(roots: Keys, names: tuple[str, ...], epoch: int | jax.Array, example_index: jax.Array) -> Keys:
    """Everything a training step draws from the per-example streams ``names``.

    For each such stream s and each example b of the batch:
        keys.s[b] = fold_in(fold_in(root[s], epoch), example_index[b])
    Used by the training step, the vmapped replicas and the fingerprints alike.
    """
    return Keys({name: example_keys(roots[name], epoch, example_index) for name in names})


def step_key(root: jax.Array, step: int | jax.Array) -> jax.Array:
    """One key per training step: fold_in(root, step), for code that hands a key per step to
    ``nnx.Rngs(dropout=...)`` or Linen's ``apply(..., rngs={"dropout": ...})``.

    The trade-off: what a per-step key draws for an example depends on the step the example
    lands in and its place in the batch, so it moves with the order and the batch size; a
    per-example key (``example_keys``) does not.
    """
    return jax.random.fold_in(root, step)


def named_key(root: jax.Array, name: str) -> jax.Array:
    """A key for ``name`` (a layer's path, e.g. "encoder/conv1"): fold_in(root, id), the id the
    first 4 bytes of sha256("jaxseed name " + name).

    Two models that share a layer by name and shape initialise it from the same key whatever
    other layers either has, where one generator consumed in order (PyTorch's, or ``nnx.Rngs``)
    shifts every layer built after an inserted one.
    """
    digest = hashlib.sha256(f"jaxseed name {name}".encode()).digest()
    return jax.random.fold_in(root, int.from_bytes(digest[:4], "big"))


def layer_rngs(root: jax.Array, name: str):
    """An ``nnx.Rngs`` of its own for the layer ``name``, from ``named_key(root, name)``:

        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=jaxseed.layer_rngs(key, "conv1"))

    One ``nnx.Rngs`` shared by every layer counts its draws, so an inserted layer moves the
    initial weights of every layer built after it; Linen folds each module's path into its
    keys, which is stable under explicit names but not under automatic ones (``Dense_0``,
    ``Dense_1``, ... renumber after an inserted layer).
    """
    from flax import nnx  # only where a model is built: the streams themselves need JAX alone

    return nnx.Rngs(params=named_key(root, name))
