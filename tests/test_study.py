"""A study's sixth source (`sample`: which examples a run trains on) and sweeps shared by processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import PROJECT_ROOT, TINY_CONFIG
from jaxseed import ablate, loop, machine, objective, streams
from jaxseed.study import plan

pytestmark = pytest.mark.slow  # studies trained

SEEDS = {name: 4 for name in streams.STREAMS}


def run(config, seeds, workdir):
    return loop.train_and_evaluate(config, seeds, str(workdir), progress=False)


def test_subsample_keeps_examples_by_their_original_index():
    """The kept examples are drawn once from the root; each epoch permutes them; keeping all is no subsampling."""
    roots = streams.root_keys(SEEDS)
    kept = np.asarray(streams.training_subset(roots.sample, 256, 128))
    assert len(set(kept.tolist())) == 128 and (np.diff(kept) > 0).all() and kept.max() < 256
    order = np.asarray(streams.training_order(roots, 3, 256, 128))
    assert sorted(order.tolist()) == kept.tolist()  # the same examples every epoch, in the epoch's order
    np.testing.assert_array_equal(streams.training_order(roots, 3, 256, 256), streams.training_order(roots, 3, 256, None))
    other = streams.root_keys({**SEEDS, "sample": 5})
    assert set(np.asarray(streams.training_subset(other.sample, 256, 128)).tolist()) != set(kept.tolist())


@pytest.fixture(scope="module")
def off(tmp_path_factory):
    return run(TINY_CONFIG, SEEDS, tmp_path_factory.mktemp("off"))


def test_sample_is_inert_when_off(off, tmp_path):
    """Without --subsample the sample stream draws nothing: its seed changes no bit."""
    varied = run(TINY_CONFIG, {**SEEDS, "sample": 9}, tmp_path)
    assert varied["param_hash"] == off["param_hash"] and varied["fingerprints"] == off["fingerprints"]
    assert "sample" not in off["fingerprints"]
    whole = run(TINY_CONFIG.replace(subsample=1.0), SEEDS, tmp_path / "whole")  # keeping every example
    assert whole["param_hash"] == off["param_hash"]


def test_sample_varies_alone_when_on(off, tmp_path):
    config = TINY_CONFIG.replace(subsample=0.5)  # 128 of the 256 examples: two steps of 64 per epoch
    base, varied = run(config, SEEDS, tmp_path / "a"), run(config, {**SEEDS, "sample": 9}, tmp_path / "b")
    assert base["final"]["step"] == 2 * config.epochs
    for name, value in base["fingerprints"].items():
        assert (varied["fingerprints"][name] == value) == (name != "sample"), name
    assert base["param_hash"] != varied["param_hash"]
    # Per-example draws stay keyed by the original example index: the same keys as without subsampling.
    assert all(base["fingerprints"][name] == off["fingerprints"][name] for name in ("init", "dropout", "augment"))


SWEEP = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1", "--steps-per-call",
         "4", "--seeds", "2", "--streams", "init", "--strategy", "sequential", "--quiet"]


def test_two_processes_complete_one_study_with_shards(tmp_path):
    """Shards 0/2 and 1/2 run at once on one folder: every planned run once, none lost or duplicated."""
    workdir = tmp_path / "study"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    shards = [subprocess.Popen([sys.executable, "-m", "jaxseed.ablate", *SWEEP, "--workdir", str(workdir),
                                "--shard", f"{i}/2"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [shard.communicate(timeout=600) for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], [err[-2000:] for _, err in outputs]
    runs = sorted(os.listdir(workdir / "runs"))
    assert runs == ["all-000", "all-001", "init-000", "init-001", "none-000", "none-001"]
    for name in runs:
        lines = (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1]
        assert json.loads((workdir / "runs" / name / "manifest.json").read_text())["status"] == "finished"
    report = subprocess.run([sys.executable, "-m", "jaxseed.ablate", "--report", "--workdir", str(workdir)],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    stored = json.loads((workdir / "ablation.json").read_text())
    assert stored["runs_finished"] == stored["runs_planned"] == 6
    assert "Determinism control" in report.stdout


def test_a_portable_studys_shards_may_each_take_their_own_thread_pool(tmp_path, capsys):
    """--portable's bits do not depend on XLA CPU's thread pool (tests/test_portable.py): shards of 1 and
    3 threads finish one study, whose determinism control (the `none` group: the same seeds, here one
    run on each pool) holds. Without --portable, a shard of another pool is refused."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def study(workdir, *options):
        result = subprocess.run([sys.executable, "-m", "jaxseed.ablate", *SWEEP, "--portable", "--workdir",
                                 str(workdir), *options], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]

    def recorded(workdir, field):
        return {name: json.loads((workdir / "runs" / name / "manifest.json").read_text())[field]
                for name in os.listdir(workdir / "runs")}

    for shard, threads in (("0/2", "1"), ("1/2", "3")):
        study(tmp_path / "shards", "--shard", shard, "--cpu-threads", threads)
    pools, hashes = recorded(tmp_path / "shards", "thread_pool"), recorded(tmp_path / "shards", "param_hash")
    assert len(hashes) == 6 and sorted(pools.values()) == [1, 1, 1, 3, 3, 3]  # the pools in force
    assert pools["none-000"] != pools["none-001"] and hashes["none-000"] == hashes["none-001"]
    assert "are bit-identical (one param_hash" in (tmp_path / "shards" / "ablation.md").read_text()
    plain = tmp_path / "plain"
    assert ablate.main([*SWEEP, "--workdir", str(plain), "--shard", "0/3"]) == 0
    header = json.loads((plain / "sweep.json").read_text())
    (plain / "sweep.json").write_text(json.dumps({**header, "config": {**header["config"], "cpu_threads": 1}}))
    capsys.readouterr()
    assert ablate.main([*SWEEP, "--workdir", str(plain), "--shard", "1/3"]) == 2
    assert "holds a different sweep (--cpu-threads: 1 there, 2 here)" in capsys.readouterr().err


def test_a_portable_study_continues_from_records_of_another_thread_pool(tmp_path, monkeypatch, capsys):
    """Its records' runs are restored, not refused as computed otherwise (without --portable they are:
    test_a_study_continues_elsewhere_from_its_records). A folder of a --portable study made before
    the fixed pool, under YNNPACK's racy reductions, still is."""
    monkeypatch.setenv("XLA_FLAGS", " ".join([machine.PORTABLE_YNN_FUSIONS, *machine.PORTABLE_FLAGS]))
    assert ablate.main([*SWEEP, "--portable", "--workdir", str(tmp_path / "first"), "--shard", "0/3"]) == 0
    with np.load(tmp_path / "first" / "records.npz") as stored:
        moved = dict(stored)
    header = json.loads(str(moved["header"]))
    moved["header"] = np.array(json.dumps({**header, "config": {**header["config"], "cpu_threads": 64}}))
    moved["manifests"] = np.array([json.dumps({**run, "thread_pool": 64, "config": {**run["config"], "cpu_threads": 64}})
                                   for run in map(json.loads, moved["manifests"].tolist())])
    np.savez(tmp_path / "pool.npz", **moved)
    trained = []
    monkeypatch.setattr(ablate.runs, "run_group", lambda config, found, seeds, paths, *rest, **options: trained.extend(
        os.path.basename(p) for p in paths))
    assert ablate.main([*SWEEP, "--portable", "--workdir", str(tmp_path / "second"), "--shard", "0/3",
                        "--records", str(tmp_path / "pool.npz")]) == 0
    assert trained == [] and sorted(os.listdir(tmp_path / "second" / "runs")) == ["all-001", "init-000"]
    header = json.loads((tmp_path / "first" / "sweep.json").read_text())
    old = {**header, "xla_flags": "", "config": {k: v for k, v in header["config"].items() if k != "cpu_threads"}}
    (tmp_path / "first" / "sweep.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert ablate.main([*SWEEP, "--portable", "--workdir", str(tmp_path / "first"), "--shard", "1/3"]) == 2
    assert "holds a different sweep (--cpu-threads: None there, 2 here)" in capsys.readouterr().err


def test_a_shard_reports_what_has_finished(tmp_path, capsys):
    """One shard alone finishes its share; the report covers only groups with two finished runs."""
    workdir = tmp_path / "study"
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--shard", "0/3"]) == 0  # runs 0 and 3 of the plan
    out = capsys.readouterr().out
    assert sorted(os.listdir(workdir / "runs")) == ["all-001", "init-000"]
    assert "no group of" in out and "has two finished runs yet" in out
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--shard", "1/3"]) == 0
    assert ablate.main([*SWEEP, "--workdir", str(workdir), "--shard", "2/3"]) == 0
    assert len(json.loads((workdir / "ablation.json").read_text())["summary"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "I/N needs 0 <= I < N"),
    (["--shard", "x"], "expected I/N"),
    (["--shard", "1/0"], "I/N needs 0 <= I < N"),
    (["--subsample", "0"], "subsample must be > 0.0"),
    (["--subsample", "1.5"], "subsample must be <= 1.0"),
    (["--report"], "--report needs the --workdir"),
    (["--report", "--workdir", "{tmp}"], "--report takes the study's settings from its sweep.json; drop --batch-size"),
])
def test_bad_study_flags_are_one_line(tmp_path, capsys, args, message):
    try:
        code = ablate.main([*SWEEP, *[arg.replace("{tmp}", str(tmp_path)) for arg in args]])
    except SystemExit as parser_exit:  # argparse's own check of a flag's form
        code = parser_exit.code
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1, error


def test_report_on_a_folder_with_no_study_is_one_line(tmp_path, capsys):
    assert ablate.main(["--report", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "holds no study (no sweep.json)" in capsys.readouterr().err


def test_shards_are_disjoint_and_cover_the_plan():
    groups = {"init": [{}] * 3, "shuffle": [{}] * 3, "all": [{}] * 3, "none": [{}] * 3}
    for strategy in ("sequential", "vmap"):
        for count in (1, 2, 5):
            shares = [plan.shard_runs(groups, (i, count), strategy == "vmap") for i in range(count)]
            for name in groups:
                assert sorted(k for share in shares for k in share[name]) == [0, 1, 2], (strategy, count, name)
    vmap = [plan.shard_runs(groups, (i, 2), True) for i in range(2)]
    assert [share["init"] for share in vmap] == [[0, 1, 2], []]  # a vmapped group is one program: never split
    assert [share["none"] for share in vmap] == [[1], [0, 2]]  # each none run its own program (units 3, 4, 5)


def test_a_study_of_another_configuration_is_refused(tmp_path, capsys):
    workdir = str(tmp_path / "study")
    assert ablate.main([*SWEEP, "--workdir", workdir, "--shard", "0/6"]) == 0
    capsys.readouterr()
    assert ablate.main([*SWEEP, "--workdir", workdir, "--learning-rate", "0.1", "--shard", "1/6"]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_the_subsample_group_of_an_ablation(tmp_path):
    """Off, the ablation has no sample group (it would change no bit); on, it has one by default."""
    config = TINY_CONFIG.replace(subsample=0.5, epochs=1)

    sweep = ablate.plan_sweep(config, objective.resolve("cnn"), 2, None, 0, "sequential", str(tmp_path))
    assert list(sweep.groups) == ["init", "shuffle", "sample", "dropout", "augment", "all", "none"]
    sweep = ablate.plan_sweep(config.replace(subsample=None), objective.resolve("cnn"), 2, None, 0, "sequential",
                              str(tmp_path))
    assert "sample" not in sweep.groups


def test_a_run_recorded_before_the_sample_stream_is_still_a_result_of_its_study(tmp_path):
    """An older run's manifest has no seed of `sample`; without --subsample it drew nothing, so the run is the one
    planned."""
    old = {name: 0 for name in streams.STREAMS if name != "sample"}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {}, "streams": old, "status": "finished",
                                                        "param_hash": "h", "final": {"test_loss": 1.0}}))
    drawn = objective.resolve("cnn").drawn_streams(TINY_CONFIG)
    result = ablate.load_result(str(tmp_path), {**old, "sample": 0}, drawn, 10, None)
    assert result.metrics == {"test_loss": 1.0} and result.per_example == {}
    with pytest.raises(Exception, match="other seeds"):
        ablate.load_result(str(tmp_path), {**old, "init": 1, "sample": 0}, drawn, 10, None)


def test_a_study_continues_elsewhere_from_its_records(tmp_path, monkeypatch, capsys):
    """records.npz, committed beside a report, restores the finished runs in a new folder: they are not
    trained again, also from another number of cores; records of another sweep, of another CPU (the study
    is not --portable), of another XLA CPU thread pool, or not records at all, are refused in one line."""
    first = tmp_path / "first"
    assert ablate.main([*SWEEP, "--workdir", str(first), "--shard", "0/3"]) == 0  # all-001 and init-000
    records = first / "records.npz"
    trained = []
    monkeypatch.setattr(ablate.runs, "run_group", lambda config, found, seeds, paths, *rest, **options: trained.extend(
        os.path.basename(p) for p in paths))
    second = tmp_path / "second"
    assert ablate.main([*SWEEP, "--workdir", str(second), "--shard", "0/3", "--records", str(records)]) == 0
    assert trained == []
    for name in ("all-001", "init-000"):
        assert (json.loads((second / "runs" / name / "manifest.json").read_text())
                == json.loads((first / "runs" / name / "manifest.json").read_text()))
        np.testing.assert_allclose(np.load(second / "runs" / name / "test_probabilities.npy"),
                                   np.load(first / "runs" / name / "test_probabilities.npy"), rtol=1e-3, atol=1e-4)
    capsys.readouterr()
    assert ablate.main([*SWEEP, "--epochs", "2", "--workdir", str(tmp_path / "third"), "--records", str(records)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds the runs of another study (--epochs: 1 there, 2 here)" in error
    with np.load(records) as stored:
        moved = dict(stored)
    stored_manifests = moved["manifests"].tolist()
    moved["manifests"] = np.array([json.dumps({**json.loads(text), "cpu": {"model": "AMD EPYC 9B14"}})
                                   for text in stored_manifests])
    np.savez(tmp_path / "moved.npz", **moved)
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "fifth"), "--records", str(tmp_path / "moved.npz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds runs computed otherwise (CPU: 'AMD EPYC 9B14' there, " in error
    assert not (tmp_path / "fifth" / "runs" / "all-001" / "manifest.json").exists()
    moved["manifests"] = np.array([json.dumps({**json.loads(text), "cpu": {**machine.cpu(), "cores": 64}})
                                   for text in stored_manifests])
    np.savez(tmp_path / "cores.npz", **moved)  # another number of cores, the same thread pool: the same bits
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "cores"), "--shard", "0/3",
                        "--records", str(tmp_path / "cores.npz")]) == 0
    assert trained == []
    moved["manifests"] = np.array([json.dumps({**json.loads(text), "thread_pool": 64}) for text in stored_manifests])
    np.savez(tmp_path / "pool.npz", **moved)
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "sixth"), "--records", str(tmp_path / "pool.npz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds runs computed otherwise (XLA CPU thread pool: 64 there, 2 here)" in error
    (tmp_path / "bad.npz").write_text("not records")
    assert ablate.main([*SWEEP, "--workdir", str(tmp_path / "fourth"), "--records", str(tmp_path / "bad.npz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot read the records" in error
    assert trained == []


def test_a_study_moves_with_its_data_to_another_folder(tmp_path, capsys):
    """Records match a study by what determines its results (configuration less paths, plan, data
    hash), not where its data lay; records that hold every planned run recompute the report even when
    computed otherwise, and say so; another data set is refused by its hash."""
    import gzip
    import shutil

    from conftest import MNIST_SLICE_DIR

    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(MNIST_SLICE_DIR, here)
    shutil.copytree(MNIST_SLICE_DIR, there)
    study = ["--streams", "init", "--seeds", "2", "--train-limit", "256", "--batch-size", "64", "--epochs", "1",
             "--quiet"]
    assert ablate.main([*study, "--data-dir", str(here), "--workdir", str(tmp_path / "first")]) == 0
    records = tmp_path / "first" / "records.npz"
    with np.load(records) as stored:
        moved = dict(stored)
    # As if computed on another thread pool: the runs cannot be continued, but they are the whole study.
    moved["manifests"] = np.array([json.dumps({**json.loads(text), "thread_pool": 64})
                                   for text in moved["manifests"].tolist()])
    np.savez(tmp_path / "elsewhere.npz", **moved)
    capsys.readouterr()
    assert ablate.main([*study, "--data-dir", str(there), "--workdir", str(tmp_path / "second"),
                        "--records", str(tmp_path / "elsewhere.npz")]) == 0
    assert "the records hold every planned run, computed otherwise (XLA CPU thread pool: 64 there" in capsys.readouterr().err
    # The same report as the records restored unchanged give (restored outputs are float16, so not the first's).
    assert ablate.main([*study, "--data-dir", str(there), "--workdir", str(tmp_path / "plain"),
                        "--records", str(records)]) == 0
    for name in ("ablation.md", "ablation.csv"):
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    other = tmp_path / "other"  # the same files, but every test label one class on
    shutil.copytree(MNIST_SLICE_DIR, other)
    labels = other / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8:] = bytes((label + 1) % 10 for label in raw[8:])  # after the IDX header
    labels.write_bytes(gzip.compress(bytes(raw)))
    assert ablate.main([*study, "--data-dir", str(other), "--workdir", str(tmp_path / "third"),
                        "--records", str(records)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds runs trained on other data (data_hash " in error
