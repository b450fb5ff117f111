"""Training: determinism, per-stream effects end to end, loop strategies, key reuse, compilation."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from conftest import PROJECT_ROOT
from jaxseed import data, loop, objectives, step, streams
from jaxseed.config import Config
from jaxseed.objectives import Batch

SEEDS = {name: 42 for name in streams.STREAMS}


def run(config, seeds, workdir):
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(config, seeds, str(workdir), progress=False)


def test_same_seed_twice_gives_identical_params(tiny_config, tmp_path):
    first = run(tiny_config, SEEDS, tmp_path / "a")
    second = run(tiny_config, SEEDS, tmp_path / "b")
    assert first["param_hash"] == second["param_hash"]
    assert first["init_param_hash"] != first["param_hash"]  # it did train
    assert np.isfinite(first["final"]["train_loss"])


@pytest.mark.parametrize("varied", ["init", "shuffle", "dropout", "augment"])
def test_varying_one_stream_end_to_end(tiny_config, tmp_path, varied):
    """Fingerprints of the other streams stay, its own and the trained params change."""
    base = run(tiny_config, SEEDS, tmp_path / "base")
    other = run(tiny_config, {**SEEDS, varied: 7}, tmp_path / varied)
    for name, value in base["fingerprints"].items():
        assert (other["fingerprints"][name] == value) == (name != varied), name
    assert other["param_hash"] != base["param_hash"]


def one_replica(tree):
    """A single run's arrays with the loop's leading replica axis (R = 1)."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], tree)


def test_loop_strategies_agree(tiny_config):
    """Unrolled calls of 4, of 3+1, single steps and lax.scan compute the same run.

    Not bitwise: XLA fuses differently per loop form (seen: 7e-6 after four steps)."""
    params = {}
    dataset = data.load("synthetic", train_limit=256)
    for loop_form, per_call in [("unroll", 4), ("unroll", 3), ("unroll", 1), ("scan", 4)]:
        config = tiny_config.replace(loop=loop_form, steps_per_call=per_call)
        keys = streams.root_keys(SEEDS)
        tx = step.make_optimizer(config, 256)
        graphdef, state = step.init_state(config, keys, tx)
        state, replica_keys = one_replica(state), one_replica(keys)
        perm = streams.epoch_permutation(keys.shuffle, 0, 256)[None]
        first = 0
        while first < 4:
            n = min(per_call, 4 - first)
            runner = step.make_run_steps(config, graphdef, tx, 1, n, loop_form)
            state, _, _ = runner(state, dataset.train_images, dataset.train_labels, perm, replica_keys, 0, first)
            first += n
        params[(loop_form, per_call)] = jax.tree.leaves(state.params)
    reference = params[("unroll", 4)]
    for name, leaves in params.items():
        for a, b in zip(reference, leaves):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(name))


def test_train_step_compiles_once(tiny_config):
    keys = streams.root_keys(SEEDS)
    tx = step.make_optimizer(tiny_config, 256)
    graphdef, state = step.init_state(tiny_config, keys, tx)
    state, replica_keys = one_replica(state), one_replica(keys)
    dataset = data.load("synthetic", train_limit=256)
    runner = step.make_run_steps(tiny_config, graphdef, tx, 1, 1, "unroll")
    for epoch in range(2):
        perm = streams.epoch_permutation(keys.shuffle, epoch, 256)[None]
        for first in range(4):
            state, _, _ = runner(state, dataset.train_images, dataset.train_labels, perm, replica_keys, epoch, first)
    assert runner._cache_size() == 1
    assert int(state.step[0]) == 8


def test_no_key_is_reused(tiny_config, tmp_path):
    with jax.debug_key_reuse(True):
        info = run(tiny_config.replace(epochs=1), SEEDS, tmp_path)
    assert np.isfinite(info["final"]["test_loss"])


def synthetic_batch(index):
    dataset = data.synthetic()
    index = np.asarray(index)
    return Batch(jnp.asarray(dataset.train_images[index]), jnp.asarray(dataset.train_labels[index]),
                 jnp.asarray(index))


def test_key_reuse_checker_can_fail(monkeypatch):
    """The checker above catches a key reused inside the step: here the CNN's objective is
    miswired to draw its dropout masks from the augmentation keys."""
    classifier = objectives.OBJECTIVES["cnn"]

    def reuse(model, batch, config, *, augment_keys, dropout_keys):
        return classifier.train_loss(model, batch, config, augment_keys=augment_keys, dropout_keys=augment_keys)

    monkeypatch.setitem(objectives.OBJECTIVES, "cnn", classifier._replace(train_loss=reuse))
    config = Config(data="synthetic")
    keys, tx = streams.root_keys(SEEDS), optax.sgd(0.0)
    graphdef, state = step.init_state(config, keys, tx)
    jitted_step = jax.jit(functools.partial(step.train_step, graphdef=graphdef, tx=tx, config=config))
    with jax.debug_key_reuse(True), pytest.raises(jax.errors.KeyReuseError):
        jitted_step(state, synthetic_batch(np.arange(8)), keys, 0)


@pytest.mark.parametrize("model", ["cnn", "vae"])
def test_an_examples_draws_do_not_depend_on_its_batch(model):
    """With the parameters held fixed (learning rate 0), the loss of 64 examples is the same in
    one batch as in two batches of 32 taken in another order at later steps: each example's
    augmentation, dropout mask and latent noise come from (epoch, its index) alone, not from the
    step, its place in the batch or the batch size."""
    config = Config(model=model, data="synthetic")
    keys, tx = streams.root_keys(SEEDS), optax.sgd(0.0)
    graphdef, state = step.init_state(config, keys, tx)
    jitted_step = jax.jit(functools.partial(step.train_step, graphdef=graphdef, tx=tx, config=config))
    index = np.arange(64)
    state, whole = jitted_step(state, synthetic_batch(index), keys, 3)
    state, second = jitted_step(state, synthetic_batch(index[32:][::-1]), keys, 3)
    state, first = jitted_step(state, synthetic_batch(index[:32]), keys, 3)
    assert int(state.step) == 3
    np.testing.assert_allclose(float(first["loss"]) + float(second["loss"]), float(whole["loss"]), rtol=1e-5)
    _, other_epoch = jitted_step(state, synthetic_batch(index), keys, 4)
    assert float(other_epoch["loss"]) != float(whole["loss"])  # the epoch is a position: new draws


def test_order_and_batch_size_leave_every_per_example_draw(tiny_config, tmp_path):
    """Varying shuffle or the batch size regroups examples; each keeps its own draws."""
    base = run(tiny_config, SEEDS, tmp_path / "base")
    reordered = run(tiny_config, {**SEEDS, "shuffle": 7}, tmp_path / "shuffle")
    rebatched = run(tiny_config.replace(batch_size=32), SEEDS, tmp_path / "batch")
    for stream in ("init", "augment", "dropout"):
        assert reordered["fingerprints"][stream] == base["fingerprints"][stream], stream
        assert rebatched["fingerprints"][stream] == base["fingerprints"][stream], stream
    assert reordered["fingerprints"]["shuffle"] != base["fingerprints"]["shuffle"]


@pytest.mark.parametrize("change, stream", [({"dropout_rate": 0.0}, "dropout"), ({"augment": "none"}, "augment")])
def test_a_stream_the_config_does_not_draw_from_changes_nothing(tiny_config, tmp_path, change, stream):
    config = tiny_config.replace(epochs=1, **change)
    base = run(config, SEEDS, tmp_path / "base")
    varied = run(config, {**SEEDS, stream: 9}, tmp_path / "varied")
    assert varied["param_hash"] == base["param_hash"] and stream not in base["fingerprints"]


@pytest.mark.parametrize("model", ["cnn", "vae"])
def test_replicas_equal_sequential_runs_with_every_stream_varied(tiny_config, tmp_path, model):
    """The vmapped replicas draw what each run draws alone; results agree to float noise."""
    config = tiny_config.replace(model=model, epochs=1, importance_samples=4)
    seeds = [{name: 2 + 10 * replica + i for i, name in enumerate(streams.STREAMS)} for replica in range(2)]
    together = loop.train(config, seeds, [str(tmp_path / f"together-{r}") for r in range(2)], progress=False)
    for replica, info in enumerate(together):
        alone = run(config, seeds[replica], tmp_path / str(replica))
        assert info["fingerprints"] == alone["fingerprints"] and info["init_param_hash"] == alone["init_param_hash"]
        for name, value in alone["final"].items():
            if name.startswith(("train_", "test_")):
                assert info["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_tfds_mock_end_to_end(tiny_config, tmp_path):
    with tfds.testing.mock_data(num_examples=128):
        info = run(tiny_config.replace(data="tfds:mnist", train_limit=None, batch_size=32, epochs=1), SEEDS, tmp_path)
    assert info["final"]["step"] == 4 and 0.0 <= info["final"]["test_accuracy"] <= 1.0


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxseed.train", *args], capture_output=True, text=True,
                          cwd=cwd or PROJECT_ROOT, timeout=600)


def test_cli_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = cli("--seed", "3", "--stream", "dropout=9", "--data", "synthetic", "--train-limit", "256",
                 "--batch-size", "64", "--epochs", "2", "--steps-per-call", "4", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    assert f"workdir {workdir}" in result.stdout and "test_accuracy" in result.stdout
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                            "training_seconds", "evaluation_seconds"}
    info = json.loads((workdir / "manifest.json").read_text())
    assert info["streams"] == {"init": 3, "shuffle": 3, "dropout": 9, "augment": 3, "latent": 3}
    assert info["streams_used"] == ["init", "shuffle", "dropout", "augment"]
    assert info["config"]["epochs"] == 2 and info["final"] == rows[-1]
    for field in ("versions", "backend", "device_count", "xla_flags", "init_param_hash", "param_hash"):
        assert field in info
    assert set(info["fingerprints"]) >= {"shuffle", "augment"}
    assert (workdir / "curves.png").stat().st_size > 1000
    again = cli("--data", "synthetic", "--workdir", str(workdir))
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--stream", "dropuot=1"], "valid streams: init, shuffle, dropout, augment, latent"),
    (["--stream", "latent=1"], "does not use the 'latent' stream; it uses: init, shuffle, dropout, augment"),
    (["--stream", "dropout"], "expected NAME=SEED"),
    (["--stream", "dropout=1.5"], f"[0, {streams.MAX_SEED}]"),
    (["--stream", "dropout=1", "--stream", "dropout=2"], "given twice"),
    (["--seed", "-3"], f"[0, {streams.MAX_SEED}]"),
    (["--seed", str(2**32)], f"[0, {streams.MAX_SEED}]"),
    (["--epochs", "0"], "must be >= 1"),
    (["--model", "resnet"], "invalid choice"),
    (["--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--batch-size", "5000", "--data", "synthetic"], "--batch-size must be in [1, 2048]"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--epochs", "-2"], "must be >= 1"),
    (["--train-limit", "0"], "must be >= 1"),
    (["--train-limit", "3000", "--data", "synthetic"], "--train-limit must be in [1, 2048]"),
    (["--data", "cifar10"], "invalid choice"),
    (["--lr", "fast"], "expected a number"),
    (["--data-dir", "{tmp}"], "has no train-images-idx3-ubyte"),
    (["--data", "synthetic", "--data-dir", "{tmp}"], "does not combine with --data synthetic"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = cli(*[arg.replace("{tmp}", str(tmp_path)) for arg in args], "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()  # nothing left behind


def test_cli_bad_workdir(tmp_path):
    (tmp_path / "file").write_text("mine")
    result = cli("--data", "synthetic", "--workdir", str(tmp_path / "file"))
    assert result.returncode == 2 and "exists and is not a folder" in result.stderr
    result = cli("--data", "synthetic", "--workdir", str(tmp_path / "file" / "run"))
    assert result.returncode == 2 and "cannot create workdir" in result.stderr
    assert (tmp_path / "file").read_text() == "mine"


def test_cli_corrupt_idx_is_one_line(tmp_path):
    """Through the CLI too: a truncated IDX file is one clear line, and the data stays as it was."""
    import shutil

    from conftest import MNIST_SLICE_DIR

    data_dir = tmp_path / "mnist"
    shutil.copytree(MNIST_SLICE_DIR, data_dir)
    (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x27\x10" + bytes(100))
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    result = cli("--data-dir", str(data_dir), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and "is truncated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before


def test_a_second_run_takes_its_programs_from_the_compilation_cache(tmp_path):
    """The CLI keeps compiled programs on disk; a rerun loads them and computes the same bits."""
    flags = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1", "--quiet"]
    environment = {**os.environ, "JAXSEED_COMPILATION_CACHE": str(tmp_path / "cache")}
    hashes, entries = [], []
    for name in ("first", "second"):
        result = subprocess.run([sys.executable, "-m", "jaxseed.train", *flags, "--workdir", str(tmp_path / name)],
                                capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600, env=environment)
        assert result.returncode == 0, result.stderr
        info = json.loads((tmp_path / name / "manifest.json").read_text())
        assert info["compilation_cache"]
        hashes.append(info["param_hash"])
        entries.append(sorted(path.name for path in (tmp_path / "cache").rglob("*") if path.is_file()))
    assert entries[0] and entries[1] == entries[0]  # the second run compiled nothing new
    assert hashes[0] == hashes[1]
