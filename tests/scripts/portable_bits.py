"""Hashes of what --portable training steps and evaluations compute, one line per program.

    python tests/scripts/portable_bits.py export FOLDER    # trace the programs, write them and their inputs
                                                           # to FOLDER, then run them here
    python tests/scripts/portable_bits.py run FOLDER       # compile and run them on this CPU

Equal lines from ``run`` under ``qemu-x86_64 -cpu MODEL`` (with JAXSEED_COMPILATION_CACHE=) and
from ``export`` mean equal bits on both CPUs; the last line is the thread pool in force
(``--cpu-threads``). The programs: a jitted training step of each built-in model (its gradients,
AdamW, augmentation, dropout or latent draws), called twice from the model's initial state, then its
evaluation; and ops a user's objective may add. Tracing is
Python and gives the same program on any CPU; what depends on the CPU is what XLA compiles and
the kernels its libraries pick, so only that runs under emulation (about 20 times slower there;
tracing, initialisation and the eager draws that make the inputs took ~90 s of the check's 306 s).
"""

import argparse
import hashlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxseed import machine, streams
from jaxseed.config import Config

MODELS = ("cnn", "vae")
STEPS = 2


def digest(arrays) -> str:
    return hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in arrays)).hexdigest()[:16]


def export(folder: str, batch_size: int) -> None:
    """Write ``NAME.export`` (a serialized jax.export.Exported) and ``NAME.npz`` (its inputs) for
    each model's step (state, batch, stream keys -> state) and evaluation, and for the ops."""
    import functools

    from flax import nnx  # the models' modules only here: emulated, `run` imports neither Flax nor Optax

    from jaxseed import objective, step
    from jaxseed.objective import Batch, image_spec

    def write(name, function, inputs, save_inputs=True):
        exported = jax.export.export(jax.jit(function))(*inputs)
        with open(os.path.join(folder, f"{name}.export"), "wb") as f:
            f.write(exported.serialize())
        if save_inputs:
            np.savez(os.path.join(folder, f"{name}.npz"), *inputs)

    data_key, label_key = jax.random.split(streams.synthetic_data_key())
    images = jax.random.randint(data_key, (batch_size, 28, 28, 1), 0, 256, jnp.int32).astype(jnp.uint8)
    batch = [images, jax.random.randint(label_key, (batch_size,), 0, 10), jnp.arange(batch_size)]
    for name in MODELS:
        found = objective.resolve(name)
        config = Config(model=name, portable=True, batch_size=batch_size, epochs=1)
        roots = streams.root_keys(streams.resolve_seeds(0, used=found.run_streams))
        names = sorted(roots)
        key_data = jnp.stack([jax.random.key_data(roots[stream]) for stream in names])  # an input, not a constant
        tx = step.make_optimizer(config, 2 * batch_size)
        graphdef, state = step.init_state(found, config, image_spec((28, 28, 1), 10), roots, tx)
        leaves, treedef = jax.tree.flatten(state)
        train = functools.partial(step.train_step, objective=found, graphdef=graphdef, tx=tx, config=config)

        def train_flat(*arrays, treedef=treedef, train=train, names=names):  # state, batch, keys -> state
            *state, images, labels, index, key_data = arrays
            keys = streams.Keys({stream: jax.random.wrap_key_data(data, impl=streams.GENERATOR)
                                 for stream, data in zip(names, key_data)})
            return jax.tree.leaves(train(treedef.unflatten(state), Batch({"x": images, "y": labels}, index), keys,
                                         jnp.int32(0))[0])

        def evaluate_flat(*arrays, treedef=treedef, found=found, graphdef=graphdef, config=config):
            *state, images, labels, index = arrays
            model = nnx.merge(graphdef, treedef.unflatten(state).params)
            return jax.tree.leaves(found.eval_metrics(model, Batch({"x": images, "y": labels}, index), config))

        write(f"{name}-step", train_flat, [*leaves, *batch, key_data])
        write(f"{name}-evaluation", evaluate_flat, [*leaves, *batch], save_inputs=False)  # runs on the step's state
    write("ops", ops, [jax.random.uniform(jax.random.key(0), (4096,), minval=0.01, maxval=100.0),
                       jax.random.normal(jax.random.key(1), (128, 3136)),
                       jax.random.normal(jax.random.key(2), (3136, 256)),
                       jax.random.key_data(jax.random.key(3, impl=streams.GENERATOR))])


def ops(x, a, b, key_data):
    """Ops a user's objective may add: rsqrt (layer and group norms; its fast approximation differed
    between emulated Intel and AMD CPUs without --portable), erf_inv, tanh, a 3136-deep matmul, and
    the truncated normal draw that initialises the models' weights."""
    key = jax.random.wrap_key_data(key_data, impl=streams.GENERATOR)
    return (jax.lax.rsqrt(x), jax.scipy.special.erfinv(x / 101), jnp.tanh(x), a @ b,
            jax.random.truncated_normal(key, -2.0, 2.0, (64, 128)))


def run(folder: str) -> list[str]:
    """Compile each written program on this CPU, run it (the steps STEPS times, each from the
    last one's state), and hash what it computes."""

    def program(name):
        with open(os.path.join(folder, f"{name}.export"), "rb") as f:
            return jax.jit(jax.export.deserialize(bytearray(f.read())).call)

    def inputs(name):
        with np.load(os.path.join(folder, f"{name}.npz")) as arrays:
            # Committed like the programs' outputs, so feeding a step its own state compiles nothing again.
            return [jax.device_put(arrays[f"arr_{i}"], jax.devices()[0]) for i in range(len(arrays.files))]

    lines = []
    for name in MODELS:
        train, evaluate = program(f"{name}-step"), program(f"{name}-evaluation")
        *state, images, labels, index, keys = inputs(f"{name}-step")
        for _ in range(STEPS):
            state = train(*state, images, labels, index, keys)
        lines.append(f"{name} params {digest(state)} eval {digest(evaluate(*state, images, labels, index))}")
    lines.append(f"ops {digest(program('ops')(*inputs('ops')))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("export", "run"))
    parser.add_argument("folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpu-threads", type=int, default=Config.cpu_threads, help="XLA CPU's thread pool")
    args = parser.parse_args()
    machine.require_flags(Config(portable=True, cpu_threads=args.cpu_threads))  # as the CLI does, before JAX starts
    if args.command == "export":
        streams.pinned_generator(export)(args.folder, args.batch_size)
    print("\n".join(run(args.folder)))
    print(f"XLA CPU thread pool {machine.thread_pool()}")


if __name__ == "__main__":
    sys.exit(main())
