"""Hashes of what a --portable training step and evaluation compute, one line per model.

Run natively and under ``qemu-x86_64 -cpu MODEL`` (with JAXSEED_COMPILATION_CACHE=):
equal lines mean equal bits on both CPUs. Two jitted steps of each built-in model
(its gradients, AdamW, augmentation, dropout or latent draws) from its ``init``
stream, on images drawn from a fixed key, then its evaluation metrics; and a few ops the
models do not use.

    python tests/scripts/portable_bits.py [--batch-size B]
"""

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseed import machine, manifest, objective, step, streams
from jaxseed.config import Config
from jaxseed.objective import Batch, DataSpec


def bits(name: str, batch_size: int) -> str:
    found = objective.resolve(name)
    config = Config(model=name, portable=True, batch_size=batch_size, epochs=1)
    spec = DataSpec((28, 28, 1), 10)
    data_key, label_key = jax.random.split(streams.synthetic_data_key())
    images = jax.random.randint(data_key, (batch_size, 28, 28, 1), 0, 256, jnp.int32).astype(jnp.uint8)
    batch = Batch(images, jax.random.randint(label_key, (batch_size,), 0, 10), jnp.arange(batch_size))
    roots = streams.root_keys(streams.resolve_seeds(0, used=found.run_streams))
    tx = step.make_optimizer(config, 2 * batch_size)
    graphdef, state = step.init_state(found, config, spec, roots, tx)
    train = jax.jit(functools.partial(step.train_step, objective=found, graphdef=graphdef, tx=tx, config=config))
    for _ in range(2):
        state, _ = train(state, batch, roots, jnp.int32(0))
    metrics, outputs = jax.jit(lambda params: found.eval_metrics(
        nnx.merge(graphdef, params), batch, config))(state.params)
    return f"{name} params {manifest.tree_hash(state.params)[:16]} eval {manifest.tree_hash((metrics, outputs))[:16]}"


def op_bits() -> str:
    """Ops a user's objective may add: rsqrt (layer and group norms; its fast approximation differed
    between emulated Intel and AMD CPUs without --portable), erf_inv, tanh, and a 3136-deep matmul."""
    x = jax.random.uniform(jax.random.key(0), (4096,), minval=0.01, maxval=100.0)
    a, b = jax.random.normal(jax.random.key(1), (128, 3136)), jax.random.normal(jax.random.key(2), (3136, 256))
    ops = jax.jit(lambda x, a, b: (jax.lax.rsqrt(x), jax.scipy.special.erfinv(x / 101), jnp.tanh(x), a @ b))
    return f"ops {manifest.tree_hash(ops(x, a, b))[:16]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    machine.require_flags(Config(portable=True))  # as the CLI does, before JAX starts
    for name in ("cnn", "vae"):
        print(streams.pinned_generator(bits)(name, args.batch_size), flush=True)
    print(op_bits())


if __name__ == "__main__":
    sys.exit(main())
