"""Checkpoints, resume bit for bit, signals, kills, non-finite losses."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_ROOT
from jaxseed import loop, streams, train
from jaxseed.models import cnn
from jaxseed.errors import UserError

pytestmark = pytest.mark.slow  # runs stopped, killed and resumed

SEEDS = {name: 8 for name in streams.STREAMS}


@pytest.fixture
def config(tiny_config):
    """Two epochs of four steps, two steps per call, a checkpoint past every third step, traced."""
    return tiny_config.replace(steps_per_call=2, checkpoint_every=3, trace=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from jaxseed.config import Config

    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = Config(data="synthetic", train_limit=256, batch_size=64, epochs=2, steps_per_call=2, checkpoint_every=3,
                    trace=True)
    info = loop.train_and_evaluate(config, SEEDS, str(workdir), progress=False)
    return info, read_metrics(workdir), (workdir / "trace.jsonl").read_text()


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")} for line in f]


def stop_after(polls_before_stop):
    """A should_stop that answers True from its n-th poll on (polled after each call and epoch)."""
    polls = []
    return lambda: polls.append(1) or len(polls) >= polls_before_stop


@pytest.mark.parametrize("calls", [1, 2, 3])  # mid-epoch 1, at the epoch boundary, mid-epoch 2
def test_resume_equals_uninterrupted(config, tmp_path, uninterrupted, calls):
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, should_stop=stop_after(calls))
    info = loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, resume=True)
    assert info["param_hash"] == uninterrupted[0]["param_hash"]
    assert info["fingerprints"] == uninterrupted[0]["fingerprints"]
    assert read_metrics(tmp_path) == uninterrupted[1]  # no lost, no duplicated line, same values
    assert (tmp_path / "trace.jsonl").read_text() == uninterrupted[2]  # every step once, bit for bit


def test_corrupt_latest_checkpoint_falls_back(config, tmp_path, uninterrupted, capfd):
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, should_stop=stop_after(3))
    checkpoints = tmp_path / "checkpoints"
    latest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    for path in (checkpoints / str(latest)).rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    info = loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, resume=True)
    assert f"checkpoint at step {latest} is unreadable" in capfd.readouterr().err
    assert info["param_hash"] == uninterrupted[0]["param_hash"]
    assert (tmp_path / "checkpoints-unreadable" / str(latest)).is_dir()  # kept, out of the way


def test_non_finite_loss_names_step_and_seeds(config, tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ \(epoch 1\).*'init': 8"):
        loop.train_and_evaluate(config.replace(learning_rate=1e20), SEEDS, str(tmp_path), progress=False)


# Long enough to be killed part way: 40 steps of one step per call, a checkpoint every 5.
KILL_RUN = ["--data", "synthetic", "--train-limit", "1280", "--batch-size", "64", "--epochs", "2",
            "--steps-per-call", "1", "--checkpoint-every", "5", "--quiet", "--seed", "4"]


def start_and_wait_for_checkpoint(workdir):
    process = subprocess.Popen([sys.executable, "-m", "jaxseed.train", *KILL_RUN, "--workdir", str(workdir)],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        folder = workdir / "checkpoints"
        steps = [int(p) for p in os.listdir(folder) if p.isdigit()] if folder.is_dir() else []
        if any(0 < step < 20 for step in steps):  # inside the first epoch
            return process
        time.sleep(0.05)
    process.kill()
    pytest.fail("no mid-epoch checkpoint appeared")


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    assert train.main([*KILL_RUN, "--workdir", str(workdir)]) == 0  # the same program in this process
    return json.loads((workdir / "manifest.json").read_text())["param_hash"], read_metrics(workdir)


def test_sigkill_mid_epoch_then_resume(tmp_path, kill_reference):
    process = start_and_wait_for_checkpoint(tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert train.main(["--resume", "--workdir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["param_hash"] == kill_reference[0]
    assert read_metrics(tmp_path) == kill_reference[1]


def test_sigterm_saves_and_says_how_to_resume(tmp_path, kill_reference):
    process = start_and_wait_for_checkpoint(tmp_path)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"resume with: python -m jaxseed.train --resume --workdir {tmp_path}" in stderr
    assert train.main(["--resume", "--workdir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["param_hash"] == kill_reference[0]


def snapshot(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_other_settings_and_touches_nothing(config, tmp_path, capsys):
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, should_stop=stop_after(1))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train.main(["--resume", "--workdir", str(tmp_path), "--epochs", "3", "--stream", "shuffle=1"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "epochs is 2 in the run, 3 given" in error
    assert "seed of stream 'shuffle' is 8 in the run, 1 given" in error
    assert snapshot(tmp_path) == before


def test_resume_needs_a_run(tmp_path, capsys):
    assert train.main(["--resume", "--workdir", str(tmp_path)]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_vae_resume_equals_uninterrupted(tmp_path):
    from jaxseed.config import Config

    config = Config(model="vae", data="synthetic", train_limit=256, batch_size=64, epochs=2,
                    steps_per_call=2).replace(importance_samples=4)
    reference = loop.train_and_evaluate(config, SEEDS, str(tmp_path / "reference"), progress=False)
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path / "resumed"), progress=False,
                                 should_stop=stop_after(2))
    resumed = loop.train_and_evaluate(config, SEEDS, str(tmp_path / "resumed"), progress=False, resume=True)
    assert resumed["param_hash"] == reference["param_hash"]
    assert resumed["fingerprints"] == reference["fingerprints"]


REPLICA_SEEDS = [{**SEEDS, "init": 1}, {**SEEDS, "init": 2, "shuffle": 3}]


def test_replicas_resume_bit_for_bit(config, tmp_path):
    """The one loop checkpoints and resumes replicas as it does one run."""
    def workdirs(name):
        return [str(tmp_path / name / str(r)) for r in range(len(REPLICA_SEEDS))]

    whole = loop.train(config, REPLICA_SEEDS, workdirs("whole"), progress=False)
    with pytest.raises(loop.StoppedAtStep):
        loop.train(config, REPLICA_SEEDS, workdirs("resumed"), progress=False, should_stop=stop_after(2))
    resumed = loop.train(config, REPLICA_SEEDS, workdirs("resumed"), progress=False, resume=True)
    assert [r["param_hash"] for r in resumed] == [r["param_hash"] for r in whole]
    for r in range(len(REPLICA_SEEDS)):
        assert read_metrics(workdirs("resumed")[r]) == read_metrics(workdirs("whole")[r])


def test_non_finite_loss_of_a_replica_names_its_seeds_and_step(tiny_config, tmp_path):
    """An example whose loss is NaN (as a corrupted one's would be) stops training in the step whose
    batch holds it; with two replicas in different orders, the error names the replica that meets it
    first, and the step."""
    import dataclasses

    import jax.numpy as jnp

    corrupt = 100

    def poisoned(model, batch, config, keys):
        loss, sums = cnn.train_loss(model, batch, config, keys)
        hit = jnp.any(batch.index == corrupt)
        return jnp.where(hit, jnp.nan, loss), {**sums, "loss": jnp.where(hit, jnp.nan, sums["loss"])}

    config = tiny_config.replace(steps_per_call=4)
    steps = [int(list(loop.outputs.permutation(streams.root_keys(seeds).shuffle, 0, 256)).index(corrupt)) // 64
             for seeds in REPLICA_SEEDS]
    first = min(range(2), key=lambda r: steps[r])
    with pytest.raises(FloatingPointError) as error:
        loop.train(config, REPLICA_SEEDS, [str(tmp_path / str(r)) for r in range(2)], progress=False,
                   objective=dataclasses.replace(cnn.OBJECTIVE, train_loss=poisoned))
    assert f"at step {steps[first]} (epoch 1)" in str(error.value) and str(REPLICA_SEEDS[first]) in str(error.value)


def test_an_old_positional_checkpoint_is_refused_in_one_line(config, tmp_path):
    """Checkpoints are restored by name; one of an older jaxseed (leaves by position) is refused."""
    import jax
    import orbax.checkpoint as ocp

    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, should_stop=stop_after(1))
    folder = tmp_path / "checkpoints"
    step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    manager = ocp.CheckpointManager(str(folder), item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                                "progress": ocp.JsonCheckpointHandler()})
    restored = manager.restore(step)
    leaves = {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(restored.state))}
    manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                   progress=ocp.args.JsonSave({**restored.progress})))
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(UserError, match=f"checkpoint at step {step + 1} .* written by an older jaxseed"):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, resume=True)


def test_a_checkpoint_position_is_checked_against_the_run(config, tmp_path):
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, should_stop=stop_after(1))
    progress_files = [p for p in (tmp_path / "checkpoints").rglob("*") if p.parent.name == "progress"
                      and p.is_file() and p.read_text().startswith("{")]
    assert progress_files
    for path in progress_files:
        recorded = json.loads(path.read_text())
        path.write_text(json.dumps({**recorded, "epoch": 99, "global_step": 99 * 4 + recorded["first"]}))
    with pytest.raises(UserError, match="holds a position that is not one of this run"):
        loop.train_and_evaluate(config, SEEDS, str(tmp_path), progress=False, resume=True)


def test_scan_loop_resumes_bit_for_bit_and_stops_on_a_non_finite_loss(config, tmp_path):
    """The lax.scan form through the whole loop: checkpoints, resume, the non-finite check. With the
    VAE: XLA CPU runs a convolution inside a loop ~20x slower (jax#12868), and the CNN's scan is
    checked against the unrolled loop in test_train.py."""
    scan = config.replace(loop="scan", model="vae")
    whole = loop.train_and_evaluate(scan, SEEDS, str(tmp_path / "whole"), progress=False)
    with pytest.raises(loop.StoppedAtStep):
        loop.train_and_evaluate(scan, SEEDS, str(tmp_path / "resumed"), progress=False, should_stop=stop_after(3))
    resumed = loop.train_and_evaluate(scan, SEEDS, str(tmp_path / "resumed"), progress=False, resume=True)
    assert resumed["param_hash"] == whole["param_hash"] and resumed["execution"]["loop"] == "scan"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ \(epoch 1\)"):
        loop.train_and_evaluate(scan.replace(learning_rate=1e20), SEEDS, str(tmp_path / "nan"), progress=False)


