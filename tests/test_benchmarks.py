"""Benchmarks cannot rot: a tiny mode of each benchmark script runs here."""

import subprocess
import sys

from conftest import PROJECT_ROOT


def test_throughput_benchmark_runs():
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--steps", "4", "--rounds", "1"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("jaxseed") and "ratio" in line for line in lines) == 2  # without and with augment
    assert any(line.startswith("reference") for line in lines)
