"""Several processes on localhost (2 processes x 2 CPU devices, gloo) train one run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_ROOT
from test_devices import DEVICE_TOLERANCE

pytestmark = pytest.mark.slow  # several processes

FLAGS = ["--data", "synthetic", "--train-limit", "512", "--batch-size", "64", "--epochs", "2", "--steps-per-call", "1",
         "--seed", "1", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir, *extra, processes=2, devices=2):
    """Start the processes of one run; returns their Popen objects."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
    command = [sys.executable, "-m", "jaxseed.train", *FLAGS, "--workdir", str(workdir), *extra]
    if processes == 1:
        return [subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)]
    address = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([*command, "--coordinator-address", address, "--num-processes", str(processes),
                              "--process-id", str(i)], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(processes)]


def finish(processes):
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]


def manifest(workdir):
    return json.loads((workdir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    finish(start(root / "two-processes"))
    finish(start(root / "one-process", processes=1, devices=4))
    return root


def test_two_processes_train_one_run_like_one_process_with_four_devices(runs):
    two, one = manifest(runs / "two-processes"), manifest(runs / "one-process")
    assert two["status"] == "finished" and two["execution"]["process_count"] == 2
    assert two["execution"]["mesh"] == one["execution"]["mesh"] == {"seed": 1, "data": 4}
    assert two["fingerprints"] == one["fingerprints"] and two["init_param_hash"] == one["init_param_hash"]
    for name, value in one["final"].items():
        if name.startswith(("train_", "test_")):
            assert two["final"][name] == pytest.approx(value, rel=DEVICE_TOLERANCE), name
    # Process 0 alone writes the run's files: one metrics line per epoch.
    assert len((runs / "two-processes" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_after_killing_both_processes(runs, tmp_path):
    workdir = tmp_path / "killed"
    processes = start(workdir, "--checkpoint-every", "1")
    checkpoints = workdir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "no checkpoint was written"
        time.sleep(0.05)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert manifest(workdir)["status"] == "running"  # killed before the end
    finish(start(workdir, "--resume"))
    resumed, uninterrupted = manifest(workdir), manifest(runs / "two-processes")
    assert resumed["status"] == "finished"
    assert resumed["param_hash"] == uninterrupted["param_hash"]


def test_a_refused_workdir_stops_every_process(runs):
    """Process 0 refuses a workdir that holds a run; the others stop too instead of waiting."""
    processes = start(runs / "two-processes")
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, err[-2000:]
    assert "already holds a run" in err or "process 0 could not start" in err
