"""The one training loop: set up → restore → per epoch: train, evaluate, log, save → finish.

A single run is one replica (R = 1); ``jaxseed.ablate --strategy vmap`` trains a
group's runs as R replicas of one program. Each replica writes its own run
folder (``writer.RunWriter`` writes them all) — the same files whichever way it
was trained; the replicas share one checkpoint.
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

from jaxseed import checkpoint, data, machine, manifest, mesh, outputs, rundir, streams, track, userimport
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed import objective as objectives
from jaxseed.objective import Batch, DataSpec, Objective
from jaxseed.writer import RunWriter
from jaxseed.step import (TrainState, execution_plan, init_state, make_optimizer, make_run_steps, over_replicas,
                          steps_per_epoch)


class StoppedAtStep(Exception):
    """Training stopped on request after a checkpoint; ``args[0]`` is the global step to resume at."""


def load_data(config: Config) -> data.Dataset:
    """The config's data set, on the host."""
    return data.load(config.data, config.data_dir, config.train_limit)


@functools.lru_cache(maxsize=16)  # runs of one shape compile once
def _evaluation_chunk(objective: Objective, config: Config, graphdef: nnx.GraphDef, num: int, batch_size: int,
                      num_replicas: int, layout: mesh.Layout) -> Callable:
    """(params [R, ...], test arrays {name: [N, ...]}, start) -> (metric sums over the chunk's real
    examples, per-example outputs: {"losses": float[B], and a classifier's "probabilities":
    float[B, C]}), each with the replica axis."""

    def chunk(params, arrays, start):
        index = start + jnp.arange(batch_size)
        batch = Batch({name: jax.lax.dynamic_slice_in_dim(array, start, batch_size) for name, array in arrays.items()},
                      index)
        metrics, probabilities = objective.eval_metrics(nnx.merge(graphdef, params), batch, config)
        examples = {"losses": metrics["loss"], **({} if probabilities is None else {"probabilities": probabilities})}
        return {name: jnp.sum(jnp.where(index < num, value, 0.0)) for name, value in metrics.items()}, examples

    return jax.jit(over_replicas(chunk, num_replicas, in_axes=(0, None, None), layout=layout),
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
    the original indices int32[R, num_kept or num_examples] (``streams.training_order``)."""
    return jax.jit(over_replicas(streams.training_order, num_replicas, (0, None, None, None)), static_argnums=(2, 3),
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
    num = dataset.num_test
    batch_size = min(config.eval_batch_size, num)
    padded = -(-num // batch_size) * batch_size
    arrays = {name: mesh.place(np.pad(array, [(0, padded - num)] + [(0, 0)] * (array.ndim - 1)), layout.replicated)
              for name, array in dataset.test.items()}
    chunk = _evaluation_chunk(objective, config, graphdef, num, batch_size, num_replicas, layout)

    def evaluate(params):
        chunks = mesh.fetch([chunk(params, arrays, start) for start in range(0, padded, batch_size)])
        metrics = {f"test_{name}": np.sum([sums[name] for sums, _ in chunks], axis=0, dtype=np.float64) / num
                   for name in chunks[0][0]}
        return metrics, {name: np.concatenate([examples[name] for _, examples in chunks], axis=1)[:, :num]
                         for name in chunks[0][1]}

    return evaluate


class Position(NamedTuple):
    """Where training stands: the epoch, the next step in it, and the epoch's running metric sums."""

    epoch: int
    first: int
    sums: dict


START = Position(0, 0, {})


class Program(NamedTuple):
    """What the compiled programs are built from: fixed while the loop runs."""

    config: Config
    objective: Objective
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    layout: mesh.Layout
    num_replicas: int
    num_steps: int  # per epoch
    loop_form: str
    per_call: int

    def run_steps(self, n: int) -> Callable:
        """The jitted call of ``n`` steps (``step.make_run_steps``)."""
        return make_run_steps(self.objective, self.config, self.graphdef, self.tx, self.num_replicas, n,
                              self.loop_form, self.layout)


class Run(NamedTuple):
    """What lives while the loop trains R replicas."""

    program: Program
    seeds: list[dict[str, int]]  # each replica's
    writer: RunWriter
    data: data.Dataset  # on the host
    keys: streams.Keys  # placed, key[R] per stream
    arrays: dict[str, jax.Array]  # the training set, on the devices
    evaluate: Callable
    checkpointer: checkpoint.Checkpointer
    progress: bool

    @property
    def config(self) -> Config:
        return self.program.config

    @property
    def talks(self) -> bool:
        """Whether this process shows progress."""
        return self.progress and self.writer.writes


def setup(objective: Objective, config: Config, seeds: list[dict[str, int]], writer: RunWriter,
          checkpoint_dir: str | None, dataset: data.Dataset | None,
          progress: bool) -> tuple[Run, TrainState, list[str]]:
    """(the run, its initial state [R] on the mesh, each replica's initial parameter hash)."""
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
    if backend == "cpu" and writer.writes:
        machine.check_thread_pool(config.cpu_threads)
    if config.deterministic and backend != "gpu" and writer.writes:
        print(f"jaxseed: --deterministic has no effect on {backend} (it selects GPU kernels)", file=sys.stderr)
    keys = jax.tree.map(lambda *k: jnp.stack(k), *map(streams.root_keys, seeds))
    tx = make_optimizer(config, num_train)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build(config, spec, keys.init[0])))
    initial = _initial_states(objective, config, spec, tx, len(seeds))(keys)
    init_hashes = [manifest.tree_hash(jax.tree.map(lambda leaf: leaf[r], initial.params)) for r in range(len(seeds))]
    state = jax.tree.map(lambda leaf: mesh.place(leaf, layout.replicas), initial)
    num_steps = steps_per_epoch(config, num_train)
    program = Program(config, objective, graphdef, tx, layout, len(seeds), num_steps,
                      *execution_plan(config, backend, num_steps))
    checkpoints = checkpoint.Checkpointer(checkpoint_dir or writer.folders[0].folder("checkpoints"),
                                          config.keep_checkpoints)
    run = Run(program, seeds, writer, host_data, mesh.place_keys(keys, layout.replicas),
              {name: mesh.place(array, layout.replicated) for name, array in host_data.train.items()},
              make_evaluate(objective, config, graphdef, host_data, len(seeds), layout), checkpoints, progress)
    return run, state, init_hashes


def restore(run: Run, state: TrainState, data_hash: str) -> tuple[TrainState, Position]:
    """The newest readable checkpoint's state and position, checked against this run; else the start."""
    objective = run.program.objective
    for path in run.writer.paths:
        try:
            recorded = rundir.read_manifest(path)
        except FileNotFoundError:
            continue
        if recorded.get("data_hash") not in (None, data_hash):
            raise UserError(f"the data differs from the data {path} was trained on (data_hash "
                            f"{str(recorded['data_hash'])[:16]}…, here {data_hash[:16]}…); "
                            "pass the same --data-dir")
        source = objectives.recorded_source(recorded)  # a user's file; built-ins change with jaxseed's versions
        if objective.name not in objectives.built_in() and source not in (None, objectives.source_hash(objective)):
            raise UserError(f"the objective {objective.name} is not the code {path} was trained with "
                            f"(its source's sha256 differs: {source[:12]}… recorded); restore that file, or start "
                            "afresh with --overwrite")
    restored = run.checkpointer.restore_latest(state)
    if not restored:
        return state, START
    state, progress = restored
    position = _checked_position(run, progress)
    if run.talks:
        print(f"resuming at epoch {position.epoch + 1}, step {progress['global_step']}", file=sys.stderr)
    return state, position


def _checked_position(run: Run, progress: dict) -> Position:
    """A checkpoint's position, refused unless it is one this run can be at (a checkpoint is input)."""
    num_steps = run.program.num_steps
    try:
        epoch, first, step = int(progress["epoch"]), int(progress["first"]), int(progress["global_step"])
        sums = {str(name): np.asarray(value, np.float64) for name, value in dict(progress["sums"]).items()}
        valid = (0 <= epoch <= run.config.epochs and 0 <= first < num_steps
                 and step == epoch * num_steps + first
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
                                  "global_step": at.epoch * run.program.num_steps + at.first,
                                  "sums": {name: value.tolist() for name, value in at.sums.items()}})


def train_epoch(run: Run, state: TrainState, at: Position,
                should_stop: Callable[[], bool]) -> tuple[TrainState, dict]:
    """Train epoch ``at.epoch`` from step ``at.first`` to its end.

    Returns (state, the epoch's training metric sums [R]). Raises StoppedAtStep when
    ``should_stop`` (polled after each call, agreed by every process) asks, after a
    checkpoint; FloatingPointError on a non-finite loss.
    """
    program, epoch, first, sums = run.program, at.epoch, at.first, at.sums
    permutation = _permutations(program.num_replicas, program.layout.replicas)(
        run.keys, epoch, run.data.num_train, run.config.num_kept(run.data.num_train))
    bar = tqdm(total=program.num_steps, initial=first, desc=f"epoch {epoch + 1}/{run.config.epochs}", unit="step",
               disable=not run.talks, dynamic_ncols=True)
    while first < program.num_steps:
        # Calls start at multiples of per_call, so a resumed run replays the same programs.
        n = min(program.per_call - first % program.per_call, program.num_steps - first)
        state, metrics, steps = program.run_steps(n)(state, run.arrays, permutation, run.keys, epoch, first)
        metrics, steps = mesh.fetch((metrics, steps))
        global_step = epoch * program.num_steps + first
        if run.config.trace:
            run.writer.trace(global_step, epoch, steps)
        failed = _first_non_finite(steps["loss"])
        if failed:
            j, r = failed
            raise FloatingPointError(f"non-finite loss at step {global_step + j} (epoch {epoch + 1}); these stream "
                                     f"seeds reproduce it: {run.seeds[r]}; checkpoints saved before it are kept")
        sums = {name: sums.get(name, 0.0) + np.asarray(value, np.float64) for name, value in metrics.items()}
        first += n
        bar.update(n)
        bar.set_postfix({k: f"{v[0] / sums['count'][0]:.4f}" for k, v in sums.items() if k != "count"})
        every = run.config.checkpoint_every
        passed_multiple = every and (global_step + n) // every > global_step // every
        stop = mesh.any_process(should_stop())
        if first < program.num_steps and (passed_multiple or stop):
            _save(run, state, Position(epoch, first, sums))
            if stop:
                raise StoppedAtStep(global_step + n)
    bar.close()
    return state, sums


def evaluate_epoch(run: Run, state: TrainState, epoch: int, sums: dict,
                   training_seconds: float) -> tuple[list[dict], dict]:
    """(each replica's metrics line of ``epoch``, the per-test-example outputs of ``make_evaluate``)."""
    start = time.perf_counter()
    test_metrics, examples = run.evaluate(state.params)
    step_counts = mesh.fetch(state.step)
    rows = [{"epoch": epoch + 1, "step": int(step_counts[r]),
             **{name: float(value[r]) for name, value in outputs.train_means(sums).items()},
             **{name: float(value[r]) for name, value in test_metrics.items()},
             "training_seconds": training_seconds,
             "evaluation_seconds": time.perf_counter() - start} for r in range(len(run.seeds))]
    return rows, examples


def _manifests(run: Run, data_hash: str, init_hashes: list[str]) -> list[dict]:
    """Each replica's manifest as the run starts (status running)."""
    program = run.program
    common = {"streams_used": list(program.objective.drawn_streams(run.config)), "data_hash": data_hash,
              "objective": {"name": userimport.recorded_name(program.objective.name),
                            "source_sha256": objectives.source_hash(program.objective)},
              "execution": {"loop": program.loop_form, "steps_per_call": program.per_call,
                            "replicas": program.num_replicas, **program.layout.describe()},
              **manifest.environment(), "status": "running"}
    return [{**common, "streams": seeds, "config": manifest.config_record(run.config, path), "init_param_hash": init}
            for seeds, path, init in zip(run.seeds, run.writer.paths, init_hashes)]


def _say(run: Run, row: dict) -> None:
    if run.talks:
        scores = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("test_"))
        print(f"epoch {row['epoch']}: {scores} (training {row['training_seconds']:.1f}s, "
              f"evaluation {row['evaluation_seconds']:.1f}s)", file=sys.stderr)


@streams.pinned_generator
def train(config: Config, seeds: list[dict[str, int]], workdirs: list[str], checkpoint_dir: str | None = None,
          progress: bool = True, resume: bool = False, overwrite: bool = False,
          should_stop: Callable[[], bool] = lambda: False, dataset: data.Dataset | None = None,
          objective: Objective | None = None, log: track.Log | None = None) -> list[dict]:
    """Train one run per entry of ``seeds`` together, replica r in the folder ``workdirs[r]``.

    Each replica draws exactly what it would alone: its state, stream keys and
    permutations sit on a leading replica axis, which the step is mapped over
    (``step.over_replicas``) and the mesh splits over its ``seed`` devices.
    Evaluates after each epoch. Each folder is claimed for the loop's lifetime
    (``rundir``; ``resume`` and ``overwrite`` as there). With ``resume``, continues
    from the newest readable checkpoint in ``checkpoint_dir`` (default:
    ``<workdirs[0]>/checkpoints``); the result is bitwise the uninterrupted run's.
    ``should_stop`` is polled after each jitted call: when true, a checkpoint is
    saved and StoppedAtStep raised. ``dataset`` (host arrays) replaces the config's
    data (experiments that alter it). ``objective`` is what ``config.model`` names,
    resolved by the caller, or here when not given. ``log`` names experiment trackers to
    log to as well (``track``). Returns each replica's manifest.
    """
    objective = objective or objectives.resolve(config.model)
    machine.require_flags(config)  # before JAX starts: claiming the folders asks JAX for this process's index
    writer = RunWriter.claim(workdirs, resume, overwrite, log)
    try:
        run, state, init_hashes = setup(objective, config, seeds, writer, checkpoint_dir, dataset, progress)
        try:
            return _epochs(run, state, init_hashes, resume, should_stop)
        finally:
            run.checkpointer.close()
    finally:
        writer.release()


def _epochs(run: Run, state: TrainState, init_hashes: list[str], resume: bool,
            should_stop: Callable[[], bool]) -> list[dict]:
    """Restore, then per epoch: train, evaluate, log, save; then finish."""
    config, num_steps = run.config, run.program.num_steps
    data_hash = manifest.arrays_hash(run.data.arrays())
    state, at = restore(run, state, data_hash) if resume else (state, START)
    run.writer.start(_manifests(run, data_hash, init_hashes), at.epoch,
                     at.epoch * num_steps + at.first if config.trace else None)
    fingerprints = [outputs.Fingerprints(run.program.objective, config, seeds, run.data.num_train)
                    for seeds in run.seeds]
    for done in range(at.epoch):  # draws are pure functions of position: recompute, don't store
        for replica in fingerprints:
            replica.add_epoch(done)
    examples = None
    while at.epoch < config.epochs:
        start = time.perf_counter()
        state, sums = train_epoch(run, state, at, should_stop)
        rows, examples = evaluate_epoch(run, state, at.epoch, sums, time.perf_counter() - start)
        run.writer.end_epoch(rows)
        _say(run, rows[0])
        for replica in fingerprints:  # after the epoch's steps: bookkeeping, not on the way to the first step
            replica.add_epoch(at.epoch)
        at = Position(at.epoch + 1, 0, {})
        _save(run, state, at)  # after the metrics: a resumed run redoes an epoch whose line may be missing
        if mesh.any_process(should_stop()) and at.epoch < config.epochs:
            raise StoppedAtStep(at.epoch * num_steps)
    if examples is None:  # resumed after the last epoch
        examples = run.evaluate(state.params)[1]
    program = run.program
    return run.writer.finish(mesh.fetch(state.params), fingerprints, examples, dict(program.objective.panels),
                             lambda params: program.objective.finish(config, program.graphdef, params, run.data))


def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, **options) -> dict:
    """One run (one replica) into ``workdir``; options as ``train``. Returns its manifest."""
    return train(config, [seeds], [workdir], **options)[0]
