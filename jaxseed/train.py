"""Train a model on MNIST with every random draw from a named stream.

    python -m jaxseed.train --seed 42
    python -m jaxseed.train --seed 42 --stream dropout=7   # only dropout varied

Read top to bottom: state, the pure training step, the loop strategies,
evaluation, the fingerprints of what each stream drew, the run, the CLI.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxseed import checkpoint, cli, data, machine, manifest, objectives, plots, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.objectives import OBJECTIVES, Batch

# ---------------------------------------------------------------- state


class TrainState(NamedTuple):
    """Everything a training step changes; checkpoints whole."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array  # int32[], global step: counts optimiser steps (the schedule's position)


def steps_per_epoch(config: Config, num_train: int) -> int:
    """Full batches per epoch; the last partial batch is dropped."""
    return num_train // config.batch_size


def make_optimizer(config: Config, num_train: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``learning_rate``, then cosine decay to zero."""
    total = config.epochs * steps_per_epoch(config, num_train)
    warmup = min(int(config.warmup_epochs * steps_per_epoch(config, num_train)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), total)
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def init_state(config: Config, keys: streams.StreamKeys, tx: optax.GradientTransformation):
    """Build the model from the ``init`` stream; return (graphdef, state)."""
    graphdef, params = nnx.split(OBJECTIVES[config.model].build(config, keys.init))
    return graphdef, TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------- the step


def train_step(state: TrainState, batch: Batch, keys: streams.StreamKeys, epoch: jax.Array, *,
               graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Config):
    """One optimiser step. Pure: (state, batch, stream keys, epoch) -> (state, metric sums).

    Every draw of the step is per example, from (stream, epoch, example index)
    (``streams.example_keys``); the objective gets the keys of the streams it uses.
    """
    objective = OBJECTIVES[config.model]
    draws = streams.example_keys(keys, epoch, batch.index)
    named_keys = {f"{name}_keys": getattr(draws, name) for name in objective.streams if name in streams.PER_EXAMPLE}

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return objective.train_loss(model, batch, config, **named_keys)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics


# ---------------------------------------------------------------- loop strategies


def execution_plan(config: Config, backend: str, num_steps: int) -> tuple[str, int]:
    """(loop, steps per jitted call), chosen per backend from measurements.

    XLA CPU runs convolutions inside a while loop ~20x slower (jax#12868), so on
    CPU a few steps are unrolled in one jit (10 was ~1.2x faster than one step per
    call). On GPU/TPU a ``lax.scan`` over many steps avoids per-step dispatch.
    """
    loop = config.loop if config.loop != "auto" else ("unroll" if backend == "cpu" else "scan")
    per_call = config.steps_per_call or (10 if loop == "unroll" else 100)
    return loop, max(1, min(per_call, num_steps))


def param_checksum(params: nnx.State) -> jax.Array:
    """uint32 hash of every bit of the parameters: sum_i bits_i * (2654435761 * i + leaf), mod 2^32.

    Cheap enough to take after every step on the device (for --trace); any
    changed bit changes it with overwhelming probability.
    """
    total = jnp.uint32(0)
    for number, leaf in enumerate(jax.tree.leaves(params)):
        bits = jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(number)
        total = total + jnp.sum(bits * weights, dtype=jnp.uint32)
    return total


def make_run_steps(step_fn: Callable, batch_size: int, num_steps: int, loop: str, trace: bool = False) -> Callable:
    """Jit ``num_steps`` consecutive steps of one epoch into one call.

    The call takes (state, images, labels, permutation, keys, epoch, first) and
    gathers batch j from the device-resident data at permutation[..., (first + j) * B:]
    (a leading replica axis on permutation, state and keys is carried through).
    It returns (state, metric sums, per-step trace of loss and param checksum, or None).
    """

    def one(state, images, labels, permutation, keys, epoch, position):
        index = jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size, axis=-1)
        state, metrics = step_fn(state, Batch(images[index], labels[index], index), keys, epoch)
        if trace:
            return state, (metrics, {"loss": metrics["loss"] / metrics["count"],
                                     "param_checksum": param_checksum(state.params)})
        return state, (metrics, None)

    def run(state, images, labels, permutation, keys, epoch, first):
        if loop == "scan":
            def body(state, position):
                return one(state, images, labels, permutation, keys, epoch, position)

            state, (metrics, steps) = jax.lax.scan(body, state, first + jnp.arange(num_steps))
        else:
            outputs = []
            for j in range(num_steps):
                state, output = one(state, images, labels, permutation, keys, epoch, first + j)
                outputs.append(output)
            metrics, steps = jax.tree.map(lambda *m: jnp.stack(m), *outputs)
        return state, jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics), steps

    return jax.jit(run, donate_argnums=0)


# ---------------------------------------------------------------- evaluation


def make_evaluate(config: Config, graphdef: nnx.GraphDef, images: jax.Array, labels: jax.Array,
                  replicas: bool = False) -> Callable:
    """params -> ({test_<metric>: mean over the test set}, class probabilities [N, C] or None).

    Runs in fixed-size chunks. With ``replicas``, params carry a leading replica
    axis and so does every output.
    """
    objective = OBJECTIVES[config.model]
    num = int(images.shape[0])
    batch_size = min(config.eval_batch_size, num)
    padded = -(-num // batch_size) * batch_size
    images = jnp.pad(images, ((0, padded - num), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, padded - num))

    def chunk(params, start):
        index = start + jnp.arange(batch_size)
        batch = Batch(jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                      jax.lax.dynamic_slice_in_dim(labels, start, batch_size), index)
        metrics, probabilities = objective.eval_metrics(nnx.merge(graphdef, params), batch, config)
        return {name: jnp.sum(jnp.where(index < num, value, 0.0)) for name, value in metrics.items()}, probabilities

    chunk = jax.jit(jax.vmap(chunk, in_axes=(0, None)) if replicas else chunk)

    def evaluate(params):
        outputs = jax.device_get([chunk(params, start) for start in range(0, padded, batch_size)])
        metrics = {f"test_{name}": np.sum([sums[name] for sums, _ in outputs], axis=0, dtype=np.float64) / num
                   for name in outputs[0][0]}
        if outputs[0][1] is None:
            return metrics, None
        return metrics, np.concatenate([p for _, p in outputs], axis=-2)[..., :num, :]

    return evaluate


# ---------------------------------------------------------------- fingerprints


@functools.partial(jax.jit, static_argnums=2)
def _permutation(shuffle_root, epoch, num_examples):
    return streams.epoch_permutation(shuffle_root, epoch, num_examples)


@functools.partial(jax.jit, static_argnums=2)
def _example_key_data(keys: streams.StreamKeys, epoch, num_examples):
    """Words of every training example's key of each per-example stream in ``epoch``."""
    return jax.tree.map(jax.random.key_data, streams.example_keys(keys, epoch, jnp.arange(num_examples)))


class Fingerprints:
    """Hashes of what each stream drew, epoch by epoch.

    shuffle: each epoch's permutation. dropout, augment, latent: the key of every
    training example in every epoch (each example's mask, rotation and shift,
    binarisation or noise is a function of its key alone), hashed for the streams
    the config really draws from. None depends on the order or the batch size,
    so varying ``shuffle`` or ``--batch-size`` leaves the others' hashes alone.
    """

    def __init__(self, config: Config, keys: streams.StreamKeys):
        self.keys = keys
        self.draws = {name: [] for name in OBJECTIVES[config.model].drawn(config) if name != "init"}

    def add_epoch(self, epoch: int, permutation: jax.Array) -> None:
        num_train = int(permutation.shape[0])
        example_keys = _example_key_data(self.keys, epoch, num_train)
        for name in self.draws:
            self.draws[name].append(np.asarray(permutation if name == "shuffle" else getattr(example_keys, name)))

    def summary(self, init_param_hash: str) -> dict:
        return {"init": init_param_hash, **{name: manifest.arrays_hash(arrays) for name, arrays in self.draws.items()}}


# ---------------------------------------------------------------- the run


def vae_final_evaluation(config: Config, graphdef: nnx.GraphDef, params: nnx.State, dataset: data.Dataset,
                         workdir: str) -> dict:
    """Importance-sampled test -log p(x), samples.png and reconstructions.png.

    Every draw here comes from the fixed evaluation key, so runs compare fairly.
    """
    model = nnx.merge(graphdef, params)
    num_test = dataset.test_images.shape[0]
    batch_size = min(100, num_test)

    @jax.jit
    def chunk_nll(params, images, labels, index):
        return objectives.importance_nll(nnx.merge(graphdef, params), Batch(images, labels, index), config,
                                         config.importance_samples)

    nll = []
    for start in range(0, num_test, batch_size):
        stop = min(start + batch_size, num_test)
        nll.append(chunk_nll(params, dataset.test_images[start:stop], dataset.test_labels[start:stop],
                             jnp.arange(start, stop)))
    noise = objectives.latent_noise(objectives.eval_keys(objectives.EVAL_SAMPLES, jnp.arange(64)), config.latents)
    plots.save_grid(jax.nn.sigmoid(model.decode(noise)), os.path.join(workdir, "samples.png"), columns=8)
    shown = Batch(dataset.test_images[:32], dataset.test_labels[:32], jnp.arange(32))
    originals = objectives.binarize(shown.images, objectives.eval_keys(objectives.EVAL_BINARIZE, shown.index), config)
    reconstructions = jax.nn.sigmoid(model.decode(model.encode(originals)[0]))
    pairs = jnp.stack([originals.reshape(4, 8, 28, 28, 1), reconstructions.reshape(4, 8, 28, 28, 1)], 1)
    plots.save_grid(pairs.reshape(64, 28, 28, 1), os.path.join(workdir, "reconstructions.png"), columns=8)
    test_inputs = objectives.binarize(dataset.test_images,
                                      objectives.eval_keys(objectives.EVAL_BINARIZE, jnp.arange(num_test)), config)
    test_noise = objectives.latent_noise(objectives.eval_keys(objectives.EVAL_LATENT, jnp.arange(num_test)),
                                         config.latents)
    return {"test_nll_importance": float(jnp.concatenate(nll).mean()),
            "importance_samples": config.importance_samples,
            "evaluation_fingerprint": manifest.arrays_hash([np.packbits(np.asarray(test_inputs, bool)), test_noise])}


class Interrupted(Exception):
    """Training stopped on request after a checkpoint; ``args[0]`` is the global step."""


def _kept_lines(path: str, keep: Callable[[dict], bool]) -> list[dict]:
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


def _write_lines(path: str, rows: list[dict]) -> None:
    with open(f"{path}.tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(f"{path}.tmp", path)


def train_means(sums: dict) -> dict:
    """{train_<metric>: sum / count} from a training epoch's metric sums (scalars or per replica)."""
    return {f"train_{name}": value / sums["count"] for name, value in sums.items() if name != "count"}


def load_data(config: Config) -> data.Dataset:
    """The config's data set on the device, checked against the batch size."""
    dataset = data.load(config.data, config.data_dir, config.train_limit)
    if not 0 < config.batch_size <= dataset.num_train:
        raise UserError(f"--batch-size must be in [1, {dataset.num_train}] (the training set size), "
                        f"got {config.batch_size}")
    return data.to_device(dataset)


@streams.pinned_generator
def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, progress: bool = True,
                       resume: bool = False, should_stop: Callable[[], bool] = lambda: False,
                       dataset: data.Dataset | None = None) -> dict:
    """Train, evaluate after each epoch, write metrics.jsonl, manifest.json, curves.png.

    With ``resume``, continue from the newest readable checkpoint in ``workdir``;
    the result is bitwise the uninterrupted run's. ``should_stop`` is polled after
    each jitted call: when true, a checkpoint is saved and Interrupted raised.
    ``dataset`` replaces the config's data (experiments that alter the data).
    Returns the manifest.
    """
    objective = OBJECTIVES[config.model]
    machine.require_portable(config.portable)
    dataset = load_data(config) if dataset is None else data.to_device(dataset)
    num_train = dataset.num_train
    keys = streams.root_keys(seeds)
    tx = make_optimizer(config, num_train)
    graphdef, state = init_state(config, keys, tx)
    init_param_hash = manifest.tree_hash(state.params)

    num_steps = steps_per_epoch(config, num_train)
    loop, per_call = execution_plan(config, jax.default_backend(), num_steps)
    step_fn = functools.partial(train_step, graphdef=graphdef, tx=tx, config=config)
    runners = {}  # steps per call -> compiled call; usually two sizes (full, epoch remainder)
    evaluate = make_evaluate(config, graphdef, dataset.test_images, dataset.test_labels)
    if not resume:  # a fresh start: checkpoints of an earlier run here would collide with ours
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    metrics_path, trace_path = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "trace.jsonl")

    epoch, first, sums, probabilities = 0, 0, {}, None
    restored = checkpointer.restore_latest(state) if resume else None
    if restored:
        state, position = restored
        epoch, first, sums = position["epoch"], position["first"], position["sums"]
        if progress:
            print(f"resuming at epoch {epoch + 1}, step {position['global_step']}", file=sys.stderr)
    history = _kept_lines(metrics_path, lambda row: row["epoch"] <= epoch)
    _write_lines(metrics_path, history)
    if config.trace:
        _write_lines(trace_path, _kept_lines(trace_path, lambda row: row["step"] < epoch * num_steps + first))

    info = {"streams": seeds, "streams_used": list(objective.streams),
            "config": manifest.config_record(config, workdir), "data_hash": manifest.arrays_hash(dataset),
            "execution": {"loop": loop, "steps_per_call": per_call}, **manifest.environment(),
            "init_param_hash": init_param_hash, "status": "running"}
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    fingerprints = Fingerprints(config, keys)
    for done in range(epoch):  # draws are pure functions of position: recompute, don't store
        fingerprints.add_epoch(done, _permutation(keys.shuffle, done, num_train))

    def save(epoch, first, sums):
        checkpointer.save(state, {"epoch": epoch, "first": first, "sums": sums,
                                  "global_step": epoch * num_steps + first})

    try:
        while epoch < config.epochs:
            start = time.perf_counter()
            permutation = _permutation(keys.shuffle, epoch, num_train)
            fingerprints.add_epoch(epoch, permutation)
            bar = tqdm(total=num_steps, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not progress, dynamic_ncols=True)
            while first < num_steps:
                # Calls start at multiples of per_call, so a resumed run replays the same programs.
                n = min(per_call - first % per_call, num_steps - first)
                if n not in runners:
                    runners[n] = make_run_steps(step_fn, config.batch_size, n, loop, config.trace)
                state, metrics, steps = runners[n](state, dataset.train_images, dataset.train_labels, permutation,
                                                   keys, epoch, first)
                metrics, steps = jax.device_get((metrics, steps))
                global_step = epoch * num_steps + first
                if config.trace:
                    with open(trace_path, "a") as f:
                        f.writelines(json.dumps({"step": global_step + j, "epoch": epoch + 1,
                                                 "loss": float(steps["loss"][j]),
                                                 "param_checksum": int(steps["param_checksum"][j])}) + "\n"
                                     for j in range(n))
                if not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"non-finite loss in steps {global_step}..{global_step + n - 1} (epoch {epoch + 1}); "
                        f"these stream seeds reproduce it: {seeds}; checkpoints saved before it are kept")
                sums = {name: sums.get(name, 0.0) + float(value) for name, value in metrics.items()}
                first += n
                bar.update(n)
                bar.set_postfix({k: f"{v / sums['count']:.4f}" for k, v in sums.items() if k != "count"})
                every = config.checkpoint_every
                passed_multiple = every and (global_step + n) // every > global_step // every
                if first < num_steps and (passed_multiple or should_stop()):
                    save(epoch, first, sums)
                    if should_stop():
                        raise Interrupted(global_step + n)
            bar.close()
            test_metrics, probabilities = evaluate(state.params)
            row = {"epoch": epoch + 1, "step": int(state.step),
                   **train_means(sums),
                   **test_metrics, "seconds": time.perf_counter() - start}
            history.append(row)
            _write_lines(metrics_path, history)
            if progress:
                print(f"epoch {row['epoch']}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                          if k.startswith("test_")) + f" ({row['seconds']:.1f}s)",
                      file=sys.stderr)
            epoch, first, sums = epoch + 1, 0, {}
            save(epoch, first, sums)
            if should_stop() and epoch < config.epochs:
                raise Interrupted(epoch * num_steps)
    finally:
        checkpointer.close()

    plots.plot_curves(history, os.path.join(workdir, "curves.png"), objective.panels)
    if probabilities is None and history:  # resumed after the last epoch
        probabilities = evaluate(state.params)[1]
    if probabilities is not None:  # for comparing runs' predictions (ablate's disagreement, ensembles)
        np.save(os.path.join(workdir, "test_probabilities.npy"), probabilities)
    if config.model == "vae":
        info.update(vae_final_evaluation(config, graphdef, state.params, dataset, workdir))
    info.update(status="finished", param_hash=manifest.tree_hash(state.params),
                fingerprints=fingerprints.summary(init_param_hash), final=history[-1] if history else None)
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    return info


@streams.pinned_generator
def train_replicas(config: Config, seeds: list[dict[str, int]]) -> list[tuple[dict, np.ndarray | None]]:
    """Train one run per entry of ``seeds`` together, in one jitted program.

    Parameters, optimiser states, stream keys and permutations are stacked on a
    leading replica axis and the step is vmapped, so each replica draws exactly
    what its own ``train_and_evaluate`` would. Results agree with sequential runs
    up to floating-point noise (vmapped kernels may sum in another order).
    Writes no files. Returns, per replica, ({"param_hash", "final"}, test
    class probabilities or None).
    """
    machine.require_portable(config.portable)
    dataset = load_data(config)
    num_train = dataset.num_train
    keys = jax.tree.map(lambda *k: jnp.stack(k), *map(streams.root_keys, seeds))
    tx = make_optimizer(config, num_train)
    graphdef, _ = init_state(config, streams.root_keys(seeds[0]), tx)
    state = jax.vmap(lambda replica_keys: init_state(config, replica_keys, tx)[1])(keys)
    num_steps = steps_per_epoch(config, num_train)
    loop, per_call = execution_plan(config, jax.default_backend(), num_steps)
    step_fn = jax.vmap(functools.partial(train_step, graphdef=graphdef, tx=tx, config=config),
                       in_axes=(0, 0, 0, None))
    permute = jax.jit(jax.vmap(streams.epoch_permutation, in_axes=(0, None, None)), static_argnums=2)
    evaluate = make_evaluate(config, graphdef, dataset.test_images, dataset.test_labels, replicas=True)
    runners, finals = {}, None
    for epoch in range(config.epochs):
        permutation, sums = permute(keys.shuffle, epoch, num_train), {}
        for first in range(0, num_steps, per_call):
            n = min(per_call, num_steps - first)
            if n not in runners:
                runners[n] = make_run_steps(step_fn, config.batch_size, n, loop)
            state, metrics, _ = runners[n](state, dataset.train_images, dataset.train_labels, permutation,
                                           keys, epoch, first)
            sums = {k: sums.get(k, 0.0) + np.asarray(v, np.float64) for k, v in jax.device_get(metrics).items()}
        if not np.all(np.isfinite(sums["loss"])):
            bad = [seeds[r] for r in np.flatnonzero(~np.isfinite(sums["loss"]))]
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1} of the replicas with seeds {bad}")
        test_metrics, probabilities = evaluate(state.params)
        finals = [{"epoch": epoch + 1, "step": int(state.step[r]),
                   **{k: float(v[r]) for k, v in {**train_means(sums), **test_metrics}.items()}}
                  for r in range(len(seeds))]
    return [({"param_hash": manifest.tree_hash(jax.tree.map(lambda leaf: leaf[r], state.params)), "final": finals[r]},
             None if probabilities is None else probabilities[r]) for r in range(len(seeds))]


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser().parse_args(argv)
    workdir = created = None
    stop_signal = []
    for signum in (signal.SIGINT, signal.SIGTERM):  # finish the current call, save, then stop
        signal.signal(signum, lambda signum, frame: stop_signal.append(signal.Signals(signum).name))
    try:
        if args.resume:
            if not args.workdir:
                raise UserError("--resume needs the --workdir of the run to continue")
            config, seeds = cli.resolve_resume(args, args.workdir)
            workdir = args.workdir
        else:
            config, seed, seeds = cli.resolve(args)
            workdir, created = cli.prepare_workdir(args.workdir, config, seed, overwrite=args.overwrite)
        info = train_and_evaluate(config, seeds, workdir, progress=not args.quiet, resume=args.resume,
                                  should_stop=lambda: bool(stop_signal))
    except Interrupted as stopped:
        print(f"jaxseed.train: stopped by {stop_signal[0]} after step {stopped.args[0]}, checkpoint saved; "
              f"resume with: python -m jaxseed.train --resume --workdir {workdir}", file=sys.stderr)
        return 130
    except (UserError, FloatingPointError) as error:
        if created and not os.listdir(workdir):
            os.rmdir(workdir)  # leave no empty folder behind a run that never started
        print(f"jaxseed.train: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UserError) else 3
    scores = {k: v for k, v in {**info["final"], **info}.items() if k.startswith("test_")}
    print(" ".join(f"{name} {value:.4f}" for name, value in sorted(scores.items(), key=lambda kv: kv[0] != "test_loss"))
          + f" after {info['final']['epoch']} epochs; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
