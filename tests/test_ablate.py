"""Ablation: grouping, statistics, the determinism control, sweep resumption, strategies, diff."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import PROJECT_ROOT
from jaxseed import ablate, diff, streams, train
from jaxseed.errors import UserError

CNN_STREAMS = ("init", "shuffle", "dropout", "augment")


def test_groups_vary_exactly_one_stream():
    groups = ablate.plan_groups(10, 3, ("init", "shuffle"), CNN_STREAMS)
    assert list(groups) == ["init", "shuffle", "all", "none"]
    base = {name: 10 for name in streams.STREAMS}
    assert groups["init"] == [{**base, "init": 11}, {**base, "init": 12}, {**base, "init": 13}]
    assert groups["shuffle"][2] == {**base, "shuffle": 13}
    assert groups["all"][0] == {name: 11 for name in streams.STREAMS}
    assert groups["none"] == [base] * 3


@pytest.mark.parametrize("chosen, message", [(("dropuot",), "unknown stream"), (("latent",), "does not use")])
def test_groups_reject_bad_streams(chosen, message):
    with pytest.raises(UserError, match=message):
        ablate.plan_groups(0, 2, chosen, CNN_STREAMS)


def test_bootstrap_ci_on_known_inputs():
    key = streams.bootstrap_key()
    assert ablate.bootstrap_ci(np.full(8, 3.0), np.mean, key) == (3.0, 3.0)
    values = np.arange(10.0)
    low, high = ablate.bootstrap_ci(values, np.mean, key)
    # The mean's standard error is 2.87 / sqrt(10) = 0.91: a 95% interval is about 4.5 +- 1.8.
    assert 2.3 < low < 3.3 and 5.7 < high < 6.7
    assert ablate.bootstrap_ci(values, np.mean, key) == (low, high)  # a fixed key: reproducible
    low, high = ablate.bootstrap_ci(values, ablate.sample_std, key)
    assert low < np.std(values, ddof=1) < high


def test_disagreement_and_ensemble():
    predictions = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 3]])
    assert ablate.disagreement(predictions) == pytest.approx((1 / 4 + 1 / 4 + 2 / 4) / 3)
    probabilities = np.array([[[0.6, 0.4], [0.6, 0.4]], [[0.3, 0.7], [0.8, 0.2]]])  # [K=2, N=2, C=2]
    assert ablate.ensemble_accuracy(probabilities, np.array([1, 1])) == 0.5  # mean probs: [.45,.55], [.7,.3]


def fake_result(loss, accuracy, param_hash="h"):
    return {"final": {"test_loss": loss, "test_accuracy": accuracy}, "param_hash": param_hash,
            "probabilities": np.eye(3)}  # predicts classes 0, 1, 2


def test_none_group_zero_spread_and_loud_warning(tmp_path):
    labels = np.array([0, 1, 2])
    key = streams.bootstrap_key()
    same = ablate.summarize("none", [fake_result(0.5, 0.9)] * 3, labels, key)
    assert same["test_loss_std"] == 0 and same["test_accuracy_std"] == 0 and same["distinct_param_hashes"] == 1
    varied = ablate.summarize("init", [fake_result(0.5, 0.9, "a"), fake_result(0.6, 0.8, "b")], labels, key)
    assert ablate.write_report(str(tmp_path), [varied, same], {}).count("WARNING") == 0
    rounding = ablate.summarize("none", [fake_result(106.93230234375, 0.9)] * 5, labels, key)  # mean rounds
    assert rounding["test_loss_std"] == 0.0
    noisy = ablate.summarize("none", [fake_result(0.5, 0.9, "a"), fake_result(0.5001, 0.9, "b")], labels, key)
    assert "WARNING" in ablate.write_report(str(tmp_path), [varied, noisy], {})
    assert (tmp_path / "ablation.png").stat().st_size > 1000


SWEEP = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1",
         "--steps-per-call", "4", "--seeds", "2", "--streams", "init", "--quiet"]


def test_sweep_resumes_only_missing_runs(tmp_path, monkeypatch):
    workdir = tmp_path / "sweep"
    assert ablate.main([*SWEEP, "--workdir", str(workdir)]) == 0
    report = json.loads((workdir / "ablation.json").read_text())["groups"]
    for name in ("init-001", "none-000"):  # as if interrupted before these finished
        (workdir / "runs" / name / "result.json").unlink()
    trained = []
    real_run_group = ablate.run_group
    monkeypatch.setattr(ablate, "run_group", lambda config, seeds, paths, strategy: (
        trained.extend(os.path.basename(p) for p in paths), real_run_group(config, seeds, paths, strategy)))
    assert ablate.main([*SWEEP, "--workdir", str(workdir)]) == 0
    assert sorted(trained) == ["init-001", "none-000"]
    assert json.loads((workdir / "ablation.json").read_text())["groups"] == report
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--seeds", "3"]) == 2  # another sweep: refused


def test_vmap_agrees_with_sequential(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=1)
    seeds = [{**{name: 1 for name in streams.STREAMS}, "init": s} for s in (2, 3)]
    together = train.train_replicas(config, seeds)
    largest = 0.0
    for (info, probabilities), replica_seeds, name in zip(together, seeds, "ab"):
        alone = train.train_and_evaluate(config, replica_seeds, str(tmp_path / name), progress=False)
        for key, value in alone["final"].items():
            if key.startswith(("train_", "test_")):
                largest = max(largest, abs(value - info["final"][key]))
        np.testing.assert_allclose(probabilities, np.load(tmp_path / name / "test_probabilities.npy"), atol=1e-4)
    print(f"largest vmap-vs-sequential metric difference: {largest:.3g}")
    assert largest < 1e-4


def test_first_difference_at_a_known_step():
    trace = [{"step": s, "epoch": 1 + s // 4, "loss": 1.0 / (s + 1), "param_checksum": s} for s in range(10)]
    changed = [dict(row) for row in trace]
    changed[6]["param_checksum"] = 99
    changed[8]["loss"] = 0.0
    assert diff.first_difference(trace, trace) is None
    found = diff.first_difference(trace, changed)
    assert (found["step"], found["epoch"]) == (6, 2)
    assert diff.first_difference(trace, trace[:7])["step"] == 7  # B stopped early


def test_diff_cli_on_traced_runs(tmp_path):
    def run(name, *extra):
        result = subprocess.run([sys.executable, "-m", "jaxseed.train", "--data", "synthetic", "--train-limit", "256",
                                 "--batch-size", "64", "--epochs", "1", "--steps-per-call", "4", "--trace",
                                 "--quiet", "--workdir", str(tmp_path / name), *extra],
                                capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert result.returncode == 0, result.stderr

    run("a")
    run("b")
    run("c", "--stream", "shuffle=5")
    same = diff.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert same == 0
    assert diff.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert len((tmp_path / "a" / "trace.jsonl").read_text().splitlines()) == 4
    assert diff.main([str(tmp_path / "a"), str(tmp_path)]) == 2  # not a traced run
