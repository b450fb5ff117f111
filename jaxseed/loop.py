"""The one training loop: set up → restore → one epoch at a time → finish.

A single run is one replica (R = 1); ``jaxseed.ablate --strategy vmap`` trains a
group's runs as R replicas of one program. Each replica writes its own run
folder (``rundir.RunFolder``, claimed for the loop's lifetime) — the same files
whichever way it was trained; the replicas share one checkpoint.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxseed import checkpoint, data, machine, manifest, mesh, outputs, plots, rundir, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed import objective as objectives
from jaxseed.objective import Batch, DataSpec, Objective
from jaxseed.step import (TrainState, execution_plan, init_state, make_optimizer, make_run_steps, over_replicas,
                          steps_per_epoch)


class Interrupted(Exception):
    """Training stopped on request after a checkpoint; ``args[0]`` is the global step."""


def load_data(config: Config) -> data.Dataset:
    """The config's data set, on the host."""
    return data.load(config.data, config.data_dir, config.train_limit)


@functools.lru_cache(maxsize=16)  # runs of one shape compile once
def _evaluation_chunk(objective: Objective, config: Config, graphdef: nnx.GraphDef, num: int, batch_size: int,
                      num_replicas: int, layout: mesh.Layout) -> Callable:
    """(params [R, ...], images, labels, start) -> (metric sums over the chunk's real examples,
    per-example outputs: {"losses": float[B], and a classifier's "probabilities": float[B, C]}),
    each with the replica axis."""

    def chunk(params, images, labels, start):
        index = start + jnp.arange(batch_size)
        batch = Batch(jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                      jax.lax.dynamic_slice_in_dim(labels, start, batch_size), index)
        metrics, probabilities = objective.eval_metrics(nnx.merge(graphdef, params), batch, config)
        examples = {"losses": metrics["loss"], **({} if probabilities is None else {"probabilities": probabilities})}
        return {name: jnp.sum(jnp.where(index < num, value, 0.0)) for name, value in metrics.items()}, examples

    return jax.jit(over_replicas(chunk, num_replicas, in_axes=(0, None, None, None), layout=layout),
                   out_shardings=layout.replicated)


@functools.lru_cache(maxsize=16)
def _initial_states(objective: Objective, config: Config, spec: DataSpec, tx: optax.GradientTransformation,
                    num_replicas: int) -> Callable:
    """(stream keys [R]) -> each replica's TrainState [R], built from its init stream in one
    jitted program: building the model op by op ran ~50 small programs, each looked up in
    the compilation cache on its own (a second of start-up)."""
    return jax.jit(over_replicas(lambda keys: init_state(objective, config, spec, keys, tx)[1], num_replicas, (0,)))


@functools.lru_cache(maxsize=16)
def _permutations(num_replicas: int, replicas: jax.sharding.NamedSharding) -> Callable:
    """(stream roots key[R], epoch, num_examples, num_kept) -> each replica's training order:
    the original indices int32[R, num_kept or num_examples] (``streams.epoch_order``)."""
    return jax.jit(over_replicas(streams.epoch_order, num_replicas, (0, None, None, None)), static_argnums=(2, 3),
                   out_shardings=replicas)


def forget_compiled() -> None:
    """Drop every compiled program held in memory, so the next run compiles its own (the
    ablation's determinism control compares separate compilations, not only separate
    executions; jaxseed.ablate therefore uses no persistent compilation cache)."""
    for cached in (make_run_steps, _evaluation_chunk, _initial_states, _permutations):
        cached.cache_clear()
    jax.clear_caches()


def make_evaluate(objective: Objective, config: Config, graphdef: nnx.GraphDef, dataset: data.Dataset,
                  num_replicas: int, layout: mesh.Layout) -> Callable:
    """params [R, ...] -> ({test_<metric>: float64[R], mean over the test set}, per test example
    {"losses": float32[R, N], and a classifier's "probabilities": float32[R, N, C]}). Runs in
    fixed-size chunks; the last is padded, and only real examples count."""
    num = int(dataset.test_images.shape[0])
    batch_size = min(config.eval_batch_size, num)
    padded = -(-num // batch_size) * batch_size
    images = mesh.place(np.pad(dataset.test_images, ((0, padded - num), (0, 0), (0, 0), (0, 0))), layout.replicated)
    labels = mesh.place(np.pad(dataset.test_labels, (0, padded - num)), layout.replicated)
    chunk = _evaluation_chunk(objective, config, graphdef, num, batch_size, num_replicas, layout)

    def evaluate(params):
        outputs = mesh.fetch([chunk(params, images, labels, start) for start in range(0, padded, batch_size)])
        metrics = {f"test_{name}": np.sum([sums[name] for sums, _ in outputs], axis=0, dtype=np.float64) / num
                   for name in outputs[0][0]}
        return metrics, {name: np.concatenate([examples[name] for _, examples in outputs], axis=1)[:, :num]
                         for name in outputs[0][1]}

    return evaluate


class Position(NamedTuple):
    """Where training stands: the epoch, the next step in it, and the epoch's running metric sums."""

    epoch: int
    first: int
    sums: dict


class Run(NamedTuple):
    """Everything one loop over R replicas holds fixed while it trains."""

    config: Config
    objective: Objective
    seeds: list[dict[str, int]]
    folders: list[rundir.RunFolder]
    data: data.Dataset  # on the host
    layout: mesh.Layout
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    keys: streams.Keys  # placed, key[R] per stream
    images: jax.Array  # the training set, on the devices
    labels: jax.Array
    num_steps: int  # per epoch
    loop_form: str
    per_call: int
    evaluate: Callable
    checkpointer: checkpoint.Checkpointer
    progress: bool

    @property
    def writer(self) -> bool:
        return self.folders[0].writes


def _claim(workdirs: list[str], resume: bool, overwrite: bool) -> list[rundir.RunFolder]:
    """Claim every replica's folder on the writing process; a refusal stops every process."""
    folders, refused = [], None
    try:
        for workdir in workdirs:
            folders.append(rundir.RunFolder.claim(workdir, resume=resume, overwrite=overwrite,
                                                  writer=mesh.is_writer()))
    except UserError as error:
        refused = error
    if mesh.any_process(refused is not None):
        for folder in folders:
            folder.release()
        raise refused or UserError(f"process 0 could not start the run in {workdirs[0]}")
    return folders


def setup(objective: Objective, config: Config, seeds: list[dict[str, int]], folders: list[rundir.RunFolder],
          checkpoint_dir: str | None, dataset: data.Dataset | None,
          progress: bool) -> tuple[Run, TrainState, list[str]]:
    """(the run, its initial state [R] on the mesh, each replica's initial parameter hash)."""
    machine.require_flags(config)
    host_data = load_data(config) if dataset is None else dataset
    num_train = host_data.num_train
    kept = config.num_kept(num_train) or num_train
    if not 0 < config.batch_size <= kept:
        raise UserError(f"--batch-size must be in [1, {kept}] (the training examples "
                        f"{'kept' if config.subsample else 'in the set'}), got {config.batch_size}")
    spec = objectives.data_spec(host_data, config.data)
    objectives.check_shapes(objective, config, spec, config.batch_size)
    layout = mesh.plan(len(seeds), config.batch_size, config.devices, config.mesh)
    backend = jax.default_backend()
    if backend == "cpu" and folders[0].writes:
        machine.check_thread_pool(config.cpu_threads)
    if config.deterministic and backend != "gpu" and folders[0].writes:
        print(f"jaxseed: --deterministic has no effect on {backend} (it selects GPU kernels)", file=sys.stderr)
    keys = jax.tree.map(lambda *k: jnp.stack(k), *map(streams.root_keys, seeds))
    tx = make_optimizer(config, num_train)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build(config, spec, keys.init[0])))
    initial = _initial_states(objective, config, spec, tx, len(seeds))(keys)
    init_hashes = [manifest.tree_hash(jax.tree.map(lambda leaf: leaf[r], initial.params)) for r in range(len(seeds))]
    state = jax.tree.map(lambda leaf: mesh.place(leaf, layout.replicas), initial)
    num_steps = steps_per_epoch(config, num_train)
    loop_form, per_call = execution_plan(config, backend, num_steps)
    checkpoints = checkpoint.Checkpointer(checkpoint_dir or folders[0].folder("checkpoints"), config.keep_checkpoints)
    run = Run(config, objective, seeds, folders, host_data, layout, graphdef, tx,
              mesh.place_keys(keys, layout.replicas),
              *(mesh.place(array, layout.replicated) for array in (host_data.train_images, host_data.train_labels)),
              num_steps, loop_form, per_call, make_evaluate(objective, config, graphdef, host_data, len(seeds), layout),
              checkpoints, progress)
    return run, state, init_hashes


def restore(run: Run, state: TrainState, data_hash: str) -> tuple[TrainState, Position]:
    """The newest readable checkpoint's state and position, checked against this run; else the start."""
    for folder in run.folders:
        try:
            recorded = rundir.read_manifest(folder.path)
        except FileNotFoundError:
            continue
        if recorded.get("data_hash") not in (None, data_hash):
            raise UserError(f"the data differs from the data {folder.path} was trained on (data_hash "
                            f"{str(recorded['data_hash'])[:16]}…, here {data_hash[:16]}…); "
                            "pass the same --data-dir")
        source = objectives.recorded_source(recorded)  # a user's file; built-ins change with jaxseed's versions
        if run.objective.name not in objectives.built_in() and source not in (
                None, objectives.source_hash(run.objective)):
            raise UserError(f"the objective {run.objective.name} is not the code {folder.path} was trained with "
                            f"(its source's sha256 differs: {source[:12]}… recorded); restore that file, or start "
                            "afresh with --overwrite")
    restored = run.checkpointer.restore_latest(state)
    if not restored:
        return state, Position(0, 0, {})
    state, progress = restored
    position = _checked_position(run, progress)
    if run.progress and run.writer:
        print(f"resuming at epoch {position.epoch + 1}, step {progress['global_step']}", file=sys.stderr)
    return state, position


def _checked_position(run: Run, progress: dict) -> Position:
    """A checkpoint's position, refused unless it is one this run can be at (a checkpoint is input)."""
    try:
        epoch, first, step = int(progress["epoch"]), int(progress["first"]), int(progress["global_step"])
        sums = {str(name): np.asarray(value, np.float64) for name, value in dict(progress["sums"]).items()}
        valid = (0 <= epoch <= run.config.epochs and 0 <= first < run.num_steps
                 and step == epoch * run.num_steps + first
                 and (epoch < run.config.epochs or first == 0) and (first > 0) == bool(sums)
                 and all(value.shape == (len(run.seeds),) for value in sums.values()))
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise UserError(f"the checkpoint in {run.checkpointer.directory} holds a position that is not one of this "
                        f"run ({str(progress)[:120]}); start afresh with --overwrite")
    return Position(epoch, first, sums)


def _first_non_finite(step_losses: np.ndarray) -> tuple[int, int] | None:
    """(step in the call, replica) of the first non-finite loss in float[n, R], or None."""
    bad = np.argwhere(~np.isfinite(step_losses))
    return tuple(int(i) for i in bad[0]) if bad.size else None


def _save(run: Run, state: TrainState, at: Position) -> None:
    run.checkpointer.save(state, {"epoch": at.epoch, "first": at.first,
                                  "global_step": at.epoch * run.num_steps + at.first,
                                  "sums": {name: value.tolist() for name, value in at.sums.items()}})


def train_epoch(run: Run, state: TrainState, at: Position,
                should_stop: Callable[[], bool]) -> tuple[TrainState, list[dict], np.ndarray | None]:
    """Train epoch ``at.epoch`` from step ``at.first`` to its end, then evaluate.

    Returns (state, each replica's metrics row, the per-test-example outputs of
    ``make_evaluate``). Raises Interrupted when ``should_stop`` (polled after each call, agreed
    by every process) asks, after a checkpoint; FloatingPointError on a non-finite loss.
    """
    config, epoch, first, sums = run.config, at.epoch, at.first, at.sums
    start = time.perf_counter()
    permutation = _permutations(len(run.seeds), run.layout.replicas)(run.keys, epoch, run.data.num_train,
                                                                      config.num_kept(run.data.num_train))
    bar = tqdm(total=run.num_steps, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               disable=not (run.progress and run.writer), dynamic_ncols=True)
    while first < run.num_steps:
        # Calls start at multiples of per_call, so a resumed run replays the same programs.
        n = min(run.per_call - first % run.per_call, run.num_steps - first)
        run_steps = make_run_steps(run.objective, config, run.graphdef, run.tx, len(run.seeds), n, run.loop_form,
                                   run.layout)
        state, metrics, steps = run_steps(state, run.images, run.labels, permutation, run.keys, epoch, first)
        metrics, steps = mesh.fetch((metrics, steps))
        global_step = epoch * run.num_steps + first
        if config.trace:
            for r, folder in enumerate(run.folders):
                folder.append_lines("trace.jsonl", [
                    {"step": global_step + j, "epoch": epoch + 1, "loss": float(steps["loss"][j, r]),
                     "param_checksum": int(steps["param_checksum"][j, r])} for j in range(n)])
        failed = _first_non_finite(steps["loss"])
        if failed:
            j, r = failed
            raise FloatingPointError(f"non-finite loss at step {global_step + j} (epoch {epoch + 1}); these stream "
                                     f"seeds reproduce it: {run.seeds[r]}; checkpoints saved before it are kept")
        sums = {name: sums.get(name, 0.0) + np.asarray(value, np.float64) for name, value in metrics.items()}
        first += n
        bar.update(n)
        bar.set_postfix({k: f"{v[0] / sums['count'][0]:.4f}" for k, v in sums.items() if k != "count"})
        every = config.checkpoint_every
        passed_multiple = every and (global_step + n) // every > global_step // every
        stop = mesh.any_process(should_stop())
        if first < run.num_steps and (passed_multiple or stop):
            _save(run, state, Position(epoch, first, sums))
            if stop:
                raise Interrupted(global_step + n)
    bar.close()
    training_seconds = time.perf_counter() - start
    test_metrics, examples = run.evaluate(state.params)
    step_counts = mesh.fetch(state.step)
    rows = [{"epoch": epoch + 1, "step": int(step_counts[r]),
             **{name: float(value[r]) for name, value in outputs.train_means(sums).items()},
             **{name: float(value[r]) for name, value in test_metrics.items()},
             "training_seconds": training_seconds,
             "evaluation_seconds": time.perf_counter() - start - training_seconds} for r in range(len(run.seeds))]
    return state, rows, examples


def finish(run: Run, state: TrainState, infos: list[dict], histories: list[list[dict]],
           fingerprints: list[outputs.Fingerprints], examples: dict) -> list[dict]:
    """Each replica's final files: curves, per-test-example losses (and probabilities), the
    objective's pictures, the finished manifest."""
    final_params = mesh.fetch(state.params)
    for r, (info, folder, history) in enumerate(zip(infos, run.folders, histories)):
        params = jax.tree.map(lambda leaf: leaf[r], final_params)
        info.update(status="finished", param_hash=manifest.tree_hash(params),
                    fingerprints=fingerprints[r].summary(info["init_param_hash"]),
                    final=history[-1] if history else None)
        if not folder.writes:
            continue
        folder.save_picture("curves.png", lambda f: plots.plot_curves(history, f, dict(run.objective.panels)))
        for name, values in examples.items():  # for comparing runs example by example (ablate's instability)
            folder.save_array(f"test_{name}.npy", values[r])
        added, pictures = run.objective.finish(run.config, run.graphdef, params, run.data)
        for name, (images, columns) in pictures.items():
            folder.save_picture(name, lambda f: plots.save_grid(images, f, columns))
        info.update(added)
        folder.write_json("manifest.json", info)
    return infos


@streams.pinned_generator
def train(config: Config, seeds: list[dict[str, int]], workdirs: list[str], checkpoint_dir: str | None = None,
          progress: bool = True, resume: bool = False, overwrite: bool = False,
          should_stop: Callable[[], bool] = lambda: False, dataset: data.Dataset | None = None,
          objective: Objective | None = None) -> list[dict]:
    """Train one run per entry of ``seeds`` together, replica r in the folder ``workdirs[r]``.

    Each replica draws exactly what it would alone: its state, stream keys and
    permutations sit on a leading replica axis, which the step is mapped over
    (``step.over_replicas``) and the mesh splits over its ``seed`` devices.
    Evaluates after each epoch. Each folder is claimed for the loop's lifetime
    (``rundir``; ``resume`` and ``overwrite`` as there). With ``resume``, continues
    from the newest readable checkpoint in ``checkpoint_dir`` (default:
    ``<workdirs[0]>/checkpoints``); the result is bitwise the uninterrupted run's.
    ``should_stop`` is polled after each jitted call: when true, a checkpoint is
    saved and Interrupted raised. ``dataset`` (host arrays) replaces the config's
    data (experiments that alter it). ``objective`` is what ``config.model`` names,
    resolved by the caller, or here when not given. Returns each replica's manifest.
    """
    objective = objective or objectives.resolve(config.model)
    folders = _claim(workdirs, resume, overwrite)
    try:
        run, state, init_hashes = setup(objective, config, seeds, folders, checkpoint_dir, dataset, progress)
        try:
            return _train(run, state, init_hashes, resume, should_stop)
        finally:
            run.checkpointer.close()
    finally:
        for folder in folders:
            folder.release()


def _train(run: Run, state: TrainState, init_hashes: list[str], resume: bool,
           should_stop: Callable[[], bool]) -> list[dict]:
    data_hash = manifest.arrays_hash(run.data)
    state, at = restore(run, state, data_hash) if resume else (state, Position(0, 0, {}))
    histories = [folder.kept_lines("metrics.jsonl", lambda row: row["epoch"] <= at.epoch, rundir.METRICS_FIELDS)
                 for folder in run.folders]
    for folder, history in zip(run.folders, histories):
        folder.write_lines("metrics.jsonl", history)
        if run.config.trace:
            done = at.epoch * run.num_steps + at.first
            folder.write_lines("trace.jsonl", folder.kept_lines("trace.jsonl", lambda row: row["step"] < done,
                                                                rundir.TRACE_FIELDS))
    common = {"streams_used": list(run.objective.drawn_streams(run.config)), "data_hash": data_hash,
              "objective": {"name": objectives.recorded_name(run.objective.name),
                            "source_sha256": objectives.source_hash(run.objective)},
              "execution": {"loop": run.loop_form, "steps_per_call": run.per_call, "replicas": len(run.seeds),
                            **run.layout.describe()},
              **manifest.environment(), "status": "running"}
    infos = [{**common, "streams": seeds, "config": manifest.config_record(run.config, folder.path),
              "init_param_hash": init_hash} for seeds, folder, init_hash in zip(run.seeds, run.folders, init_hashes)]
    for info, folder in zip(infos, run.folders):
        folder.write_json("manifest.json", info)
    fingerprints = [outputs.Fingerprints(run.objective, run.config, seeds, run.data.num_train) for seeds in run.seeds]
    for done in range(at.epoch):  # draws are pure functions of position: recompute, don't store
        for replica in fingerprints:
            replica.add_epoch(done)

    examples = None
    while at.epoch < run.config.epochs:
        state, rows, examples = train_epoch(run, state, at, should_stop)
        for folder, history, row in zip(run.folders, histories, rows):
            history.append(row)
            folder.write_lines("metrics.jsonl", history)
        if run.progress and run.writer:
            scores = " ".join(f"{k} {v:.4f}" for k, v in rows[0].items() if k.startswith("test_"))
            print(f"epoch {rows[0]['epoch']}: {scores} (training {rows[0]['training_seconds']:.1f}s, "
                  f"evaluation {rows[0]['evaluation_seconds']:.1f}s)", file=sys.stderr)
        for replica in fingerprints:  # after the epoch's steps: bookkeeping, not on the way to the first step
            replica.add_epoch(at.epoch)
        at = Position(at.epoch + 1, 0, {})
        _save(run, state, at)  # after the metrics: a resumed run redoes an epoch whose line may be missing
        if mesh.any_process(should_stop()) and at.epoch < run.config.epochs:
            raise Interrupted(at.epoch * run.num_steps)
    if examples is None:  # resumed after the last epoch
        examples = run.evaluate(state.params)[1]
    return finish(run, state, infos, histories, fingerprints, examples)


def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, **options) -> dict:
    """One run (one replica) into ``workdir``; options as ``train``. Returns its manifest."""
    return train(config, [seeds], [workdir], **options)[0]
