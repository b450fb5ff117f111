"""What a run writes besides its checkpoints: metrics lines, trace lines, and
fingerprints of what each stream drew."""

from __future__ import annotations

import functools
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxseed import manifest, streams
from jaxseed.config import Config
from jaxseed.objectives import OBJECTIVES


@functools.partial(jax.jit, static_argnums=2)
def permutation(shuffle_root, epoch, num_examples):
    return streams.epoch_permutation(shuffle_root, epoch, num_examples)


@functools.partial(jax.jit, static_argnums=2)
def _example_key_data(keys: streams.StreamKeys, epoch, num_examples):
    """Words of every training example's key of each per-example stream in ``epoch``."""
    return jax.tree.map(jax.random.key_data, streams.example_keys(keys, epoch, jnp.arange(num_examples)))


class Fingerprints:
    """Hashes of what each stream of one run drew, epoch by epoch.

    shuffle: each epoch's permutation. dropout, augment, latent: the key of every
    training example in every epoch (each example's mask, rotation and shift,
    binarisation or noise is a function of its key alone), hashed for the streams
    the config really draws from. None depends on the order, the batch size or the
    devices, so varying ``shuffle``, ``--batch-size`` or ``--devices`` leaves the
    others' hashes alone. Computed on the host's default device from the seeds:
    the recomputation is the check.
    """

    def __init__(self, config: Config, seeds: dict[str, int], num_train: int):
        self.keys = streams.root_keys(seeds)
        self.num_train = num_train
        self.draws = {name: [] for name in OBJECTIVES[config.model].drawn(config) if name != "init"}

    def add_epoch(self, epoch: int) -> None:
        example_keys = _example_key_data(self.keys, epoch, self.num_train)
        for name in self.draws:
            draws = permutation(self.keys.shuffle, epoch, self.num_train) if name == "shuffle" else \
                getattr(example_keys, name)
            self.draws[name].append(np.asarray(draws))

    def summary(self, init_param_hash: str) -> dict:
        return {"init": init_param_hash, **{name: manifest.arrays_hash(arrays) for name, arrays in self.draws.items()}}


def train_means(sums: dict) -> dict:
    """{train_<metric>: sum / count} from a training epoch's metric sums (scalars or per replica)."""
    return {f"train_{name}": value / sums["count"] for name, value in sums.items() if name != "count"}


def kept_lines(path: str, keep: Callable[[dict], bool]) -> list[dict]:
    """The JSON lines of ``path`` that ``keep`` accepts (a resumed run redoes the others).

    A last line cut short by a kill is dropped with the rest that is redone.
    """
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return [row for row in rows if keep(row)]


def write_lines(path: str, rows: list[dict]) -> None:
    """Replace ``path`` with these JSON lines, atomically."""
    with open(f"{path}.tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(f"{path}.tmp", path)


def append_lines(path: str, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
