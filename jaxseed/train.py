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
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxseed import cli, data, manifest, objectives, plots, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.objectives import OBJECTIVES, Batch

# ---------------------------------------------------------------- state


class TrainState(NamedTuple):
    """Everything a training step changes; checkpoints whole."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array  # int32[], global step: the position of the next per-step draw


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

    The model's objective makes its draws by position: per example from
    (epoch, example index) or (global step, example index), per step from the
    global step ``state.step``.
    """
    objective = OBJECTIVES[config.model]

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return objective.train_loss(model, batch, keys, epoch, state.step, config)

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


def make_run_steps(step_fn: Callable, batch_size: int, num_steps: int, loop: str) -> Callable:
    """Jit ``num_steps`` consecutive steps of one epoch into one call.

    The call takes (state, images, labels, permutation, keys, epoch, first) and
    gathers batch j from the device-resident data at permutation[(first + j) * B:].
    """

    def one(state, images, labels, permutation, keys, epoch, position):
        index = jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size)
        return step_fn(state, Batch(images[index], labels[index], index), keys, epoch)

    def run(state, images, labels, permutation, keys, epoch, first):
        if loop == "scan":
            def body(state, position):
                return one(state, images, labels, permutation, keys, epoch, position)

            state, metrics = jax.lax.scan(body, state, first + jnp.arange(num_steps))
        else:
            per_step = []
            for j in range(num_steps):
                state, metrics = one(state, images, labels, permutation, keys, epoch, first + j)
                per_step.append(metrics)
            metrics = jax.tree.map(lambda *m: jnp.stack(m), *per_step)
        return state, jax.tree.map(jnp.sum, metrics)

    return jax.jit(run, donate_argnums=0)


# ---------------------------------------------------------------- evaluation


def make_evaluate(config: Config, graphdef: nnx.GraphDef, images: jax.Array, labels: jax.Array) -> Callable:
    """params -> {test_<metric>: mean over the test set}, in fixed-size chunks."""
    objective = OBJECTIVES[config.model]
    num = int(images.shape[0])
    batch_size = min(config.eval_batch_size, num)
    padded = -(-num // batch_size) * batch_size
    images = jnp.pad(images, ((0, padded - num), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, padded - num))

    @jax.jit
    def chunk(params, start):
        index = start + jnp.arange(batch_size)
        batch = Batch(jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                      jax.lax.dynamic_slice_in_dim(labels, start, batch_size), index)
        metrics = objective.eval_metrics(nnx.merge(graphdef, params), batch, config)
        return {name: jnp.sum(jnp.where(index < num, value, 0.0)) for name, value in metrics.items()}

    def evaluate(params) -> dict:
        sums = jax.device_get([chunk(params, start) for start in range(0, padded, batch_size)])
        return {f"test_{name}": float(sum(s[name] for s in sums)) / num for name in sums[0]}

    return evaluate


# ---------------------------------------------------------------- fingerprints


@functools.partial(jax.jit, static_argnums=2)
def _permutation(shuffle_root, epoch, num_examples):
    return streams.epoch_permutation(shuffle_root, epoch, num_examples)


@functools.partial(jax.jit, static_argnums=0)
def _augment_draws(config: Config, keys, epoch, example_index):
    return OBJECTIVES[config.model].augment_draws(config, keys, epoch, example_index)


@jax.jit
def _step_key_data(root, global_steps):
    """Words of fold_in(root, step) per step: every dropout or latent draw of a step derives from it."""
    return jax.random.key_data(jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, global_steps))


class Fingerprints:
    """Hashes of what each stream drew, epoch by epoch (where that is cheap).

    Each hash covers a stream's draws over a fixed domain (all examples, all
    steps), not only the ones a run consumed, so changing the shuffle (which
    decides which example meets which step) leaves the latent hash alone.
    """

    def __init__(self, config: Config, keys: streams.StreamKeys):
        self.config, self.keys = config, keys
        self.used = OBJECTIVES[config.model].streams
        self.draws = {name: [] for name in ("shuffle", "augment", "dropout", "latent")}

    def add_epoch(self, epoch: int, permutation: jax.Array, first_step: int, num_steps: int) -> None:
        num_train = int(permutation.shape[0])
        self.draws["shuffle"].append(np.asarray(permutation))
        augment_draws = _augment_draws(self.config, self.keys, epoch, jnp.arange(num_train))
        if augment_draws is not None:
            self.draws["augment"].append(np.asarray(augment_draws))
        global_steps = first_step + jnp.arange(num_steps)
        for name in ("dropout", "latent"):
            if name in self.used:
                self.draws[name].append(np.asarray(_step_key_data(getattr(self.keys, name), global_steps)))

    def summary(self, init_param_hash: str) -> dict:
        hashes = {name: manifest.arrays_hash(arrays) for name, arrays in self.draws.items() if arrays}
        return {"init": init_param_hash, **hashes}


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


def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, progress: bool = True) -> dict:
    """Train, evaluate after each epoch, write metrics.jsonl, manifest.json, curves.png.

    Returns the manifest.
    """
    objective = OBJECTIVES[config.model]
    dataset = data.load(config.data, config.data_dir, config.train_limit)
    num_train = dataset.num_train
    if not 0 < config.batch_size <= num_train:
        raise UserError(f"--batch-size must be in [1, {num_train}] (the training set size), got {config.batch_size}")
    dataset = data.to_device(dataset)
    keys = streams.root_keys(seeds)
    tx = make_optimizer(config, num_train)
    graphdef, state = init_state(config, keys, tx)
    init_param_hash = manifest.tree_hash(state.params)

    num_steps = steps_per_epoch(config, num_train)
    loop, per_call = execution_plan(config, jax.default_backend(), num_steps)
    step_fn = functools.partial(train_step, graphdef=graphdef, tx=tx, config=config)
    runners = {n: make_run_steps(step_fn, config.batch_size, n, loop) for n in {per_call, num_steps % per_call} if n}
    evaluate = make_evaluate(config, graphdef, dataset.test_images, dataset.test_labels)

    info = {"streams": {name: seeds[name] for name in objective.streams}, "config": config.to_dict(),
            "execution": {"loop": loop, "steps_per_call": per_call}, **manifest.environment(),
            "init_param_hash": init_param_hash, "status": "running"}
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    fingerprints = Fingerprints(config, keys)
    history = []
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    open(metrics_path, "w").close()

    for epoch in range(config.epochs):
        start = time.perf_counter()
        permutation = _permutation(keys.shuffle, epoch, num_train)
        fingerprints.add_epoch(epoch, permutation, epoch * num_steps, num_steps)
        sums = {}
        bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress, dynamic_ncols=True)
        first = 0
        while first < num_steps:
            n = min(per_call, num_steps - first)
            state, metrics = runners[n](state, dataset.train_images, dataset.train_labels, permutation,
                                        keys, epoch, first)
            metrics = jax.device_get(metrics)
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(
                    f"non-finite loss in steps {epoch * num_steps + first}..{epoch * num_steps + first + n - 1} "
                    f"(epoch {epoch + 1}); these stream seeds reproduce it: {seeds}")
            sums = {name: sums.get(name, 0) + value for name, value in metrics.items()}
            first += n
            bar.update(n)
            bar.set_postfix({name: f"{value / sums['count']:.4f}" for name, value in sums.items() if name != "count"})
        bar.close()
        row = {"epoch": epoch + 1, "step": int(state.step),
               **{f"train_{name}": float(value) / sums["count"] for name, value in sums.items() if name != "count"},
               **evaluate(state.params), "seconds": time.perf_counter() - start}
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if progress:
            print(f"epoch {row['epoch']}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("test_"))
                  + f" ({row['seconds']:.1f}s)", file=sys.stderr)

    plots.plot_curves(history, os.path.join(workdir, "curves.png"), objective.panels)
    if config.model == "vae":
        info.update(vae_final_evaluation(config, graphdef, state.params, dataset, workdir))
    info.update(status="finished", param_hash=manifest.tree_hash(state.params),
                fingerprints=fingerprints.summary(init_param_hash), final=history[-1] if history else None)
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    return info


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser().parse_args(argv)
    workdir = created = None
    try:
        config, seed, seeds = cli.resolve(args)
        workdir, created = cli.prepare_workdir(args.workdir, config, seed, overwrite=args.overwrite)
        info = train_and_evaluate(config, seeds, workdir, progress=not args.quiet)
    except (UserError, FloatingPointError, KeyboardInterrupt) as error:
        if created and not os.listdir(workdir):
            os.rmdir(workdir)  # leave no empty folder behind a run that never started
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
        print(f"jaxseed.train: error: {message}", file=sys.stderr)
        return {UserError: 2, FloatingPointError: 3}.get(type(error), 130)
    scores = {k: v for k, v in {**info["final"], **info}.items() if k.startswith("test_")}
    print(" ".join(f"{name} {value:.4f}" for name, value in sorted(scores.items(), key=lambda kv: kv[0] != "test_loss"))
          + f" after {info['final']['epoch']} epochs; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
