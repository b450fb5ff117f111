"""Provenance of a run: hashes of what it computed and drew, and where it ran."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any, Iterable

import jax
import numpy as np

from jaxseed import machine, objective, streams, userimport
from jaxseed.config import NPZ, Config, npz_path
from jaxseed.errors import UserError

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


def command(argv: list[str]) -> list[str]:
    """The command line without this machine's paths: an absolute path (also after ``npz:``, or as
    the file of ``path.py:NAME``) becomes relative to the working folder when inside it, else
    only its last part ("<...>/name").

    ``sys.orig_argv`` keeps "-m jaxseed.train" where argv[0] would be the module's path.
    """
    def local(text: str) -> str:
        flag, equals, value = text.partition("=") if text.startswith("--") else ("", "", text)
        prefix = NPZ if npz_path(value) else ""
        path, name = userimport.split_name(value.removeprefix(prefix))
        path, suffix = (path, f":{name}") if path.endswith(".py") else (value.removeprefix(prefix), "")
        if not os.path.isabs(path):
            return text
        relative = os.path.relpath(path)
        path = relative if not relative.startswith("..") else f"<...>/{os.path.basename(path.rstrip('/'))}"
        return f"{flag}{equals}{prefix}{path}{suffix}"

    return [os.path.basename(argv[0]), *map(local, argv[1:])]


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
        # The threads of XLA CPU's pool in force (config.cpu_threads asks; None: not seen).
        "thread_pool": machine.thread_pool(),
        # Whether compiled programs came from (or went to) JAX's persistent cache: same bits either way.
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        # What every draw is made with, pinned whatever the environment's jax defaults are.
        "generator": {"impl": streams.GENERATOR, "threefry_partitionable": streams.THREEFRY_PARTITIONABLE},
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "platform": platform.platform(),
        "command": command(sys.orig_argv),
        "git_commit": _git_commit(),
    }


def config_record(config: Config, workdir: str) -> dict:
    """The config as the manifest stores it: ``data_dir`` and an npz file relative to the workdir,
    so a run folder holds no path of the machine it ran on and can be moved with its data; a
    user's objective file by its name alone (``userimport.recorded_name``)."""
    record = config.to_dict()
    if config.data_dir:
        record["data_dir"] = os.path.relpath(config.data_dir, os.path.abspath(workdir))
    if npz_path(config.data):
        record["data"] = NPZ + os.path.relpath(os.path.abspath(npz_path(config.data)), os.path.abspath(workdir))
    record["model"] = userimport.recorded_name(config.model)
    return record


# The settings of jaxseed's built-in models, which every config recorded before they moved into the models held.
BUILT_IN_SETTINGS = ("dropout_rate", "latents", "binarize", "importance_samples")


def config_from_record(record: Any, workdir: str, data_dir: str | None = None, data: str | None = None,
                       model: str | None = None) -> Config:
    """Inverse of ``config_record``: the Config of a run recorded in ``workdir``, checked
    like the CLI's flags (a manifest is input: it may come from anyone).

    The recorded ``data_dir`` or npz file is followed only inside the run folder: data
    read from anywhere else is named by the user (``data_dir``, ``data``: --data-dir,
    --data), never by a manifest. Likewise a user's objective is imported only when the
    user names it (``model``: --objective), and it must be the one recorded.
    """
    if not isinstance(record, dict) or not isinstance(record.get("model", "cnn"), str):
        raise UserError(f"the manifest in {workdir} holds no config jaxseed can read")
    recorded_model = record.get("model", "cnn")
    built_in = recorded_model in objective.built_in()
    if not built_in:
        if not model:
            raise UserError(f"the run in {workdir} was trained with the objective {recorded_model!r}; jaxseed imports "
                            "no code a run folder names: pass --objective with where that objective is")
        if userimport.recorded_name(model) != recorded_model:
            raise UserError(f"the run in {workdir} was trained with the objective {recorded_model!r}, "
                            f"not {userimport.recorded_name(model)!r}")
    config = Config(model=recorded_model if built_in else model)
    own = set(config.to_dict())
    # Before objectives owned their settings, every config held the built-in models' all: those of
    # another model never changed a run.
    settings = {name: value for name, value in record.items()
                if name != "model" and (name in own or name not in BUILT_IN_SETTINGS)}
    if not set(settings) <= own:
        raise UserError(f"the manifest in {workdir} holds a config with fields jaxseed does not know")
    config = config.replace(**settings)
    if data:
        config = config.replace(data=data)
    elif npz_path(config.data):
        config = config.replace(data=NPZ + _inside(workdir, npz_path(config.data), "--data npz:FILE"))
    if data_dir:
        return config.replace(data_dir=os.path.abspath(data_dir))
    if config.data_dir:
        config = config.replace(data_dir=_inside(workdir, config.data_dir, "--data-dir DIR"))
    return config


def _inside(workdir: str, recorded: str, flag: str) -> str:
    """The absolute path of a path recorded relative to ``workdir``; UserError unless it is inside."""
    root = os.path.abspath(workdir)
    resolved = os.path.normpath(os.path.join(root, recorded))
    if os.path.isabs(recorded) or os.path.commonpath([root, resolved]) != root:
        raise UserError(f"the run in {workdir} read its data from {recorded!r}, outside its folder; "
                        f"pass {flag} to name the data yourself")
    return resolved


def seeds_from_record(record: Any, workdir: str, names: tuple[str, ...] = streams.STREAMS) -> dict[str, int]:
    """The seed of every stream recorded in a manifest, checked like ``--seed`` and ``--stream``;
    ``names``: every stream of the run (``streams.resolve_seeds``'s keys)."""
    if isinstance(record, dict) and "sample" not in record:  # recorded before the stream existed: it drew nothing
        record = {**record, "sample": 0}
    if not isinstance(record, dict) or set(record) != set(names):
        raise UserError(f"the manifest in {workdir} must give the seed of each stream: {', '.join(names)}")
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in record.values()):
        raise UserError(f"the manifest in {workdir} holds a seed that is not an integer")
    return {name: streams.check_seed(seed, f"seed of stream {name!r}") for name, seed in record.items()}
