"""The pure training step, and the jitted call that runs several of them.

Every array the loop hands in carries a leading replica axis R (R = 1 for one
run): ``over_replicas`` maps the one-run step over it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxseed import mesh, streams
from jaxseed.config import Config
from jaxseed.objective import Batch, DataSpec, Objective


class TrainState(NamedTuple):
    """Everything a training step changes; checkpoints whole."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array  # int32[], global step: counts optimiser steps (the schedule's position)


def steps_per_epoch(config: Config, num_train: int) -> int:
    """Full batches per epoch (of the examples ``--subsample`` keeps); the last partial batch is dropped."""
    return (config.num_kept(num_train) or num_train) // config.batch_size


@functools.lru_cache(maxsize=16)  # the same object for the same run shape, so compiled calls are reused
def make_optimizer(config: Config, num_train: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``learning_rate``, then cosine decay to zero."""
    total = config.epochs * steps_per_epoch(config, num_train)
    warmup = min(int(config.warmup_epochs * steps_per_epoch(config, num_train)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), total)
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def init_state(objective: Objective, config: Config, spec: DataSpec, keys: streams.Keys,
               tx: optax.GradientTransformation):
    """Build the model from the ``init`` stream; return (graphdef, state)."""
    graphdef, params = nnx.split(objective.build(config, spec, keys.init))
    return graphdef, TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch: Batch, keys: streams.Keys, epoch: jax.Array, *,
               objective: Objective, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Config):
    """One optimiser step. Pure: (state, batch, stream keys, epoch) -> (state, metric sums).

    Every draw of the step is per example, from (stream, epoch, example index)
    (``streams.batch_keys``); the objective gets the keys of the streams it declares.
    """
    draws = streams.batch_keys(keys, objective.streams, epoch, batch.index)

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return objective.train_loss(model, batch, config, draws)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics


def over_replicas(fn: Callable, num_replicas: int, in_axes: tuple, layout: mesh.Layout | None = None) -> Callable:
    """``fn`` mapped over the leading replica axis of the arguments whose in_axes is 0.

    Several replicas: ``jax.vmap``. One replica: ``fn`` on the replica itself,
    with the axis taken off and put back, so a single run compiles to the very
    program it had before replicas existed (vmapped convolutions are other XLA
    kernels, which sum in another order and on CPU run slower). With a ``layout``
    whose ``seed`` axis has S > 1 devices, ``jax.shard_map`` hands each group of
    devices its R / S replicas, mapped as above: replicas never talk to each other,
    and the compiler is not left to split a vmapped convolution by itself.
    """
    seed_devices = layout.shape[mesh.SEED] if layout else 1
    if seed_devices > 1:
        local = over_replicas(fn, num_replicas // seed_devices, in_axes)
        specs = tuple(P(mesh.SEED) if axis == 0 else P() for axis in in_axes)
        return jax.shard_map(local, mesh=layout.mesh, in_specs=specs, out_specs=P(mesh.SEED),
                             axis_names={mesh.SEED})
    if num_replicas > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args):
        args = [arg if axis is None else jax.tree.map(lambda leaf: leaf[0], arg) for arg, axis in zip(args, in_axes)]
        return jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), fn(*args))

    return single


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


@functools.lru_cache(maxsize=16)  # runs of one shape (an ablation's runs, a resume) compile once
def make_run_steps(objective: Objective, config: Config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   num_replicas: int, num_steps: int, loop: str, layout: mesh.Layout | None = None) -> Callable:
    """Jit ``num_steps`` consecutive steps of one epoch, for R replicas, into one call.

    The call takes (state, arrays, permutation, keys, epoch, first), with state, keys
    and permutation (int32[R, N]) on the replica axis, and gathers step j's batch from
    the device-resident training arrays ({name: [N, ...]}) at permutation[:, (first + j) * B:][:B].
    ``layout`` places each batch's example indices int32[R, B] on the mesh, and the outputs.
    Returns (state, metric sums of the call [R], per step: {"loss" [n, R], and with
    ``config.trace`` "param_checksum" [n, R]}).
    """
    batch_size = config.batch_size
    step_fn = over_replicas(functools.partial(train_step, objective=objective, graphdef=graphdef, tx=tx,
                                              config=config), num_replicas,
                            in_axes=(0, 0, 0, None), layout=layout)
    checksums = over_replicas(param_checksum, num_replicas, in_axes=(0,))

    def one(state, arrays, permutation, keys, epoch, position):
        index = jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size, axis=1)
        if layout is not None:
            index = jax.lax.with_sharding_constraint(index, layout.batch)
        batch = Batch({name: array[index] for name, array in arrays.items()}, index)
        state, metrics = step_fn(state, batch, keys, epoch)
        steps = {"loss": metrics["loss"] / metrics["count"]}
        if config.trace:
            steps["param_checksum"] = checksums(state.params)
        return state, (metrics, steps)

    def run(state, arrays, permutation, keys, epoch, first):
        if loop == "scan":
            def body(state, position):
                return one(state, arrays, permutation, keys, epoch, position)

            state, (metrics, steps) = jax.lax.scan(body, state, first + jnp.arange(num_steps))
        else:
            # Traced once and inlined num_steps times by XLA: tracing each copy anew took ~1 s
            # of a warm start-up on CPU (10 steps per call).
            one_step = jax.jit(one)
            outputs = []
            for j in range(num_steps):
                state, output = one_step(state, arrays, permutation, keys, epoch, first + j)
                outputs.append(output)
            metrics, steps = jax.tree.map(lambda *m: jnp.stack(m), *outputs)
        return state, jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics), steps

    out_shardings = None if layout is None else (layout.replicas, layout.replicated, layout.replicated)
    return jax.jit(run, donate_argnums=0, out_shardings=out_shardings)
