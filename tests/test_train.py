"""jaxseed.train and whole runs: determinism, per-stream effects end to end, the CLI, the compilation cache."""

import json
import os
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import PROJECT_ROOT
from jaxseed import loop, streams, train

pytestmark = pytest.mark.slow  # runs trained end to end

SEEDS = {name: 42 for name in streams.STREAMS}


def run(config, seeds, workdir):
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(config, seeds, str(workdir), progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny CNN run with every stream at 42, trained once for the tests that compare against it."""
    from conftest import TINY_CONFIG

    return run(TINY_CONFIG, SEEDS, tmp_path_factory.mktemp("base"))


def test_same_seed_twice_gives_identical_params(tiny_config, tmp_path, base):
    second = run(tiny_config, SEEDS, tmp_path / "b")
    assert base["param_hash"] == second["param_hash"]
    assert base["init_param_hash"] != base["param_hash"]  # it did train
    assert np.isfinite(base["final"]["train_loss"])


@pytest.mark.parametrize("varied", ["init", "shuffle", "dropout", "augment"])
def test_varying_one_stream_end_to_end(tiny_config, tmp_path, varied, base):
    """Fingerprints of the other streams stay, its own and the trained params change."""
    other = run(tiny_config, {**SEEDS, varied: 7}, tmp_path / varied)
    for name, value in base["fingerprints"].items():
        assert (other["fingerprints"][name] == value) == (name != varied), name
    assert other["param_hash"] != base["param_hash"]


def test_no_key_is_reused(tiny_config, tmp_path):
    with jax.debug_key_reuse(True):
        info = run(tiny_config.replace(epochs=1), SEEDS, tmp_path)
    assert np.isfinite(info["final"]["test_loss"])


def test_order_and_batch_size_leave_every_per_example_draw(tiny_config, tmp_path, base):
    """Varying shuffle or the batch size regroups examples; each keeps its own draws."""
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
    config = tiny_config.replace(model=model, epochs=1, **({"importance_samples": 4} if model == "vae" else {}))
    seeds = [{name: 2 + 10 * replica + i for i, name in enumerate(streams.STREAMS)} for replica in range(2)]
    together = loop.train(config, seeds, [str(tmp_path / f"together-{r}") for r in range(2)], progress=False)
    largest = 0.0
    for replica, info in enumerate(together):
        alone = run(config, seeds[replica], tmp_path / str(replica))
        assert info["fingerprints"] == alone["fingerprints"] and info["init_param_hash"] == alone["init_param_hash"]
        for name, value in alone["final"].items():
            if name.startswith(("train_", "test_")):
                assert info["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
                largest = max(largest, abs(value - info["final"][name]))
        # What ablate's disagreement, ensembles and per-example instability are computed from.
        for name in ("test_losses.npy", *(["test_probabilities.npy"] if model == "cnn" else [])):
            np.testing.assert_allclose(np.load(tmp_path / f"together-{replica}" / name),
                                       np.load(tmp_path / str(replica) / name), rtol=1e-4, atol=1e-4)
    print(f"largest vmap-vs-sequential metric difference: {largest:.3g}")


def test_tfds_mock_end_to_end(tiny_config, tmp_path):
    with tfds.testing.mock_data(num_examples=128):
        info = run(tiny_config.replace(data="tfds:mnist", train_limit=None, batch_size=32, epochs=1), SEEDS, tmp_path)
    assert info["final"]["step"] == 4 and 0.0 <= info["final"]["test_accuracy"] <= 1.0


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m jaxseed.train ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = train.main(list(args))
    except SystemExit as exited:  # a usage error, from argparse
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "run"
    code, out, err = cli(capsys, "--seed", "3", "--stream", "dropout=9", "--data", "synthetic", "--train-limit", "256",
                         "--batch-size", "64", "--epochs", "2", "--steps-per-call", "4", "--quiet",
                         "--workdir", str(workdir))
    assert code == 0, err
    assert f"workdir {workdir}" in out and "test_accuracy" in out
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                            "training_seconds", "evaluation_seconds"}
    info = json.loads((workdir / "manifest.json").read_text())
    assert info["streams"] == {"init": 3, "shuffle": 3, "dropout": 9, "augment": 3, "latent": 3, "sample": 3}
    assert info["streams_used"] == ["init", "shuffle", "dropout", "augment"]
    assert info["config"]["epochs"] == 2 and info["final"] == rows[-1]
    for field in ("versions", "backend", "device_count", "xla_flags", "init_param_hash", "param_hash"):
        assert field in info
    assert set(info["fingerprints"]) >= {"shuffle", "augment"}
    assert matplotlib.image.imread(workdir / "curves.png").shape[:2] == (350, 1000)  # loss and accuracy panels
    code, _, err = cli(capsys, "--data", "synthetic", "--workdir", str(workdir))
    assert code == 2 and "already holds a run" in err


@pytest.mark.parametrize("args, message", [
    (["--stream", "dropuot=1"], "unknown stream 'dropuot'; this objective's streams: init, shuffle, sample, dropout"),
    (["--stream", "latent=1"], "does not use the 'latent' stream; it uses: init, shuffle, sample, dropout, augment"),
    (["--stream", "dropout"], "expected NAME=SEED"),
    (["--stream", "dropout=1.5"], f"[0, {streams.MAX_SEED}]"),
    (["--stream", "dropout=1", "--stream", "dropout=2"], "given twice"),
    (["--seed", "-3"], f"[0, {streams.MAX_SEED}]"),
    (["--seed", str(2**32)], f"[0, {streams.MAX_SEED}]"),
    (["--epochs", "0"], "must be >= 1"),
    (["--model", "resnet"], "'resnet' is neither a built-in model (cnn, vae) nor an objective"),
    (["--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--batch-size", "5000", "--data", "synthetic"], "--batch-size must be in [1, 2048]"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--epochs", "-2"], "must be >= 1"),
    (["--train-limit", "0"], "must be >= 1"),
    (["--train-limit", "3000", "--data", "synthetic"], "--train-limit must be in [1, 2048]"),
    (["--data", "cifar100"], "invalid choice"),
    (["--lr", "fast"], "expected a number"),
    (["--data-dir", "{tmp}"], "has no train-images-idx3-ubyte"),
    (["--data", "synthetic", "--data-dir", "{tmp}"], "does not combine with --data synthetic"),
    (["--resume", "--overwrite", "--workdir", "{tmp}"], "give one of them"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    code, _, err = cli(capsys, *[arg.replace("{tmp}", str(tmp_path)) for arg in args], "--workdir", str(tmp_path / "w"))
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # nothing left behind


def test_cli_bad_workdir(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code, _, err = cli(capsys, "--data", "synthetic", "--workdir", str(tmp_path / "file"))
    assert code == 2 and "exists and is not a folder" in err
    code, _, err = cli(capsys, "--data", "synthetic", "--workdir", str(tmp_path / "file" / "run"))
    assert code == 2 and "cannot create workdir" in err
    assert (tmp_path / "file").read_text() == "mine"


def test_cli_corrupt_idx_is_one_line(tmp_path, capsys):
    """Through the CLI too: a truncated IDX file is one clear line, and the data stays as it was."""
    import shutil

    from conftest import MNIST_SLICE_DIR

    data_dir = tmp_path / "mnist"
    shutil.copytree(MNIST_SLICE_DIR, data_dir)
    (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x27\x10" + bytes(100))
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    code, _, err = cli(capsys, "--data-dir", str(data_dir), "--workdir", str(tmp_path / "w"))
    assert code == 2 and "is truncated" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
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


