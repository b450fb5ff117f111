"""Devices, the (seed, data) mesh, processes, and where each array lives.

A run's arrays carry a leading replica axis R (R = 1 for one run). On a mesh of
S x D devices named ("seed", "data"):

    array                                   placement
    state, stream keys, permutation [R,..]  split over "seed" on R, the same on every "data" device
    the data set                            the same on every device (MNIST is 55 MB of uint8)
    a step's batch [R, B, ...]              gathered on the devices, R over "seed", B over "data"
    metrics, trace                          the same on every device, so every process can read them

Every draw is a function of (stream, epoch, example index), never of the device
that makes it, so the mesh changes no draw; only float sums (gradients, metrics)
may round differently when a batch is split over devices.

Several processes (hosts) run the same program on one global mesh: each places
only the shards of its own devices, every process computes the same host-side
values (draws are pure functions), and only process 0 writes files.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseed import streams
from jaxseed.errors import UserError, one_line

SEED, DATA = "seed", "data"


class Layout(NamedTuple):
    """The mesh a run uses and the shardings of its arrays."""

    mesh: jax.sharding.Mesh
    replicated: NamedSharding  # data set, metrics
    replicas: NamedSharding  # anything with a leading replica axis
    batch: NamedSharding  # example indices of a step [R, B]

    @property
    def shape(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    def describe(self) -> dict:
        """What the manifest records of where the run ran."""
        return {"mesh": self.shape, "devices": len(self.mesh.devices.flat), "process_count": jax.process_count()}


def parse_split(text: str) -> tuple[int, int]:
    """"seed=S,data=D" -> (S, D); UserError if it is not that."""
    sizes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in (SEED, DATA) or name in sizes or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--mesh must be seed=S,data=D with positive integers S and D, got {text!r}")
        sizes[name] = int(value)
    if len(sizes) != 2:
        raise UserError(f"--mesh must name both axes, seed=S,data=D; got {text!r}")
    return sizes[SEED], sizes[DATA]


def plan(num_replicas: int, batch_size: int, devices: int = 0, split: str | None = None) -> Layout:
    """The (seed, data) mesh for ``num_replicas`` replicas of a run with this global batch size.

    Args:
      devices: how many devices to use; 0: all (of every process).
      split: "seed=S,data=D" with S * D devices; default: replicas first,
        S = gcd(R, devices), and the rest splits each batch.
    """
    available = jax.devices()
    count = devices or len(available)
    if count > len(available):
        raise UserError(f"--devices {count} asks for more devices than the {len(available)} "
                        f"{jax.default_backend()} devices here")
    if jax.process_count() > 1 and count != len(available):
        raise UserError(f"with several processes every device takes part: --devices must be {len(available)} or 0")
    if split:
        seed_size, data_size = parse_split(split)
        if seed_size * data_size != count:
            raise UserError(f"--mesh {split} has {seed_size * data_size} devices, but {count} are used "
                            f"(set --devices {seed_size * data_size})")
    else:
        seed_size = math.gcd(num_replicas, count)
        data_size = count // seed_size
    if num_replicas % seed_size:
        raise UserError(f"{num_replicas} replicas do not split over seed={seed_size} devices; "
                        "choose --mesh seed=S,data=D with S dividing the number of replicas")
    if batch_size % data_size:
        raise UserError(f"--batch-size {batch_size} does not split over data={data_size} devices; "
                        "choose a batch size divisible by it, or another --devices or --mesh")
    mesh = jax.make_mesh((seed_size, data_size), (SEED, DATA), devices=available[:count],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    return Layout(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P(SEED)), NamedSharding(mesh, P(SEED, DATA)))


def place(array: Any, sharding: NamedSharding) -> jax.Array:
    """A host value every process holds in full, as a global array: each process
    puts only the shards of its own devices."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@functools.lru_cache(maxsize=16)
def _wrap_keys(sharding: NamedSharding):
    return jax.jit(lambda words: jax.random.wrap_key_data(words, impl=streams.GENERATOR), out_shardings=sharding)


def place_keys(keys: streams.Keys, sharding: NamedSharding) -> streams.Keys:
    """Typed keys key[R] of every stream, placed like ``place`` (by their words)."""
    return jax.tree.map(lambda key: _wrap_keys(sharding)(place(jax.random.key_data(key), sharding)), keys)


def fetch(tree: Any) -> Any:
    """Host copies (numpy) of global arrays, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def is_writer() -> bool:
    """Whether this process writes the run's files (one process does)."""
    return jax.process_index() == 0


def wait_for_all(name: str) -> None:
    """Every process reaches this point before any goes on (e.g. after process 0 cleared a folder)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process: decisions every process must take together
    (stop and save, as a signal may reach only one of them)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def start_processes(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process run: explicit flags, or (none given) JAX's auto-detection
    on a Cloud TPU pod or under Slurm. A single process does nothing.

    Must run before anything starts JAX's backends.
    """
    given = [coordinator_address, num_processes, process_id]
    if any(value is not None for value in given) and None in given:
        raise UserError("--coordinator-address, --num-processes and --process-id go together")
    # CPU devices of several processes talk over gloo (TCP); GPUs and TPUs use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
        tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
        if slurm or tpu_pod:
            jax.distributed.initialize()
        return
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except Exception as error:  # any failure to reach the coordinator: one line, not a traceback
        raise UserError(f"cannot join the run at {coordinator_address}: {one_line(error)}") from None
    print(f"jaxseed: process {process_id} of {num_processes}, {jax.local_device_count()} local devices",
          file=sys.stderr)
