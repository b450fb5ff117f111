"""Training throughput of jaxseed's loop against a plain JAX reference and PyTorch, in one run.

    python benchmarks/throughput.py [--data-dir DIR] [--steps 200] [--rounds 3] [--torch-python PATH]

Reference: the same CNN, loss, optimiser and batch size, one ``jax.jit`` step per
Python call, fed numpy batches gathered on the host (no augmentation); once more
with Flax's ``nnx.max_pool`` in place of jaxseed's max-pool, to show what that gives.
jaxseed: data resident on the device, batches gathered inside the jitted call,
steps grouped per call as ``step.execution_plan`` chooses for this backend;
measured with augmentation off (same work as the reference) and on (default).
Evaluation: the test set scored by one ``jax.jit`` call per numpy batch against
the training loop's own evaluation.
PyTorch (not a dependency: ``pip install torch``, here or in the interpreter given as
``--torch-python``): the same CNN in eager mode, no augmentation, timed by
``torch_cnn.py`` in a process of its own (none of JAX's threads or memory in it), as the
bar the field sets on a CPU; skipped, and said so, where torch is not installed.
The CLI: ``python -m jaxseed.train`` with the default config (augmentation on) for 2
epochs of ``--steps`` steps (fewer where the data set is smaller), in its own process;
its training images/s are those of epoch 2 in its ``metrics.jsonl`` (``training_seconds``),
as epoch 1 includes compiling; and the same with ``--portable`` (other XLA flags, so its own
process too).
Each round times the in-process loops in turn, then the PyTorch process, then the CLI
process; each figure is the median over the rounds.
With ``--objective SPEC --data D``, any objective instead (examples/resnet_cifar10.py on
CIFAR-10): its own step jitted alone, called once per numpy batch, against jaxseed's
jitted call and CLI.
First, a fresh ``python -m jaxseed.train`` process is timed to its first training
call (imports, data, compile), twice: with an empty compilation cache, then with the
programs the first run left there; and the peak memory (RSS) of a 1-epoch run taken.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxseed import data, loop, machine, mesh, objective, step, streams
from jaxseed.config import Config
from jaxseed.objective import Batch


def initial_state(config: Config, dataset: data.Dataset, keys: streams.Keys, tx: optax.GradientTransformation):
    """(graphdef, TrainState) of ``config.model`` built for ``dataset`` from the init stream."""
    return step.init_state(objective.resolve(config.model), config, objective.data_spec(dataset, config.data), keys, tx)


def seconds(fn) -> float:
    """Wall time of one call of ``fn`` (which must block)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flax_max_pool_logits(model, images: jax.Array, dropout_keys: jax.Array) -> jax.Array:
    """The CNN's training forward pass with Flax's ``nnx.max_pool`` (whose gradient XLA
    computes by select-and-scatter), as jaxseed ran it before ``models.cnn.max_pool_2x2``."""
    x = nnx.max_pool(nnx.relu(model.conv1(images)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(model.conv2(x)), (2, 2), strides=(2, 2))
    x = nnx.relu(model.dense(x.reshape(x.shape[0], -1)))
    return model.head(model.drop(x, dropout_keys))


def reference(config: Config, dataset: data.Dataset, keys: streams.Keys, steps: int, logits_fn=None):
    """(run, images per run, compile seconds) of a plain one-step-per-call loop on numpy batches;
    ``logits_fn(model, images, dropout_keys)`` replaces the model's own forward pass."""
    tx = step.make_optimizer(config, dataset.num_train)
    graphdef, state = initial_state(config, dataset, keys, tx)

    @jax.jit
    def plain_step(params, opt_state, images, labels, index):
        dropout_keys = streams.batch_keys(keys, ("dropout",), 0, index).dropout

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            logits = (logits_fn(model, images, dropout_keys) if logits_fn
                      else model(images, train=True, dropout_keys=dropout_keys))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    images, labels = dataset.train["x"].astype(np.float32) / 255.0, dataset.train["y"]
    order = np.asarray(streams.epoch_order(keys.shuffle, 0, dataset.num_train))
    batch = config.batch_size
    params, opt_state = state.params, state.opt_state
    start = time.perf_counter()
    plain_step.lower(params, opt_state, images[:batch], labels[:batch], order[:batch]).compile()
    compile_seconds = time.perf_counter() - start

    def run():
        nonlocal params, opt_state
        for i in range(steps):
            index = order[(i * batch) % (len(order) - batch):][:batch]
            params, opt_state, loss = plain_step(params, opt_state, images[index], labels[index], index)
        loss.block_until_ready()

    run()  # warm-up
    return run, steps * batch, compile_seconds


def jaxseed_loop(config: Config, dataset: data.Dataset, keys: streams.Keys, steps: int):
    """(run, images per run, compile seconds, plan) of the training loop's jitted call for
    ``steps`` steps of one run (one replica, as ``jaxseed.train`` runs it)."""
    tx = step.make_optimizer(config, dataset.num_train)
    graphdef, state = initial_state(config, dataset, keys, tx)
    state, replica_keys = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], (state, keys))
    loop, per_call = step.execution_plan(config, jax.default_backend(), steps)
    runner = step.make_run_steps(objective.resolve(config.model), config, graphdef, tx, 1, per_call, loop)
    permutation = streams.epoch_order(keys.shuffle, 0, dataset.num_train)[None]
    args = (jax.device_put(dataset.train), permutation, replica_keys, 0)
    start = time.perf_counter()
    runner.lower(state, *args, 0).compile()
    compile_seconds = time.perf_counter() - start
    per_epoch = step.steps_per_epoch(config, dataset.num_train)

    def run():
        nonlocal state
        for first in range(0, steps - per_call + 1, per_call):
            state, metrics, _ = runner(state, *args, first % (per_epoch - per_call + 1))
        jax.block_until_ready(metrics)

    run()  # warm-up
    return run, (steps // per_call) * per_call * config.batch_size, compile_seconds, (loop, per_call)


def evaluations(config: Config, dataset: data.Dataset, keys: streams.Keys):
    """(plain run, jaxseed run, test images per run): scoring the test set (metric sums and
    class probabilities) with one ``jax.jit`` call per numpy batch, against the training
    loop's evaluation (test set resident on the device, fixed-size chunks)."""
    tx = step.make_optimizer(config, dataset.num_train)
    graphdef, state = initial_state(config, dataset, keys, tx)
    found = objective.resolve(config.model)
    num, batch = dataset.num_test, config.eval_batch_size

    @jax.jit
    def plain_batch(params, arrays, index):
        metrics, probabilities = found.eval_metrics(nnx.merge(graphdef, params), Batch(arrays, index), config)
        return {name: value.sum() for name, value in metrics.items()}, probabilities

    def plain():
        outputs = [plain_batch(state.params, {name: array[start:start + batch] for name, array in dataset.test.items()},
                               np.arange(start, min(start + batch, num), dtype=np.int32))
                   for start in range(0, num, batch)]
        return [jax.device_get(output) for output in outputs]

    evaluate = loop.make_evaluate(found, config, graphdef, dataset, 1, mesh.plan(1, config.batch_size))
    replica_params = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], state.params)

    def jaxseed():
        return evaluate(replica_params)

    plain(), jaxseed()  # warm-up: compile
    return plain, jaxseed, num


def startup(data_flags: list[str], compilation_cache: str) -> tuple[float, float]:
    """(seconds from the command to the end of its first jitted training call, peak RSS in MB
    of all runs so far) of ``python -m jaxseed.train`` with the default config for one epoch,
    in a fresh process using ``compilation_cache``.

    The first call's end is seen as the first line of trace.jsonl (``--trace``).
    """
    with tempfile.TemporaryDirectory(prefix="jaxseed-startup-") as workdir:
        trace = os.path.join(workdir, "trace.jsonl")
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "jaxseed.train", "--epochs", "1", "--trace", "--quiet",
                                    "--workdir", workdir, *data_flags], stdout=subprocess.DEVNULL,
                                   env={**os.environ, "JAXSEED_COMPILATION_CACHE": compilation_cache})
        while not (os.path.exists(trace) and os.path.getsize(trace) > 0):
            if process.poll() is not None:
                raise RuntimeError(f"the run ended (exit {process.returncode}) before its first training call")
            time.sleep(0.01)
        first_call = time.perf_counter() - start
        if process.wait():
            raise RuntimeError(f"the run failed (exit {process.returncode})")
    return first_call, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


TORCH_CNN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_cnn.py")
CLI_EPOCHS = 2  # the first compiles; the last is timed


def has_torch(python: str) -> bool:
    """Whether ``python`` can import torch (asked in a subprocess: it may be another interpreter)."""
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([python, "-c", check]).returncode == 0


def torch_speed(python: str, arrays: str, config: Config, steps: int) -> dict:
    """The JSON line of ``torch_cnn.py`` (images per second, threads, ...) for ``steps`` steps of
    the training set in ``arrays``, run by ``python`` in a process of its own."""
    result = subprocess.run([python, TORCH_CNN, "--arrays", arrays, "--steps", str(steps),
                             "--batch-size", str(config.batch_size), "--learning-rate", str(config.learning_rate),
                             "--weight-decay", str(config.weight_decay),
                             "--dropout-rate", str(config.settings.dropout_rate)],
                            stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def cli_speed(data_flags: list[str], config: Config, steps: int, num_train: int, env: dict | None = None) -> float:
    """Training images per second of the last of CLI_EPOCHS epochs of ``python -m jaxseed.train``
    (default config, ``steps`` steps an epoch or the whole training set), from its metrics.jsonl;
    ``env``: variables set for that process."""
    train_limit = min(steps * config.batch_size, num_train)
    with tempfile.TemporaryDirectory(prefix="jaxseed-cli-") as workdir:
        subprocess.run([sys.executable, "-m", "jaxseed.train", "--epochs", str(CLI_EPOCHS), "--quiet",
                        "--train-limit", str(train_limit), "--workdir", workdir, *data_flags],
                       stdout=subprocess.DEVNULL, check=True, env={**os.environ, **(env or {})})
        with open(os.path.join(workdir, "metrics.jsonl")) as lines:
            *_, before, last = (json.loads(line) for line in lines)
    return (last["step"] - before["step"]) * config.batch_size / last["training_seconds"]


def objective_speeds(args) -> None:
    """``--objective``: a user's objective (or a built-in model) on ``--data``, its training step
    jitted alone and called once per numpy batch (the plain loop), against jaxseed's jitted call
    and its CLI; interleaved rounds, medians."""
    config = Config(model=args.objective, data=args.data, data_dir=args.data_dir, augment=args.augment)
    found = objective.resolve(config.model)
    dataset = data.load(config.data, config.data_dir)
    keys = streams.root_keys(streams.resolve_seeds(0, None, found.run_streams))
    print(f"objective {found.name} on {config.data}: {dataset.num_train} training examples "
          f"{', '.join(f'{name} {array.dtype}{list(array.shape[1:])}' for name, array in dataset.train.items())}, "
          f"augment={config.augment}, batch {config.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"backend {jax.default_backend()}")
    tx = step.make_optimizer(config, dataset.num_train)
    graphdef, state = initial_state(config, dataset, keys, tx)
    plain_step = jax.jit(functools.partial(step.train_step, objective=found, graphdef=graphdef, tx=tx, config=config))
    order = np.asarray(streams.epoch_order(keys.shuffle, 0, dataset.num_train))
    batch = config.batch_size

    def plain():
        nonlocal state
        for i in range(args.steps):
            index = order[(i * batch) % (len(order) - batch):][:batch]
            batch_arrays = {name: array[index] for name, array in dataset.train.items()}
            state, metrics = plain_step(state, Batch(batch_arrays, index), keys, 0)
        jax.block_until_ready(metrics)

    plain()  # warm-up: compile
    run, examples, compile_seconds, plan = jaxseed_loop(config, dataset, keys, args.steps)
    flags = ["--objective", args.objective, "--data", args.data, "--augment", args.augment,
             *(["--data-dir", args.data_dir] if args.data_dir else [])]
    times = {"plain": [], "jaxseed": []}
    cli_speeds = []
    for _ in range(args.rounds):
        times["plain"].append(seconds(plain))
        times["jaxseed"].append(seconds(run))
        cli_speeds.append(cli_speed(flags, config, args.steps, dataset.num_train))
    plain_speed = args.steps * batch / statistics.median(times["plain"])
    speed = examples / statistics.median(times["jaxseed"])
    print(f"plain loop (its step jitted alone, numpy batches): {plain_speed:8.0f} examples/s")
    print(f"jaxseed {plan[0]} x{plan[1]} (data on device):          {speed:8.0f} examples/s, compile "
          f"{compile_seconds:.1f}s, ratio {speed / plain_speed:.2f}x")
    speed = statistics.median(cli_speeds)
    print(f"jaxseed CLI (metrics.jsonl, epoch {CLI_EPOCHS} of {CLI_EPOCHS}):            {speed:8.0f} examples/s, "
          f"ratio {speed / plain_speed:.2f}x")


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="raw MNIST IDX folder (default: the synthetic set)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each loop, interleaved")
    parser.add_argument("--torch-python", default=sys.executable,
                        help="Python interpreter that runs the PyTorch comparison (default: this one)")
    parser.add_argument("--objective", help="time this objective (a built-in model, package.module:NAME or "
                                            "path.py:NAME) on --data against a plain loop of its own step, instead")
    parser.add_argument("--data", default="synthetic", help="with --objective: the data set (default synthetic)")
    parser.add_argument("--augment", default="affine", help="with --objective: the augmentation (default affine)")
    args = parser.parse_args(argv)
    machine.require_flags(Config())  # the thread pool and XLA flags of every run, before JAX starts
    if args.objective:
        return objective_speeds(args)
    dataset = data.load("mnist", args.data_dir) if args.data_dir else data.load("synthetic")
    keys = streams.root_keys({name: 0 for name in streams.STREAMS})
    config = Config()
    cpu = machine.cpu()
    print(f"backend {jax.default_backend()}, devices {jax.devices()}, batch {config.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, {dataset.num_train} training images; CPU {cpu['model']} "
          f"({' '.join(cpu['vector_extensions'])}), {cpu['cores']} usable cores, XLA_FLAGS {machine.xla_flags()}")
    data_flags = ["--data-dir", args.data_dir] if args.data_dir else ["--data", "synthetic"]
    with tempfile.TemporaryDirectory(prefix="jaxseed-xla-") as cache:
        cold, _ = startup(data_flags, cache)  # compiles, and fills the cache
        warm = [startup(data_flags, cache) for _ in range(args.rounds)]  # as every later run of this shape
    warm, peak_rss = statistics.median(seconds for seconds, _ in warm), warm[-1][1]
    print(f"start-up of python -m jaxseed.train, to the end of its first jitted training call: {warm:.1f}s "
          f"(goal 5s; {cold:.1f}s the first time, compiling), peak RSS of a 1-epoch run {peak_rss:.0f} MB "
          "(goal 2048 MB)")
    ref_run, ref_images, ref_compile = reference(config, dataset, keys, args.steps)
    flax_pool_run, *_ = reference(config, dataset, keys, args.steps, flax_max_pool_logits)
    loops = {augment: jaxseed_loop(config.replace(augment=augment), dataset, keys, args.steps)
             for augment in ("none", "affine")}
    torch_python = args.torch_python if has_torch(args.torch_python) else None
    plain_evaluation, jaxseed_evaluation, test_images = evaluations(config, dataset, keys)
    times = {name: [] for name in ("reference", "flax pool", *loops, "plain evaluation", "evaluation")}
    torch_runs, cli_speeds, portable_speeds = [], [], []
    with tempfile.TemporaryDirectory(prefix="jaxseed-torch-") as folder:
        arrays = os.path.join(folder, "train.npz")
        if torch_python:
            np.savez(arrays, images=dataset.train["x"], labels=dataset.train["y"])
        for _ in range(args.rounds):
            times["flax pool"].append(seconds(flax_pool_run))
            times["plain evaluation"].append(seconds(plain_evaluation))
            times["evaluation"].append(seconds(jaxseed_evaluation))
            times["reference"].append(seconds(ref_run))
            for augment, (run, *_) in loops.items():
                times[augment].append(seconds(run))
            # The processes run while this one idles: each has the cores to itself.
            if torch_python:
                torch_runs.append(torch_speed(torch_python, arrays, config, args.steps))
            cli_speeds.append(cli_speed(data_flags, config, args.steps, dataset.num_train))
            portable_speeds.append(cli_speed([*data_flags, "--portable"], config, args.steps, dataset.num_train))
    ref_speed = ref_images / statistics.median(times["reference"])
    print(f"reference (jit step per call, numpy batches): {ref_speed:8.0f} images/s, compile {ref_compile:.1f}s")
    speed = ref_images / statistics.median(times["flax pool"])
    print(f"the same with Flax's nnx.max_pool:            {speed:8.0f} images/s, ratio {speed / ref_speed:.2f}x")
    torch_median = statistics.median(run["images_per_second"] for run in torch_runs) if torch_runs else None
    if torch_median:
        print(f"PyTorch eager, own process, no augmentation:  {torch_median:8.0f} images/s, ratio "
              f"{torch_median / ref_speed:.2f}x ({torch_runs[0]['threads']} threads, torch {torch_runs[0]['torch']})")
    else:
        print(f"PyTorch eager: torch is not installed for {args.torch_python} (pip install torch, or "
              "--torch-python PATH); not timed")

    def versus_torch(speed: float) -> str:
        return f", {speed / torch_median:.2f}x PyTorch" if torch_median else ""

    loop_speeds = {}
    for augment, (_, images, compile_seconds, plan) in loops.items():
        speed = loop_speeds[augment] = images / statistics.median(times[augment])
        print(f"jaxseed {plan[0]} x{plan[1]}, augment={augment:6s}:     {speed:8.0f} images/s, "
              f"compile {compile_seconds:.1f}s, ratio {speed / ref_speed:.2f}x{versus_torch(speed)}")
    speed = statistics.median(cli_speeds)
    print(f"jaxseed CLI training, augment={config.augment} (metrics.jsonl, epoch {CLI_EPOCHS} of {CLI_EPOCHS}): "
          f"{speed:.0f} images/s, ratio {speed / ref_speed:.2f}x, {speed / loop_speeds[config.augment]:.2f}x the "
          f"jitted call{versus_torch(speed)}")
    portable = statistics.median(portable_speeds)
    print(f"jaxseed CLI training --portable (same bits on other x86 CPUs): {portable:.0f} images/s, "
          f"{portable / speed:.2f}x the CLI without it")
    plain_speed, speed = (test_images / statistics.median(times[name]) for name in ("plain evaluation", "evaluation"))
    print(f"evaluation, jit call per numpy batch:        {plain_speed:8.0f} images/s")
    print(f"evaluation, jaxseed (test set on device):    {speed:8.0f} images/s, ratio {speed / plain_speed:.2f}x")


if __name__ == "__main__":
    main()
