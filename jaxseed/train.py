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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxseed import augment, cli, data, manifest, plots, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.models import MODELS

# ---------------------------------------------------------------- state


class TrainState(NamedTuple):
    """Everything a training step changes; checkpoints whole."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array  # int32[], global step: the position of the next dropout draw


class Batch(NamedTuple):
    images: jax.Array  # uint8[B, 28, 28, 1]
    labels: jax.Array  # int32[B]
    index: jax.Array  # int32[B], each example's index in the training set


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
    model = MODELS[config.model](init_key=keys.init, dropout_rate=config.dropout_rate)
    graphdef, params = nnx.split(model)
    return graphdef, TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------- the step


def augment_params(config: Config, augment_root: jax.Array, epoch, example_index) -> augment.AffineParams:
    """Augmentation of the given examples in ``epoch``, from the ``augment`` stream."""
    keys = streams.per_example_keys(augment_root, epoch, example_index)
    return augment.sample_affine(keys, config.max_translation, config.max_rotation)


def train_step(state: TrainState, batch: Batch, keys: streams.StreamKeys, epoch: jax.Array, *,
               graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Config):
    """One optimiser step. Pure: (state, batch, stream keys, epoch) -> (state, metrics).

    Draws: augmentation from ``augment`` at (epoch, example index); dropout masks
    from ``dropout`` at the global step. Metrics are sums over the batch.
    """
    images = batch.images.astype(jnp.float32) / 255.0
    if config.augment == "affine":
        images = augment.apply_affine(images, augment_params(config, keys.augment, epoch, batch.index))
    dropout_key = streams.dropout_key(keys.dropout, state.step)

    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(images, train=True, dropout_key=dropout_key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
    metrics = {
        "loss_sum": loss * batch.labels.shape[0],
        "correct": jnp.sum(jnp.argmax(logits, -1) == batch.labels),
        "count": batch.labels.shape[0],
    }
    return new_state, metrics


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


def make_evaluate(graphdef: nnx.GraphDef, images: jax.Array, labels: jax.Array, batch_size: int) -> Callable:
    """params -> {test_loss, test_accuracy} over the whole test set, in fixed-size chunks."""
    num = int(images.shape[0])
    batch_size = min(batch_size, num)
    padded = -(-num // batch_size) * batch_size
    images = jnp.pad(images, ((0, padded - num), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, padded - num))

    @jax.jit
    def chunk(params, start):
        x = jax.lax.dynamic_slice_in_dim(images, start, batch_size).astype(jnp.float32) / 255.0
        y = jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
        mask = start + jnp.arange(batch_size) < num
        logits = nnx.merge(graphdef, params)(x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(loss * mask), jnp.sum((jnp.argmax(logits, -1) == y) * mask)

    def evaluate(params) -> dict:
        sums = [chunk(params, start) for start in range(0, padded, batch_size)]
        loss, correct = (float(sum(s[i] for s in sums)) for i in range(2))
        return {"test_loss": loss / num, "test_accuracy": correct / num}

    return evaluate


# ---------------------------------------------------------------- fingerprints


@functools.partial(jax.jit, static_argnums=2)
def _permutation(shuffle_root, epoch, num_examples):
    return streams.epoch_permutation(shuffle_root, epoch, num_examples)


@functools.partial(jax.jit, static_argnums=0)
def _all_augment_params(config: Config, augment_root, epoch, example_index):
    return augment_params(config, augment_root, epoch, example_index)


@jax.jit
def _dropout_key_data(dropout_root, global_steps):
    return jax.random.key_data(jax.vmap(streams.dropout_key, in_axes=(None, 0))(dropout_root, global_steps))


class Fingerprints:
    """Hashes of what each stream drew, epoch by epoch (only where that is cheap)."""

    def __init__(self):
        self.permutations, self.augmentations, self.dropout_keys = [], [], []

    def add_epoch(self, config: Config, keys: streams.StreamKeys, epoch: int, permutation, num_train: int,
                  first_step: int, num_steps: int) -> None:
        self.permutations.append(np.asarray(permutation))
        if config.augment == "affine":
            params = _all_augment_params(config, keys.augment, epoch, jnp.arange(num_train))
            self.augmentations.append(np.stack([np.asarray(p) for p in params]))
        self.dropout_keys.append(np.asarray(_dropout_key_data(keys.dropout, first_step + jnp.arange(num_steps))))

    def summary(self, init_param_hash: str) -> dict:
        return {
            "init": init_param_hash,
            "shuffle": manifest.arrays_hash(self.permutations),
            "augment": manifest.arrays_hash(self.augmentations) if self.augmentations else None,
            "dropout": manifest.arrays_hash(self.dropout_keys),
        }


# ---------------------------------------------------------------- the run


def train_and_evaluate(config: Config, seeds: dict[str, int], workdir: str, progress: bool = True) -> dict:
    """Train, evaluate after each epoch, write metrics.jsonl, manifest.json, curves.png.

    Returns the manifest.
    """
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
    evaluate = make_evaluate(graphdef, dataset.test_images, dataset.test_labels, config.eval_batch_size)

    info = {"streams": seeds, "config": config.to_dict(), "execution": {"loop": loop, "steps_per_call": per_call},
            **manifest.environment(), "init_param_hash": init_param_hash, "status": "running"}
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    fingerprints = Fingerprints()
    history = []
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    open(metrics_path, "w").close()

    for epoch in range(config.epochs):
        start = time.perf_counter()
        permutation = _permutation(keys.shuffle, epoch, num_train)
        fingerprints.add_epoch(config, keys, epoch, permutation, num_train, epoch * num_steps, num_steps)
        sums = {"loss_sum": 0.0, "correct": 0, "count": 0}
        bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress, leave=True, dynamic_ncols=True)
        first = 0
        while first < num_steps:
            n = min(per_call, num_steps - first)
            state, metrics = runners[n](state, dataset.train_images, dataset.train_labels, permutation,
                                        keys, epoch, first)
            metrics = jax.device_get(metrics)
            for name, value in metrics.items():
                sums[name] += value
            if not math.isfinite(metrics["loss_sum"]):
                raise FloatingPointError(
                    f"non-finite loss in steps {epoch * num_steps + first}..{epoch * num_steps + first + n - 1} "
                    f"(epoch {epoch}); reproduce with the same --seed/--stream values: {seeds}")
            first += n
            bar.update(n)
            bar.set_postfix(loss=f"{sums['loss_sum'] / sums['count']:.4f}",
                            acc=f"{sums['correct'] / sums['count']:.4f}")
        bar.close()
        row = {"epoch": epoch + 1, "step": int(state.step),
               "train_loss": sums["loss_sum"] / sums["count"], "train_accuracy": sums["correct"] / sums["count"],
               **evaluate(state.params), "seconds": time.perf_counter() - start}
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if progress:
            print(f"epoch {row['epoch']}: test_loss {row['test_loss']:.4f} "
                  f"test_accuracy {row['test_accuracy']:.4f} ({row['seconds']:.1f}s)", file=sys.stderr)

    plots.plot_curves(history, os.path.join(workdir, "curves.png"),
                      {"loss": ("train_loss", "test_loss"), "accuracy": ("train_accuracy", "test_accuracy")})
    info.update(status="finished", param_hash=manifest.tree_hash(state.params),
                fingerprints=fingerprints.summary(init_param_hash), final=history[-1] if history else None)
    manifest.write_json(os.path.join(workdir, "manifest.json"), info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = cli.train_parser()
    args = parser.parse_args(argv)
    try:
        config, seed, seeds = cli.resolve(args)
        workdir = cli.prepare_workdir(args.workdir, config, seed, overwrite=args.overwrite)
        info = train_and_evaluate(config, seeds, workdir, progress=not args.quiet)
    except UserError as error:
        print(f"jaxseed.train: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"jaxseed.train: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("jaxseed.train: interrupted", file=sys.stderr)
        return 130
    final = info["final"]
    print(f"test_accuracy {final['test_accuracy']:.4f} test_loss {final['test_loss']:.4f} "
          f"after {final['epoch']} epochs; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
