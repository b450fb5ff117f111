"""What a run computes about itself besides its checkpoints: fingerprints of what each
stream drew, and the training metrics' means (``rundir`` writes them)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseed import manifest, streams
from jaxseed.config import Config
from jaxseed.objective import Objective


@functools.partial(jax.jit, static_argnums=2)
def permutation(shuffle_root, epoch, num_examples):
    return streams.epoch_order(shuffle_root, epoch, num_examples)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _example_key_data(keys: streams.Keys, names: tuple[str, ...], epoch, num_examples):
    """Words of every training example's key of each per-example stream ``names`` in ``epoch``."""
    return jax.tree.map(jax.random.key_data, streams.batch_keys(keys, names, epoch, jnp.arange(num_examples)))


class Fingerprints:
    """Hashes of what each stream of one run drew, epoch by epoch.

    sample (with ``--subsample``): the training examples kept. shuffle: each
    epoch's permutation. Each per-example stream (dropout, augment, latent, an
    objective's own): the key of every training example in every epoch (each
    example's mask, rotation and shift, binarisation or noise is a function of its
    key alone), hashed for the streams the config really draws from. None depends
    on the order, the batch size or the devices, so varying ``shuffle``,
    ``--batch-size`` or ``--devices`` leaves the others' hashes alone. Computed on
    the host's default device from the seeds: the recomputation is the check.
    """

    def __init__(self, objective: Objective, config: Config, seeds: dict[str, int], num_train: int):
        self.keys = streams.root_keys(seeds)
        self.num_train, self.num_kept = num_train, config.num_kept(num_train)
        self.draws = {name: [] for name in objective.drawn_streams(config) if name != "init"}
        if "sample" in self.draws:  # drawn once per run
            self.draws["sample"].append(np.asarray(streams.training_subset(self.keys.sample, num_train, self.num_kept)))
        self.per_example = tuple(name for name in self.draws if name not in streams.EVERY_RUN)

    def add_epoch(self, epoch: int) -> None:
        batch_keys = _example_key_data(self.keys, self.per_example, epoch, self.num_train)
        self.draws["shuffle"].append(np.asarray(permutation(self.keys.shuffle, epoch, self.num_kept or self.num_train)))
        for name in self.per_example:
            self.draws[name].append(np.asarray(batch_keys[name]))

    def summary(self, init_param_hash: str) -> dict:
        return {"init": init_param_hash, **{name: manifest.arrays_hash(arrays) for name, arrays in self.draws.items()}}


def train_means(sums: dict) -> dict:
    """{train_<metric>: sum / count} from a training epoch's metric sums (scalars or per replica)."""
    return {f"train_{name}": value / sums["count"] for name, value in sums.items() if name != "count"}
