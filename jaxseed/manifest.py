"""Provenance of a run: hashes of what it computed and drew, and where it ran."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any, Iterable

import jax
import numpy as np

from jaxseed import machine, streams
from jaxseed.config import Config

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")


def tree_hash(tree: Any) -> str:
    """sha256 over a pytree's leaves in canonical order (sorted by path).

    Each leaf contributes its path, dtype, shape and raw bytes, so the hash
    changes with any bit of any parameter and with nothing else.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    digest = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def arrays_hash(arrays: Iterable[Any]) -> str:
    """sha256 over a sequence of arrays, in order (e.g. one per epoch)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Versions, backend and compiler settings that can change a result."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "devices": [str(device) for device in jax.devices()],
        "device_kinds": sorted({device.device_kind for device in jax.devices()}),
        "cpu": machine.cpu(),
        "xla_flags": machine.xla_flags(),
        # Whether compiled programs came from (or went to) JAX's persistent cache: same bits either way.
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        # What every draw is made with, pinned whatever the environment's jax defaults are.
        "generator": {"impl": streams.GENERATOR, "threefry_partitionable": streams.THREEFRY_PARTITIONABLE},
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "platform": platform.platform(),
        # orig_argv keeps "-m jaxseed.train" where argv[0] would be this machine's path of the module.
        "command": [os.path.basename(sys.orig_argv[0]), *sys.orig_argv[1:]],
        "git_commit": _git_commit(),
    }


def config_record(config: Config, workdir: str) -> dict:
    """The config as the manifest stores it: ``data_dir`` relative to the workdir,
    so a run folder holds no path of the machine it ran on and can be moved with its data."""
    record = config.to_dict()
    if config.data_dir:
        record["data_dir"] = os.path.relpath(config.data_dir, os.path.abspath(workdir))
    return record


def config_from_record(record: dict, workdir: str) -> Config:
    """Inverse of ``config_record``: the Config of a run recorded in ``workdir``."""
    config = Config(**record)
    if config.data_dir:
        config = config.replace(data_dir=os.path.normpath(os.path.join(os.path.abspath(workdir), config.data_dir)))
    return config


def write_json(path: str, data: dict) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
