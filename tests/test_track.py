"""jaxseed.track: runs logged to TensorBoard and MLflow, read back with each tracker's own reader."""

import json
import sys

import pytest

from jaxseed import ablate, rundir, train

TINY = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "2", "--quiet"]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """MLflow's store in a temporary SQLite file, its artifacts beside it (MLflow puts them under the
    working directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import mlflow

    return mlflow.MlflowClient()


@pytest.mark.slow
def test_a_run_is_logged_to_both_trackers(tmp_path, mlflow_store):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = tmp_path / "run"
    assert train.main([*TINY, "--stream", "dropout=7", "--workdir", str(workdir), "--log", "tensorboard,mlflow",
                       "--tensorboard-dir", str(tmp_path / "tb")]) == 0
    metrics, manifest = rundir.read_metrics(str(workdir)), rundir.read_manifest(str(workdir))

    events = EventAccumulator(str(tmp_path / "tb" / "run"), size_guidance={"tensors": 0}).Reload()
    assert [e.step for e in events.Scalars("test_loss")] == [row["epoch"] for row in metrics]
    assert [e.value for e in events.Scalars("test_loss")] == pytest.approx([row["test_loss"] for row in metrics])
    texts = {tag: events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()
             for tag in ("config", "seeds", "manifest")}
    assert json.loads(texts["seeds"])["dropout"] == 7 and json.loads(texts["manifest"])["param_hash"] == manifest[
        "param_hash"]

    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("jaxseed").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["seed.dropout"] == "7" and run.data.params["seed.init"] == "0"
    assert json.loads(run.data.params["config.epochs"]) == 2
    history = mlflow_store.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["test_accuracy"]) for r in metrics]
    import mlflow

    logged = mlflow.artifacts.load_dict(run.info.artifact_uri + "/manifest.json")
    assert logged["param_hash"] == manifest["param_hash"] and logged["streams"] == manifest["streams"]


@pytest.mark.slow
def test_a_studys_runs_are_tagged_with_their_group(tmp_path, mlflow_store):
    assert ablate.main([*TINY, "--epochs", "1", "--seeds", "2", "--streams", "init", "--strategy", "sequential",
                        "--workdir", str(tmp_path / "study"), "--log", "mlflow"]) == 0
    runs = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("jaxseed").experiment_id])
    tags = sorted((run.data.tags["jaxseed.group"], run.info.run_name) for run in runs)
    assert tags == [(group, f"study/{group}-{k:03d}") for group in ("all", "init", "none") for k in range(2)]
    assert {run.data.tags["jaxseed.study"] for run in runs} == {"study"}


def test_an_unknown_tracker_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:  # a bad flag: argparse's exit, one line
        train.main([*TINY, "--log", "wandb"])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "unknown tracker 'wandb'; choose from tensorboard, mlflow" in err and len(err.strip().splitlines()) == 1


def test_a_tracker_not_installed_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed: importing it fails
    with pytest.raises(SystemExit) as exit:
        train.main([*TINY, "--log", "tensorboard", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and "\n" not in err
    assert 'error: argument --log: tensorboard needs tensorboardX: pip install -e ".[track]"' in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_study_of_your_function_logs_each_run_by_its_group(tmp_path, mlflow_store):
    """jaxseed.study --log mlflow: each finished run's seeds and metrics, read back with MLflow's client,
    tagged with the stream its group varies; the study itself is whole."""
    from jaxseed.study import __main__ as study_cli

    (tmp_path / "mine.py").write_text(
        "import jax\n"
        "def run(seeds):\n"
        "    return {'score': float(jax.random.uniform(seeds.key('init')))}\n")
    assert study_cli.main([f"{tmp_path / 'mine.py'}:run", "--streams", "init", "--seeds", "2", "--quiet",
                           "--workdir", str(tmp_path / "study"), "--log", "mlflow"]) == 0
    runs = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("jaxseed").experiment_id])
    found = sorted((run.data.tags["jaxseed.group"], run.info.run_name, run.data.params["seed.init"],
                    run.data.metrics["score"]) for run in runs)
    records = rundir.read_json(str(tmp_path / "study"), "ablation.json")
    assert [(group, name) for group, name, _, _ in found] == [
        (group, f"study/{group}-{k:03d}") for group in ("all", "init", "none") for k in range(2)]
    assert [seed for group, _, seed, _ in found if group == "none"] == ["0", "0"]
    assert len({seed for group, _, seed, _ in found if group == "init"}) == 2
    assert all(0 <= score < 1 for *_, score in found) and records["runs_finished"] == 6
