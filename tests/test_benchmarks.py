"""Benchmarks cannot rot: a tiny mode of each benchmark script runs here."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, fresh_shell_xla_flags

pytestmark = pytest.mark.slow  # the benchmarks' tiny modes


def test_throughput_benchmark_runs():
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--steps", "4", "--rounds", "1"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "usable cores" in lines[0] and "ynn_fusion_type=dot" in lines[0]  # the CPU and XLA's flags named
    # the jitted call without and with augment, and the CLI's own training (epoch 2 of its metrics.jsonl)
    assert sum(line.startswith("jaxseed") and "ratio" in line for line in lines) == 3
    assert any(line.startswith("jaxseed CLI training") and "epoch 2 of 2" in line and "the jitted call" in line
               for line in lines)
    assert any(line.startswith("jaxseed CLI training --portable") and "the CLI without it" in line for line in lines)
    # PyTorch is timed in its own process where torch is installed, and said to be missing otherwise
    torch_installed = importlib.util.find_spec("torch") is not None
    assert any(line.startswith("PyTorch eager") and ("own process" if torch_installed else "not installed") in line
               for line in lines)
    assert any(line.startswith("reference") for line in lines)
    assert any(line.startswith("the same with Flax's nnx.max_pool") and "ratio" in line for line in lines)
    assert any(line.startswith("evaluation, jaxseed") and "ratio" in line for line in lines)
    assert any(line.startswith("start-up") and "peak RSS" in line for line in lines)


def test_sweep_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/sweep.py", "--seeds", "2", "--train-limit", "256"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sequential" in result.stdout and "vmap" in result.stdout and "runs/h" in result.stdout


def test_device_check_runs():
    # XLA_FLAGS without jaxseed's own, as in a fresh shell on the device machine: the sweep, which trains
    # in the script's process, must set them before JAX starts
    result = subprocess.run([sys.executable, "benchmarks/device_check.py", "--tiny"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=600, env={**os.environ, "XLA_FLAGS": fresh_shell_xla_flags()})
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 7  # header and six checks
    assert "ResNet-8 example on random CIFAR-10-shaped images" in result.stdout
    assert "same draws as one by one: True" in result.stdout
    assert result.stdout.count("param_hash equal: True") == 2  # on CPU both pairs are bit-identical


def test_throughput_of_an_objective_runs(tmp_path):
    """--objective: the example ResNet against a plain loop of its own step."""
    import numpy as np

    generator = np.random.default_rng(0)
    npz = tmp_path / "cifar10-shaped.npz"
    np.savez(npz, x_train=generator.integers(0, 256, (256, 32, 32, 3), np.uint8), y_train=np.arange(256) % 10,
             x_test=generator.integers(0, 256, (64, 32, 32, 3), np.uint8), y_test=np.arange(64) % 10)
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--objective",
                             "examples/resnet_cifar10.py:OBJECTIVE", "--data", f"npz:{npz}", "--augment", "crop_flip",
                             "--steps", "2", "--rounds", "1"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("plain loop") for line in lines)
    assert sum(line.startswith("jaxseed") and "ratio" in line for line in lines) == 2


def test_step_profile_runs():
    result = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--calls", "1", "--rounds", "1"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    parts, *steps = result.stdout.split("op by op")
    rows = [line for line in parts.splitlines() if line.startswith("| ") and "ms per call" not in line]
    assert len(rows) == 16
    assert sum("max-pool gradient" in row for row in rows) == 4  # jaxseed's and Flax's, both layers
    in_loop = [line for line in parts.splitlines() if line.startswith("as the training loop runs it")]
    assert [re.search(r"augment=(\w+): [0-9.]+ ms per step", line).group(1) for line in in_loop] == ["none", "affine"]
    assert len(steps) == 2  # the step without and with augmentation, each op by op
    for table in steps:
        wall = float(re.search(r"([0-9.]+) ms per step", table).group(1))
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
                if line.startswith("| ") and "ms per step" not in line]
        assert any("convolution" in row[1] for row in rows)  # the ops are named for what they compute
        # XLA's own convolutions complete after their thunks return: their time is theirs, not "no op running"
        assert sum(float(row[2]) for row in rows if "convolution" in row[1]) > 0.25 * wall
        assert any(row[0] == "no op running (dispatch, waiting)" for row in rows)
        assert sum(float(row[2]) for row in rows) == pytest.approx(wall, abs=0.01 * len(rows))  # every ms accounted


def test_library_benchmark_runs():
    """The per-example keys against the hand-written fold_in (the same keys, checked inside), and the
    study engine's overhead per run."""
    result = subprocess.run([sys.executable, "benchmarks/library.py", "--calls", "10", "--runs", "2", "--rounds", "1"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("| library / hand-written |", "| the engine's overhead per run |"):
        assert row in result.stdout, result.stdout
