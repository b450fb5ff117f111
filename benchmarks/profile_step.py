"""Where the CNN training step's time goes, part by part and op by op, in one run.

    python benchmarks/profile_step.py [--calls 50] [--rounds 3]

First, each part is its own jitted function on a batch of 128 random images, timed as
the median over rounds of ``calls`` back-to-back calls, and printed as ms per call
and as a share of the whole step (parts overlap and XLA fuses across them
inside the step, so the shares need not add up to 100%). Flax's ``nnx.max_pool``,
whose gradient is select-and-scatter, is timed beside jaxseed's max-pool. The step is
also timed as the training loop runs it (``throughput.jaxseed_loop``: several steps
unrolled in one jitted call), per step.

Then the whole step, compiled once, runs ``calls`` times under ``jax.profiler.trace``:
every op XLA CPU executed (its thunks, named as in the compiled HLO) with its wall
time per step, and the time no op ran (dispatch, waiting). Where two ops run at
once on the pool's threads, each gets half of that time; an op that completes after
its thunk returns (XLA's own convolutions run so, on the pool) gets the time until
its completion in which no other op runs. So the rows add up to the step's wall
time exactly.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from throughput import jaxseed_loop, seconds

from jaxseed import augment, data, machine, step, streams
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


def loop_milliseconds(config: Config, steps: int, rounds: int) -> tuple[float, int]:
    """(median over rounds of the wall time per step, steps per call) of ``steps`` steps of the training
    loop's own jitted call, as ``throughput.jaxseed_loop`` builds and runs it, on the synthetic set."""
    keys = streams.root_keys({name: 0 for name in streams.STREAMS})
    run, images, _, (_, per_call) = jaxseed_loop(config, data.load("synthetic"), keys, steps)
    ms = statistics.median(seconds(run) for _ in range(rounds)) / (images / config.batch_size) * 1000
    return ms, per_call


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


def op_profile(fn, args: tuple, calls: int) -> tuple[float, dict[str, float]]:
    """(wall ms per call, {op: ms per call}) of ``calls`` traced calls of compiled ``fn(*args)``,
    the ops' shares summing to the wall time ("no op running" is the rest)."""
    jax.block_until_ready(fn(*args))  # warm, outside the trace
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            start = time.perf_counter_ns()
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
            wall = time.perf_counter_ns() - start
        trace = jax.profiler.ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
    ends, lines = {}, []  # an asynchronous op's completion: an "end: NAME" event, consumer id = the op's producer id
    for plane in trace.planes:
        for line in plane.lines:
            ops = []  # (start, end, op, producer id)
            for event in line.events:
                stats = dict(event.stats)
                if event.name.startswith("end: "):
                    ends[stats.get("_c")] = event.start_ns
                elif "hlo_op" in stats:
                    ops.append((event.start_ns, event.start_ns + event.duration_ns, event.name, stats.get("_p")))
            lines.append(ops)
    segments, pending = [], []  # (start, end, op); pending: ops whose work runs on after their thunk returns
    for ops in lines:
        # each thread's innermost op (a while or call thunk holds others)
        segments += innermost(sorted((op[:3] for op in ops), key=lambda op: (op[0], -op[1])))
        pending += [(start, ends[producer], name) for start, end, name, producer in ops if ends.get(producer, 0) > end]
    share = collections.Counter()
    # A sweep over the trace: each stretch between two edges goes, in equal parts, to the ops running in it,
    # else to the asynchronous ops started and not yet complete (Eigen's convolutions: XLA's thunk returns
    # at once, and the pool's threads do the work unseen by the trace), else to no op.
    edges = sorted(edge for kind, spans in enumerate((segments, pending)) for start, end, op in spans
                   for edge in ((start, 1, op, kind), (end, -1, op, kind)))
    running, at = (collections.Counter(), collections.Counter()), 0
    for time_ns, change, op, kind in edges:
        owners = running[0] or running[1]
        if owners and time_ns > at:
            for name in owners:
                share[name] += (time_ns - at) / len(owners)
        at = time_ns
        running[kind][op] += change
        if not running[kind][op]:
            del running[kind][op]
    per_call = {op: ns / calls / 1e6 for op, ns in share.items()}
    per_call["no op running (dispatch, waiting)"] = wall / calls / 1e6 - sum(per_call.values())
    return wall / calls / 1e6, per_call


def innermost(ops: list[tuple]) -> list[tuple]:
    """One thread's ops (start, end, name), sorted by start, as non-overlapping pieces of whichever is innermost."""
    pieces, stack = [], []  # stack: (end, name) of the ops that contain the current time

    def close_until(time_ns):
        nonlocal at
        while stack and stack[-1][0] <= time_ns:
            end, name = stack.pop()
            pieces.append((at, end, name))
            at = end
        if stack and time_ns > at:
            pieces.append((at, time_ns, stack[-1][1]))
        at = max(at, time_ns)

    at = 0
    for start, end, name in ops:
        close_until(start)
        stack.append((end, name))
    close_until(float("inf"))
    return [piece for piece in pieces if piece[1] > piece[0]]


def describe_ops(compiled_hlo: str, params) -> dict[str, str]:
    """op name -> what it computes: the convolutions, dots and reductions inside it and the
    shape it makes, with the parameter whose shape that is (a gradient) where one is."""
    computations, instructions, current = {}, {}, None
    for line in compiled_hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        op = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$", line)
        if op and current is not None:
            shape = re.sub(r"\{[^}]*\}", "", op.group(2))
            calls = re.findall(r"(?:calls|body|to_apply|condition)=%?([\w.\-]+)", op.group(4))
            current.append((op.group(3), calls))
            instructions[op.group(1)] = (shape, op.group(3), calls)
    heavy = ("convolution", "dot", "reduce-window", "select-and-scatter", "reduce", "scatter", "gather", "transpose", "sort")

    def kinds(names, seen=()):
        found = []
        for name in names:
            if name in seen:
                continue
            for opcode, calls in computations.get(name, []):
                if opcode in heavy and opcode not in found:
                    found.append(opcode)
                found += [kind for kind in kinds(calls, (*seen, name)) if kind not in found]
        return found

    by_shape = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        by_shape.setdefault(f"f32{list(leaf.shape)}".replace(" ", ""), jax.tree_util.keystr(path))
    described = {}
    for name, (shape, opcode, calls) in instructions.items():
        inside = kinds(calls) or [opcode]
        param = by_shape.get(shape)
        described[name] = f"{', '.join(inside)} → {shape}" + (f" (the shape of {param})" if param else "")
    return described


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-ms", type=float, default=0.3, help="ops taking less per step share one row")
    args = parser.parse_args(argv)
    config = Config()
    machine.require_flags(config)  # the thread pool and XLA flags of every run, before JAX starts
    print(f"backend {jax.default_backend()}, batch {config.batch_size}, median of {args.rounds} rounds "
          f"of {args.calls} calls")
    table = parts(config, config.batch_size)
    times = {name: milliseconds(fn, fn_args, args.calls, args.rounds) for name, (fn, fn_args) in table.items()}
    whole = times["whole step, no augmentation"]
    print("| part | ms per call | share of the step without augmentation |\n|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.2f} | {ms / whole:.0%} |")
    forward = times["forward pass (loss)"]
    print(f"\nthe step without augmentation is {whole / forward:.1f}× its forward pass")
    for augment in ("none", "affine"):
        ms, per_call = loop_milliseconds(config.replace(augment=augment), max(10, args.calls), args.rounds)
        print(f"as the training loop runs it ({per_call} steps per jitted call), augment={augment}: {ms:.2f} ms "
              f"per step, {ms / forward:.1f}× the forward pass above (timed alone, one per call)")
    for name in ("whole step, no augmentation", "whole step, with augmentation (default)"):
        fn, fn_args = table[name]
        compiled = fn.lower(*fn_args).compile()  # one executable: the ops traced are the ops described
        wall, ops = op_profile(compiled, fn_args, args.calls)
        described = describe_ops(compiled.as_text(), fn_args[0].params)
        print(f"\n{name}, op by op under jax.profiler.trace: {wall:.2f} ms per step (the rows add up to it; "
              f"ops under {args.min_ms} ms are summed in the last row)\n| op | what it computes | ms per step | share |\n|---|---|---|---|")
        small = 0.0
        for op, ms in sorted(ops.items(), key=lambda item: -item[1]):
            if ms < args.min_ms:
                small += ms
                continue
            print(f"| {op} | {described.get(op, '')} | {ms:.2f} | {ms / wall:.0%} |")
        print(f"| the other ops | | {small:.2f} | {small / wall:.0%} |")


if __name__ == "__main__":
    main()
