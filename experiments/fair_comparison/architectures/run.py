"""Claim 4: two architectures are trained under the same randomness only when each layer's
initial weights come from its name.

A: an MLP (784 -> 128 -> 10); B: the same with one residual layer (128 -> 128) inserted between
its two. Both are built with Flax NNX and trained with jaxseed's streams (order from
``shuffle``, each example's dropout mask from ``dropout``) on the same K seeds, two ways:
  * by name: each layer from ``jaxseed.layer_rngs(init, NAME)``: the layers A and B share
    (``hidden``, ``out``) start bit for bit alike;
  * by order: one ``nnx.Rngs(init)`` for the whole model, as ``setup_seed(42)`` does in
    PyTorch: each layer takes the next draw, so B's inserted layer moves ``out``'s weights.
For each way, the spread of the paired difference B - A over the seeds (its std with a chi-square
interval, the correlation of A and B) and the seeds a paired comparison needs to tell B from A.

    python experiments/fair_comparison/architectures/run.py [--seeds K] [--data-dir DIR] [--tiny] [--out DIR]
        # writes README.md here
"""

import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import common  # noqa: E402
from common import Verdict, judge, small_config  # noqa: E402

import jaxseed  # noqa: E402
from jaxseed import cli, data  # noqa: E402
from jaxseed.stats import paired_comparison, seeds_for_width, std_interval  # noqa: E402


SEEDS, TINY_SEEDS = 40, 4
HIDDEN, DROP, LEARNING_RATE = 128, 0.25, 1e-3
KEYINGS = ("name", "order")
METRICS = ("test_loss", "test_accuracy")


def build(init_key: jax.Array, keying: str, extra: bool, pixels: int, classes: int) -> dict:
    """The model's initial parameters, layer name -> {kernel, bias}, its layers built in order."""
    from flax import nnx

    shared = nnx.Rngs(params=init_key)  # by order: each layer takes the next draw of one counter
    rngs = (lambda name: jaxseed.layer_rngs(init_key, name)) if keying == "name" else (lambda name: shared)
    shapes = [("hidden", pixels, HIDDEN), *([("extra", HIDDEN, HIDDEN)] if extra else []), ("out", HIDDEN, classes)]
    layers = {name: nnx.Linear(fan_in, fan_out, rngs=rngs(name)) for name, fan_in, fan_out in shapes}
    return {name: {"kernel": layer.kernel[...], "bias": layer.bias[...]} for name, layer in layers.items()}


def logits(params, x, keep):
    hidden = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    if "extra" in params:  # B's inserted residual layer
        hidden = hidden + jax.nn.relu(hidden @ params["extra"]["kernel"] + params["extra"]["bias"])
    return (hidden * keep / (1 - DROP)) @ params["out"]["kernel"] + params["out"]["bias"]


optimizer = optax.adam(LEARNING_RATE)


@jax.jit
def step(params, opt_state, x, y, keys):
    def loss(params):
        keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1 - DROP, (HIDDEN,)))(keys)  # a mask per example
        return optax.softmax_cross_entropy_with_integer_labels(logits(params, x, keep), y).mean()

    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state


@jax.jit
def evaluate(params, x, y):
    out = logits(params, x, jnp.ones(HIDDEN))
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), (out.argmax(-1) == y).mean()


def train(seeds: jaxseed.Seeds, keying: str, extra: bool, arrays, epochs: int, batch: int) -> tuple[dict, dict]:
    """(initial parameters, final test metrics) of one run."""
    x, y, x_test, y_test = arrays
    initial = build(seeds.key("init"), keying, extra, x.shape[1], int(y.max()) + 1)
    params, opt_state = initial, optimizer.init(initial)
    for epoch in range(epochs):
        order = jaxseed.epoch_order(seeds.key("shuffle"), epoch, len(x))
        for start in range(0, len(x) - batch + 1, batch):
            index = order[start:start + batch]
            params, opt_state = step(params, opt_state, x[index], y[index],
                                     jaxseed.example_keys(seeds.key("dropout"), epoch, index))
    loss, accuracy = evaluate(params, x_test, y_test)
    return initial, {"test_loss": float(loss), "test_accuracy": float(accuracy)}


class Result(NamedTuple):
    seeds: int
    sizes: dict  # train and test examples, epochs, batch
    alike: dict[str, dict[str, bool]]  # keying -> shared layer -> A's and B's initial weights bit for bit equal
    finals: dict[str, dict[str, list[dict]]]  # keying -> variant -> final metrics per seed
    compared: dict[str, dict[str, dict]]  # keying -> metric -> paired_comparison's result
    verdict: Verdict


def measure(args) -> Result:
    common.start_jax()
    config = small_config(args)
    k = args.seeds or (TINY_SEEDS if args.tiny else SEEDS)
    dataset = data.load(config.data, config.data_dir, config.train_limit)
    flat = [jnp.asarray(images.reshape(len(images), -1) / 255.0, jnp.float32)
            for images in (dataset.train["x"], dataset.test["x"])]
    arrays = (flat[0], jnp.asarray(dataset.train["y"]), flat[1], jnp.asarray(dataset.test["y"]))
    alike, finals = {}, {}
    for keying in KEYINGS:
        finals[keying], initial = {"A": [], "B": []}, {}
        for seed in range(k):
            for variant, extra in (("A", False), ("B", True)):
                start, final = train(jaxseed.Seeds(seed), keying, extra, arrays, config.epochs, config.batch_size)
                finals[keying][variant].append(final)
                initial.setdefault(variant, start)  # seed 0's
        alike[keying] = {layer: all(bool((initial["A"][layer][p] == initial["B"][layer][p]).all())
                                    for p in ("kernel", "bias")) for layer in ("hidden", "out")}
    compared = {keying: {metric: paired_comparison([r[metric] for r in finals[keying]["A"]],
                                                 [r[metric] for r in finals[keying]["B"]]) for metric in METRICS}
                for keying in KEYINGS}
    sizes = {"train": dataset.num_train, "test": dataset.num_test, "epochs": config.epochs,
             "batch": config.batch_size}
    return Result(k, sizes, alike, finals, compared, judge_claim(alike, compared))


def judge_claim(alike: dict, compared: dict) -> Verdict:
    """Held when the shared layers start alike by name, ``out`` differs by order, and for every
    metric the paired difference spreads less by name than by order: the std intervals disjoint."""
    checks = [(all(alike["name"].values()), "by name, `hidden` and `out` start bit for bit alike in A and B"),
              (not alike["order"]["out"], "by order, B's inserted layer moves `out`'s initial weights")]
    for metric in METRICS:
        name, order = (compared[keying][metric]["paired"] for keying in KEYINGS)
        checks.append((name["sd_ci"][1] < order["sd_ci"][0],
                       f"{metric}: std of B - A {name['sd']:.5f} [{name['sd_ci'][0]:.5f}, {name['sd_ci'][1]:.5f}] by "
                       f"name vs {order['sd']:.5f} [{order['sd_ci'][0]:.5f}, {order['sd_ci'][1]:.5f}] by order"))
    return judge("keyed by name, the layers A and B share start alike, and the paired difference B - A spreads less "
                 "than keyed by order (95% intervals of the std disjoint)", checks)


def seeds_to_match(compared: dict, metric: str) -> float:
    """Seeds per variant the order-keyed comparison needs for the name-keyed paired interval's width."""
    name, order = (compared[keying][metric]["paired"] for keying in KEYINGS)
    return seeds_for_width((name["mean_ci"][1] - name["mean_ci"][0]) / 2, order["sd"], 1.0)


def report(result: Result) -> list[str]:
    k, sizes = result.seeds, result.sizes
    lines = ["# Fair comparison of two architectures", "",
             f"A: MLP 784 -> {HIDDEN} -> 10; B: the same with a residual {HIDDEN} -> {HIDDEN} layer inserted. Flax "
             f"NNX, trained with jaxseed's streams on the first {sizes['train']} MNIST images in batches of "
             f"{sizes['batch']} "
             f"for {sizes['epochs']} epoch{'s' * (sizes['epochs'] != 1)}, dropout {DROP}, Adam {LEARNING_RATE}; tested "
             f"on {sizes['test']} images; K = {k} seeds, the same for A and B.", "",
             "| init keyed by | `hidden` starts alike in A and B | `out` starts alike |", "|---|---|---|",
             *(f"| {keying} | {'yes' if found['hidden'] else 'no'} | {'yes' if found['out'] else 'no'} |"
               for keying, found in result.alike.items()), "",
             "| init keyed by | metric | mean of B - A [95% t CI] | std of B - A [95% χ² CI] | r of A and B "
             "| seeds to tell B from A, paired |", "|---|---|---|---|---|---|"]
    for keying, metrics in result.compared.items():
        for metric, found in metrics.items():
            paired = found["paired"]
            lines.append(f"| {keying} | {metric} | {paired['mean']:+.5f} [{paired['mean_ci'][0]:+.5f}, "
                         f"{paired['mean_ci'][1]:+.5f}] | {paired['sd']:.5f} [{paired['sd_ci'][0]:.5f}, "
                         f"{paired['sd_ci'][1]:.5f}] | {found['correlation']:+.2f} | "
                         f"{paired['seeds_to_exclude_zero']} |")
    low, high = std_interval(1.0, k - 1)
    matched = [f"{metric}: K = {seeds_to_match(result.compared, metric)} seeds keyed by order for the width keyed "
               f"by name at K = {k}" for metric in METRICS]
    return lines + [
        "", "By order, one `nnx.Rngs` counts its draws: `hidden`, built first, takes the same draw in both models, "
        "but B's inserted layer takes the draw A's `out` takes, and B's `out` the next. So B starts from other "
        "weights than A in a layer both have, and the comparison of A and B mixes the architecture with an "
        "initialisation drawn anew. By name, each layer's key is `named_key(init, NAME)`: the same in both. "
        "The seeds the two ways need for the same precision of the mean difference: " + "; ".join(matched) + ".", "",
        result.verdict.conclusion, "",
        f"Each std is itself uncertain: at K = {k} its 95% interval is [{low:.2f}, {high:.2f}] times the estimate, "
        "so a std by name below the one by order counts only where their intervals do not overlap. `seeds to tell "
        "B from A` is the fewest seeds for the paired 95% t interval of the mean difference to exclude zero, if the "
        "observed mean and spread held (`inf`: more than a million).", ""]


def experiment(args) -> Result:
    result = measure(args)
    common.write_result(args.out, report(result))
    return result


def parser():
    found = common.parser(__file__, __doc__)
    found.add_argument("--seeds", type=cli.int_at_least(2), metavar="K",
                       help=f"seeds per variant and keying, at least 2 (default: {SEEDS}; --tiny: {TINY_SEEDS})")
    return found


def main(argv=None) -> int:
    return common.main(parser(), experiment, argv)


if __name__ == "__main__":
    sys.exit(main())
