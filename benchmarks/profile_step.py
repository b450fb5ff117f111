"""Where the CNN training step's time goes, part by part, in one run.

    python benchmarks/profile_step.py [--calls 50] [--rounds 3]

Each part is its own jitted function on a batch of 128 random images, timed as
the median over rounds of ``calls`` back-to-back calls, and printed as ms per call
and as a share of the whole step (parts overlap and XLA fuses across them
inside the step, so the shares need not add up to 100%). Flax's ``nnx.max_pool``,
whose gradient is select-and-scatter, is timed beside jaxseed's max-pool.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxseed import augment, machine, step, streams
from jaxseed.config import Config
from jaxseed.models import cnn
from jaxseed.objective import Batch, image_spec, to_unit

CONVOLUTION = ("NHWC", "HWIO", "NHWC")
MNIST_TRAIN = 60000  # sets only the optimiser's schedule length, not the timing


def milliseconds(fn, args: tuple, calls: int, rounds: int) -> float:
    """Median over rounds of the mean wall time of ``calls`` calls of jitted ``fn(*args)``."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls * 1000)
    return statistics.median(times)


def convolve(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=CONVOLUTION)


def parts(config: Config, batch_size: int) -> dict[str, tuple]:
    """name -> (jitted function, its arguments)."""
    random = np.random.default_rng(0)
    keys = streams.root_keys({name: 0 for name in streams.STREAMS})
    tx = step.make_optimizer(config, MNIST_TRAIN)
    graphdef, state = step.init_state(cnn.OBJECTIVE, config, image_spec((28, 28, 1), 10), keys, tx)
    index = jnp.arange(batch_size)
    batch = Batch({"x": jnp.asarray(random.integers(0, 256, (batch_size, 28, 28, 1)), jnp.uint8),
                   "y": jnp.asarray(random.integers(0, 10, batch_size), jnp.int32)}, index)
    draws = streams.batch_keys(keys, cnn.OBJECTIVE.streams, 0, index)
    images = to_unit(batch.x)

    def whole_step(config):
        return jax.jit(lambda state: step.train_step(state, batch, keys, 0, objective=cnn.OBJECTIVE, graphdef=graphdef,
                                                     tx=tx, config=config))

    def loss(params):
        return cnn.train_loss(nnx.merge(graphdef, params), batch, config.replace(augment="none"), draws)[0]

    grads = jax.grad(loss)(state.params)
    table = {
        "whole step, no augmentation": (whole_step(config.replace(augment="none")), (state,)),
        "whole step, with augmentation (default)": (whole_step(config.replace(augment="affine")), (state,)),
        "forward pass (loss)": (jax.jit(loss), (state.params,)),
        "forward and backward (gradients)": (jax.jit(jax.grad(loss)), (state.params,)),
        "AdamW update": (jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0])),
                         (grads, state.opt_state, state.params)),
        "augmentation": (jax.jit(lambda x: augment.apply_affine(x, augment.sample_affine(
            draws.augment, config.max_translation, config.max_rotation))), (images,)),
        "dropout, one key per example": (jax.jit(lambda x: nnx.merge(graphdef, state.params).drop(x, draws.dropout)),
                                         (jnp.ones((batch_size, 256)),)),
    }
    for name, (size, channels, features) in {"conv1": (28, 1, 32), "conv2": (14, 32, 64)}.items():
        x = jnp.asarray(random.random((batch_size, size, size, channels)), jnp.float32)
        kernel = jnp.asarray(random.normal(size=(3, 3, channels, features)), jnp.float32)
        cotangent = jnp.ones((batch_size, size, size, features))
        table[f"{name} forward"] = (jax.jit(convolve), (x, kernel))
        table[f"{name} kernel gradient"] = (
            jax.jit(lambda x, k, g: jax.vjp(lambda k: convolve(x, k), k)[1](g)[0]), (x, kernel, cotangent))
        if channels > 1:  # the first layer's input is the images: no gradient is taken
            table[f"{name} input gradient"] = (
                jax.jit(lambda x, k, g: jax.vjp(lambda x: convolve(x, k), x)[1](g)[0]), (x, kernel, cotangent))
        pooled = jax.nn.relu(jnp.asarray(random.normal(size=(batch_size, size, size, features)), jnp.float32))
        half = jnp.ones((batch_size, size // 2, size // 2, features))
        for label, pool in {"jaxseed's": cnn.max_pool_2x2,
                            "Flax's": lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))}.items():
            table[f"{name} max-pool gradient, {label}"] = (
                jax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g)[0]), (pooled, half))
    return table


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = Config()
    machine.require_flags(config)  # the thread pool and XLA flags of every run, before JAX starts
    print(f"backend {jax.default_backend()}, batch {config.batch_size}, median of {args.rounds} rounds "
          f"of {args.calls} calls")
    times = {name: milliseconds(fn, fn_args, args.calls, args.rounds)
             for name, (fn, fn_args) in parts(config, config.batch_size).items()}
    whole = times["whole step, no augmentation"]
    print("| part | ms per call | share of the step without augmentation |\n|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.2f} | {ms / whole:.0%} |")


if __name__ == "__main__":
    main()
