"""The one training loop: replicas x epochs x jitted calls, with evaluation,
checkpoints, resume, signals and the non-finite check.

A single run is one replica (R = 1); ``jaxseed.ablate --strategy vmap`` trains a
group's runs as R replicas of one program. Each replica writes its own run
folder — metrics.jsonl, trace.jsonl, manifest.json, curves.png — the same files
whichever way it was trained; the replicas share one checkpoint.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxseed import checkpoint, data, machine, manifest, mesh, outputs, plots, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.objectives import OBJECTIVES, Batch
from jaxseed.step import execution_plan, init_state, make_optimizer, make_run_steps, over_replicas, steps_per_epoch


class Interrupted(Exception):
    """Training stopped on request after a checkpoint; ``args[0]`` is the global step."""


def load_data(config: Config) -> data.Dataset:
    """The config's data set, on the host."""
    return data.load(config.data, config.data_dir, config.train_limit)


@functools.lru_cache(maxsize=16)  # runs of one shape compile once
def _evaluation_chunk(config: Config, graphdef: nnx.GraphDef, num: int, batch_size: int, num_replicas: int,
                      layout: mesh.Layout) -> Callable:
    """(params [R, ...], images, labels, start) -> (metric sums over the chunk's real examples,
    class probabilities or None), each with the replica axis."""
    objective = OBJECTIVES[config.model]

    def chunk(params, images, labels, start):
        index = start + jnp.arange(batch_size)
        batch = Batch(jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                      jax.lax.dynamic_slice_in_dim(labels, start, batch_size), index)
        metrics, probabilities = objective.eval_metrics(nnx.merge(graphdef, params), batch, config)
        return {name: jnp.sum(jnp.where(index < num, value, 0.0)) for name, value in metrics.items()}, probabilities

    return jax.jit(over_replicas(chunk, num_replicas, in_axes=(0, None, None, None), layout=layout),
                   out_shardings=layout.replicated)


@functools.lru_cache(maxsize=16)
def _initial_states(config: Config, tx: optax.GradientTransformation, num_replicas: int) -> Callable:
    """(stream keys [R]) -> each replica's TrainState [R], built from its init stream in one
    jitted program: building the model op by op ran ~50 small programs, each looked up in
    the compilation cache on its own (a second of start-up)."""
    return jax.jit(over_replicas(lambda keys: init_state(config, keys, tx)[1], num_replicas, (0,)))


@functools.lru_cache(maxsize=16)
def _permutations(num_replicas: int, replicas: jax.sharding.NamedSharding) -> Callable:
    """(shuffle roots key[R], epoch, num_examples) -> each replica's permutation int32[R, N]."""
    return jax.jit(over_replicas(streams.epoch_permutation, num_replicas, (0, None, None)), static_argnums=2,
                   out_shardings=replicas)


def forget_compiled() -> None:
    """Drop every compiled program held in memory, so the next run compiles its own (the
    ablation's determinism control compares separate compilations, not only separate
    executions; jaxseed.ablate therefore uses no persistent compilation cache)."""
    for cached in (make_run_steps, _evaluation_chunk, _initial_states, _permutations):
        cached.cache_clear()
    jax.clear_caches()


def make_evaluate(config: Config, graphdef: nnx.GraphDef, dataset: data.Dataset, num_replicas: int,
                  layout: mesh.Layout) -> Callable:
    """params [R, ...] -> ({test_<metric>: float64[R], mean over the test set},
    class probabilities float32[R, N, C] or None). Runs in fixed-size chunks."""
    num = int(dataset.test_images.shape[0])
    batch_size = min(config.eval_batch_size, num)
    padded = -(-num // batch_size) * batch_size
    images = mesh.place(np.pad(dataset.test_images, ((0, padded - num), (0, 0), (0, 0), (0, 0))), layout.replicated)
    labels = mesh.place(np.pad(dataset.test_labels, (0, padded - num)), layout.replicated)
    chunk = _evaluation_chunk(config, graphdef, num, batch_size, num_replicas, layout)

    def evaluate(params):
        outputs = mesh.fetch([chunk(params, images, labels, start) for start in range(0, padded, batch_size)])
        metrics = {f"test_{name}": np.sum([sums[name] for sums, _ in outputs], axis=0, dtype=np.float64) / num
                   for name in outputs[0][0]}
        if outputs[0][1] is None:
            return metrics, None
        return metrics, np.concatenate([p for _, p in outputs], axis=-2)[..., :num, :]

    return evaluate


def _first_non_finite(step_losses: np.ndarray) -> tuple[int, int] | None:
    """(step in the call, replica) of the first non-finite loss in float[n, R], or None."""
    bad = np.argwhere(~np.isfinite(step_losses))
    return tuple(int(i) for i in bad[0]) if bad.size else None


@streams.pinned_generator
def train(config: Config, seeds: list[dict[str, int]], workdirs: list[str], checkpoint_dir: str | None = None,
          progress: bool = True, resume: bool = False, should_stop: Callable[[], bool] = lambda: False,
          dataset: data.Dataset | None = None) -> list[dict]:
    """Train one run per entry of ``seeds`` together, replica r writing into ``workdirs[r]``.

    Each replica draws exactly what it would alone: its state, stream keys and
    permutations sit on a leading replica axis, which the step is mapped over
    (``step.over_replicas``) and the mesh splits over its ``seed`` devices.
    Evaluates after each epoch. With ``resume``, continues from the newest
    readable checkpoint in ``checkpoint_dir`` (default: ``<workdirs[0]>/checkpoints``);
    the result is bitwise the uninterrupted run's. ``should_stop`` is polled after
    each jitted call: when true, a checkpoint is saved and Interrupted raised.
    ``dataset`` (host arrays) replaces the config's data (experiments that alter it).
    Returns each replica's manifest.
    """
    machine.require_flags(config)
    objective = OBJECTIVES[config.model]
    num_replicas = len(seeds)
    host_data = load_data(config) if dataset is None else dataset
    num_train = host_data.num_train
    if not 0 < config.batch_size <= num_train:
        raise UserError(f"--batch-size must be in [1, {num_train}] (the training set size), got {config.batch_size}")
    layout = mesh.plan(num_replicas, config.batch_size, config.devices, config.mesh)
    backend, writer = jax.default_backend(), mesh.is_writer()
    if config.deterministic and backend != "gpu" and writer:
        print(f"jaxseed: --deterministic has no effect on {backend} (it selects GPU kernels)", file=sys.stderr)

    # ---- state: built on the host from each replica's init stream, then placed on the mesh
    keys = jax.tree.map(lambda *k: jnp.stack(k), *map(streams.root_keys, seeds))
    tx = make_optimizer(config, num_train)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build(config, keys.init[0])))
    initial = _initial_states(config, tx, num_replicas)(keys)
    init_param_hashes = [manifest.tree_hash(jax.tree.map(lambda leaf: leaf[r], initial.params))
                         for r in range(num_replicas)]
    state = jax.tree.map(lambda leaf: mesh.place(leaf, layout.replicas), initial)
    placed_keys = mesh.place_keys(keys, layout.replicas)
    images, labels = (mesh.place(array, layout.replicated) for array in (host_data.train_images,
                                                                          host_data.train_labels))

    num_steps = steps_per_epoch(config, num_train)
    loop_form, per_call = execution_plan(config, backend, num_steps)
    permute = _permutations(num_replicas, layout.replicas)
    evaluate = make_evaluate(config, graphdef, host_data, num_replicas, layout)

    # ---- checkpoints and the files a resumed run keeps
    checkpoint_dir = checkpoint_dir or os.path.join(workdirs[0], "checkpoints")
    if not resume and writer:  # a fresh start: checkpoints of an earlier run here would collide with ours
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    mesh.wait_for_all("checkpoints cleared")
    checkpointer = checkpoint.Checkpointer(checkpoint_dir, config.keep_checkpoints)
    epoch, first, sums, probabilities, evaluated = 0, 0, {}, None, False
    restored = checkpointer.restore_latest(state) if resume else None
    if restored:
        state, position = restored
        epoch, first = position["epoch"], position["first"]
        sums = {name: np.asarray(value, np.float64) for name, value in position["sums"].items()}
        if progress and writer:
            print(f"resuming at epoch {epoch + 1}, step {position['global_step']}", file=sys.stderr)
    metrics_paths = [os.path.join(workdir, "metrics.jsonl") for workdir in workdirs]
    trace_paths = [os.path.join(workdir, "trace.jsonl") for workdir in workdirs]
    histories = [outputs.kept_lines(path, lambda row: row["epoch"] <= epoch) for path in metrics_paths]
    if writer:
        for workdir, path, history in zip(workdirs, metrics_paths, histories):
            os.makedirs(workdir, exist_ok=True)
            outputs.write_lines(path, history)
        if config.trace:
            for path in trace_paths:
                outputs.write_lines(path, outputs.kept_lines(path, lambda row: row["step"] < epoch * num_steps + first))

    common = {"streams_used": list(objective.streams), "data_hash": manifest.arrays_hash(host_data),
              "execution": {"loop": loop_form, "steps_per_call": per_call, "replicas": num_replicas,
                            **layout.describe()},
              **manifest.environment(), "status": "running"}
    infos = [{**common, "streams": replica_seeds, "config": manifest.config_record(config, workdir),
              "init_param_hash": init_hash}
             for replica_seeds, workdir, init_hash in zip(seeds, workdirs, init_param_hashes)]
    if writer:
        for info, workdir in zip(infos, workdirs):
            manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    fingerprints = [outputs.Fingerprints(config, replica_seeds, num_train) for replica_seeds in seeds]
    for done in range(epoch):  # draws are pure functions of position: recompute, don't store
        for replica in fingerprints:
            replica.add_epoch(done)

    def save(epoch, first, sums):
        checkpointer.save(state, {"epoch": epoch, "first": first, "global_step": epoch * num_steps + first,
                                  "sums": {name: value.tolist() for name, value in sums.items()}})

    # ---- the loop
    try:
        while epoch < config.epochs:
            start = time.perf_counter()
            permutation = permute(placed_keys.shuffle, epoch, num_train)
            bar = tqdm(total=num_steps, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not (progress and writer), dynamic_ncols=True)
            while first < num_steps:
                # Calls start at multiples of per_call, so a resumed run replays the same programs.
                n = min(per_call - first % per_call, num_steps - first)
                run_steps = make_run_steps(config, graphdef, tx, num_replicas, n, loop_form, layout)
                state, metrics, steps = run_steps(state, images, labels, permutation, placed_keys, epoch, first)
                metrics, steps = mesh.fetch((metrics, steps))
                global_step = epoch * num_steps + first
                if config.trace and writer:
                    for r, path in enumerate(trace_paths):
                        outputs.append_lines(path, [
                            {"step": global_step + j, "epoch": epoch + 1, "loss": float(steps["loss"][j, r]),
                             "param_checksum": int(steps["param_checksum"][j, r])} for j in range(n)])
                failed = _first_non_finite(steps["loss"])
                if failed:
                    j, r = failed
                    raise FloatingPointError(
                        f"non-finite loss at step {global_step + j} (epoch {epoch + 1}); these stream seeds "
                        f"reproduce it: {seeds[r]}; checkpoints saved before it are kept")
                sums = {name: sums.get(name, 0.0) + np.asarray(value, np.float64) for name, value in metrics.items()}
                first += n
                bar.update(n)
                bar.set_postfix({k: f"{v[0] / sums['count'][0]:.4f}" for k, v in sums.items() if k != "count"})
                every = config.checkpoint_every
                passed_multiple = every and (global_step + n) // every > global_step // every
                stop = mesh.any_process(should_stop())
                if first < num_steps and (passed_multiple or stop):
                    save(epoch, first, sums)
                    if stop:
                        raise Interrupted(global_step + n)
            bar.close()
            training_seconds = time.perf_counter() - start
            test_metrics, probabilities = evaluate(state.params)
            evaluated = True
            step_counts = mesh.fetch(state.step)
            for r, history in enumerate(histories):
                history.append({"epoch": epoch + 1, "step": int(step_counts[r]),
                                **{name: float(value[r]) for name, value in outputs.train_means(sums).items()},
                                **{name: float(value[r]) for name, value in test_metrics.items()},
                                "training_seconds": training_seconds,
                                "evaluation_seconds": time.perf_counter() - start - training_seconds})
            if writer:
                for path, history in zip(metrics_paths, histories):
                    outputs.write_lines(path, history)
                if progress:
                    row = histories[0][-1]
                    scores = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("test_"))
                    print(f"epoch {row['epoch']}: {scores} (training {row['training_seconds']:.1f}s, "
                          f"evaluation {row['evaluation_seconds']:.1f}s)", file=sys.stderr)
            for replica in fingerprints:  # after the epoch's steps: bookkeeping, not on the way to the first step
                replica.add_epoch(epoch)
            epoch, first, sums = epoch + 1, 0, {}
            save(epoch, first, sums)
            if mesh.any_process(should_stop()) and epoch < config.epochs:
                raise Interrupted(epoch * num_steps)
    finally:
        checkpointer.close()

    # ---- after training: each replica's outputs
    if not evaluated and histories[0]:  # resumed after the last epoch
        probabilities = evaluate(state.params)[1]
    final_params = mesh.fetch(state.params)
    for r, (info, workdir, history) in enumerate(zip(infos, workdirs, histories)):
        params = jax.tree.map(lambda leaf: leaf[r], final_params)
        info.update(status="finished", param_hash=manifest.tree_hash(params),
                    fingerprints=fingerprints[r].summary(info["init_param_hash"]),
                    final=history[-1] if history else None)
        if not writer:
            continue
        plots.plot_curves(history, os.path.join(workdir, "curves.png"), objective.panels)
        if probabilities is not None:  # for comparing runs' predictions (ablate's disagreement, ensembles)
            np.save(os.path.join(workdir, "test_probabilities.npy"), probabilities[r])
        info.update(objective.final_evaluation(config, graphdef, params, host_data, workdir))
        manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    return infos


def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, **options) -> dict:
    """One run (one replica) into ``workdir``; options as ``train``. Returns its manifest."""
    return train(config, [seeds], [workdir], **options)[0]
