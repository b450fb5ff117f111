"""Ablation: grouping, the report, the determinism control, sweep resumption, strategies."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from jaxseed import ablate, data, loop, machine, rundir, stats, streams
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.study import plan, report as study_report
from jaxseed.study.report import SPREAD
from jaxseed.study.result import Result

CNN_STREAMS = ("init", "shuffle", "dropout", "augment")


def test_groups_vary_exactly_one_stream():
    groups = plan.plan_groups(10, 3, ("init", "shuffle"), CNN_STREAMS)
    assert list(groups) == ["init", "shuffle", "all", "none"]
    base = {name: 10 for name in streams.STREAMS}
    assert groups["init"] == [{**base, "init": 11}, {**base, "init": 12}, {**base, "init": 13}]
    assert groups["shuffle"][2] == {**base, "shuffle": 13}
    assert groups["all"][0] == {name: 11 for name in streams.STREAMS}
    assert groups["none"] == [base] * 3


@pytest.mark.parametrize("chosen, message", [(("dropuot",), "unknown stream"), (("latent",), "does not use")])
def test_groups_reject_bad_streams(chosen, message):
    with pytest.raises(UserError, match=message):
        plan.plan_groups(0, 2, chosen, CNN_STREAMS)


SEEDS = {name: 0 for name in streams.STREAMS}


def fake_result(loss, accuracy, param_hash="h"):
    return Result({"test_loss": loss, "test_accuracy": accuracy}, {"probabilities": np.eye(3, dtype=np.float32)},
                  param_hash)  # predicts classes 0, 1, 2


def summarize(name, results, labels):
    return study_report.summarize(name, results, ["test_accuracy", "test_loss"], labels, "param_hash")


def report(workdir, groups: dict[str, list[Result]]) -> str:
    """The report of fake groups, as ablate writes it from finished runs."""
    found = study_report.render(groups, {name: [SEEDS] * len(group) for name, group in groups.items()}, {}, SPREAD,
                                labels=np.array([0, 1, 2]), fingerprint="param_hash", reruns="each its own program")
    with rundir.RunFolder.claim(str(workdir), "study", resume=True) as study:
        study_report.save(study, found)
    return found.markdown


def test_none_group_zero_spread_and_loud_warning(tmp_path):
    labels = np.array([0, 1, 2])
    same = summarize("none", [fake_result(0.5, 0.9)] * 3, labels)
    assert same["test_loss_std"] == 0 and same["test_accuracy_std"] == 0 and same["distinct_param_hashes"] == 1
    assert same["test_loss_std_ci"] == (0.0, 0.0) and same["test_loss_mean_ci"] == (0.5, 0.5)
    varied = [fake_result(0.5, 0.9, "a"), fake_result(0.6, 0.8, "b")]
    assert report(tmp_path, {"init": varied, "none": [fake_result(0.5, 0.9)] * 2}).count("WARNING") == 0
    rounding = summarize("none", [fake_result(106.93230234375, 0.9)] * 5, labels)  # mean rounds
    assert rounding["test_loss_std"] == 0.0
    noisy = [fake_result(0.5, 0.9, "a"), fake_result(0.5001, 0.9, "b")]
    assert "WARNING" in report(tmp_path, {"init": varied, "none": noisy})
    assert matplotlib.image.imread(tmp_path / "ablation.png").shape[:2] == (350, 440)  # a bar per group


def group(losses, accuracies):
    return [fake_result(loss, accuracy, str(i)) for i, (loss, accuracy) in enumerate(zip(losses, accuracies))]


def test_report_names_only_pairs_whose_intervals_separate(tmp_path):
    # std of test loss: init 1.58, dropout 0.0158, augment 0.0316; at K = 5 the intervals are [0.60, 2.87] x std.
    groups = {"init": group([1, 2, 3, 4, 5], [0.9] * 5), "dropout": group([1, 1.01, 1.02, 1.03, 1.04], [0.9] * 5),
              "augment": group([1, 1.02, 1.04, 1.06, 1.08], [0.9] * 5), "none": [fake_result(1, 0.9)] * 5}
    markdown = report(tmp_path, groups)
    assert "- std of test loss: init > dropout: intervals do not overlap" in markdown
    assert "- std of test loss: init > augment: intervals do not overlap" in markdown
    assert "dropout > augment" not in markdown and "augment > dropout" not in markdown  # a factor 2 is not enough
    rows = [summarize(name, results, np.array([0, 1, 2])) for name, results in groups.items()]
    assert stats.separated_pairs(rows, "test_loss") == [("init", "dropout"), ("init", "augment")]  # never none
    assert "- std of test accuracy: no pair of sources can be ranked at K = 5" in markdown  # all zero: all overlap
    stored = json.loads((tmp_path / "ablation.json").read_text())
    assert stored["runs"]["init"][3] == {"seeds": SEEDS, "param_hash": "3",
                                         "final": {"test_loss": 4, "test_accuracy": 0.9}}
    assert [row["group"] for row in stored["summary"]] == list(groups)


def test_report_says_when_no_pair_can_be_ranked(tmp_path):
    groups = {"init": group([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5]),
              "shuffle": group([1, 3, 5, 7, 9], [0.1, 0.3, 0.5, 0.7, 0.9]), "none": [fake_result(1, 0.9)] * 5}
    markdown = report(tmp_path, groups)
    assert ": intervals do not overlap" not in markdown and "WARNING" not in markdown
    assert "- std of test loss: no pair of sources can be ranked at K = 5" in markdown
    assert "- std of test accuracy: no pair of sources can be ranked at K = 5" in markdown


SWEEP = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1",
         "--steps-per-call", "4", "--seeds", "2", "--streams", "init", "--quiet"]


@pytest.mark.slow
def test_sweep_resumes_only_missing_runs(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "sweep"
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--strategy", "sequential"]) == 0
    stored = json.loads((workdir / "ablation.json").read_text())
    assert len(stored["runs"]["none"]) == 2 and stored["runs"]["init"][1]["seeds"]["init"] == 2
    assert stored["config"]["data_dir"] is None and stored["strategy"] == "sequential"
    for name in ("init-001", "none-000"):  # as if interrupted before these finished
        (workdir / "runs" / name / "manifest.json").unlink()
    trained = []
    real_run_group = ablate.run_group
    monkeypatch.setattr(ablate.runs, "run_group", lambda config, found, seeds, paths, *rest, **options: (
        trained.extend(os.path.basename(p) for p in paths),
        real_run_group(config, found, seeds, paths, *rest, **options)))
    capsys.readouterr()
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--strategy", "vmap"]) == 2  # other programs: refused
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("jaxseed.ablate: error: ") and "strategy sequential" in error
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--strategy", "sequential"]) == 0
    assert sorted(trained) == ["init-001", "none-000"]
    assert json.loads((workdir / "ablation.json").read_text())["summary"] == stored["summary"]
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--seeds", "3"]) == 2  # another sweep: refused


@pytest.mark.slow
def test_vmap_trains_none_runs_as_separate_programs(tmp_path, monkeypatch):
    """Under vmap a varied group is one program; the determinism control's K reruns are K programs."""
    num_test = data.load("synthetic", None).num_test
    sizes = []

    def fake_train(config, seeds, workdirs, **options):
        sizes.append(len(seeds))
        infos = [{"status": "finished", "config": {}, "streams": replica_seeds, "param_hash": "h",
                  "final": {"test_loss": 0.5, "test_accuracy": 0.9}} for replica_seeds in seeds]
        for workdir, info in zip(workdirs, infos):
            with rundir.RunFolder.claim(workdir, resume=True) as folder:
                folder.save_array("test_probabilities.npy", np.full((num_test, 10), 0.1, np.float32))
                folder.write_json("manifest.json", info)
        return infos

    monkeypatch.setattr(loop, "train", fake_train)
    assert ablate.main([*SWEEP, "--seeds", "3", "--strategy", "vmap", "--workdir", str(tmp_path / "w")]) == 0
    assert sizes == [3, 3, 1, 1, 1]  # init, all, then none run by run


@pytest.mark.parametrize("flag", [["--seed", "3"], ["--stream", "init=3"], ["--resume"], ["--overwrite"]])
def test_parser_has_no_single_run_flags(flag, capsys):
    with pytest.raises(SystemExit) as exited:
        ablate.ablate_parser().parse_args([*SWEEP, *flag])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unrecognized arguments" in error and flag[0] in error


@pytest.mark.slow
def test_vmap_sweep_traces_and_checkpoints_each_run(tmp_path):
    """Under vmap every run still gets its own folder: trace, metrics, manifest; the shared
    checkpoints are removed once the group's results are stored."""
    workdir = tmp_path / "w"
    assert ablate.main([*SWEEP, "--trace", "--checkpoint-every", "2", "--strategy", "vmap",
                        "--workdir", str(workdir)]) == 0
    run = workdir / "runs" / "init-001"
    assert (run / "trace.jsonl").read_text().count("\n") == 4 and (run / "manifest.json").exists()
    assert not list((workdir / "runs").glob("*checkpoints"))


def test_exit_codes_of_a_failed_or_interrupted_sweep(tmp_path, monkeypatch, capsys):
    def stop(*args, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate.runs, "run_group", stop)
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "w")]) == 130
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "finished runs are kept" in error and "rerun the same command" in error

    def diverge(*args, **options):
        raise FloatingPointError("non-finite loss")

    monkeypatch.setattr(ablate.runs, "run_group", diverge)
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "w")]) == 3


def test_auto_strategy_follows_the_recorded_measurement(tmp_path, monkeypatch):
    measured = tmp_path / "strategies.json"
    measured.write_text(json.dumps({"gpu": {"runs_per_hour": {"sequential": 100.0, "vmap": 900.0}, "date": "d"},
                                    "cpu": {"runs_per_hour": {"sequential": 50.0, "vmap": 20.0}, "date": "d"}}))
    monkeypatch.setattr(ablate.strategy, "STRATEGIES_FILE", str(measured))
    assert ablate.choose_strategy("auto", "gpu")[0] == "vmap"
    assert ablate.choose_strategy("auto", "cpu")[0] == "sequential"
    strategy, reason = ablate.choose_strategy("auto", "tpu")
    assert strategy == "sequential" and "no sweep measurement recorded for tpu" in reason
    assert ablate.choose_strategy("vmap", "cpu") == ("vmap", "asked for")


def test_a_study_of_hours_says_so_before_it_starts(tmp_path, monkeypatch, capsys):
    """The expected time, scaled by examples from the recorded sweep measurement, on stderr even with --quiet."""
    measured = {"model": "cnn", "epochs": 1, "train_limit": 256, "runs_per_hour": {"sequential": 2.0},
                "date": "today"}
    monkeypatch.setattr(ablate.strategy, "_measurement", lambda backend: measured)
    monkeypatch.setattr(ablate.runs, "run_group", lambda *args, **options: None)  # nothing trained: only the warning
    sweep = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "2", "--seeds", "2",
             "--streams", "init", "--strategy", "sequential", "--quiet", "--workdir", str(tmp_path / "study")]
    ablate.main(sweep)
    runs = 2 * len(plan.plan_groups(0, 2, ("init",), streams.STREAMS))
    error = capsys.readouterr().err
    assert f"{ablate.PROG}: {runs} runs to train, expected to take up to ~{runs * 2 / 2.0:.1f} h here" in error
    assert "--cpu-threads 1" not in error
    # --portable's bits do not depend on the pool: one shard per core, of one thread each, is named
    monkeypatch.setenv("XLA_FLAGS", " ".join([machine.PORTABLE_YNN_FUSIONS, *machine.PORTABLE_FLAGS]))
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    ablate.main([*sweep[:-1], str(tmp_path / "portable"), "--portable"])
    assert ("processes or hosts; shards of --cpu-threads 1 at once, one per core, give the same bits sooner (on 2 "
            "cores 1.4x: docs/studies.md), and a stopped study resumes") in capsys.readouterr().err
    assert ablate.expected_hours(Config(model="vae"), "sequential", "cpu", 10, 256) is None
