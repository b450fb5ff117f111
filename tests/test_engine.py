"""The study engine on training functions of a user's (no jaxseed loop): the plan each run gets,
resume, shards, records, the report's sections, and bad input as one line with nothing lost."""

import json
import os
import re
import textwrap

import jax
import numpy as np
import pytest

import jaxseed
from conftest import PROJECT_ROOT
from jaxseed import userimport
from jaxseed.errors import UserError
from jaxseed.study import __main__ as study_cli, plan

CALLS = []
KILLED_AT = None  # a call number at which the process is "killed"


def toy(seeds):
    """A run whose weights come from ``init`` and whose noise from ``dropout``: 40 test examples."""
    if len(CALLS) == KILLED_AT:
        raise KeyboardInterrupt
    CALLS.append(seeds.as_dict())
    weights = jax.random.normal(seeds.key("init"), (40,))
    noise = 0.5 * jax.random.normal(seeds.key("dropout"), (40,))
    margin = np.asarray(weights + noise + 0.5)
    return jaxseed.Result(metrics={"test_accuracy": float((margin > 0).mean()),
                                   "test_loss": float(np.abs(margin).mean())},
                          per_example={"correct": margin > 0, "loss": np.abs(margin).astype(np.float32)},
                          fingerprint=jaxseed.fingerprint(weights + noise))


def study(workdir, **options):
    return jaxseed.study(toy, streams=("init", "dropout"), seeds=3, workdir=str(workdir), **options)


def test_each_run_gets_its_planned_seeds_and_the_report_has_every_section(tmp_path):
    CALLS.clear()
    markdown = study(tmp_path)
    assert len(CALLS) == 12  # init, dropout, all and none, 3 runs each
    init, dropout, every, none = (CALLS[i:i + 3] for i in range(0, 12, 3))
    assert [c["init"] for c in init] == [1, 2, 3] and all(c["dropout"] == 0 for c in init)
    assert [c["dropout"] for c in dropout] == [1, 2, 3] and all(c["init"] == 0 for c in dropout)
    assert [set(c.values()) for c in every] == [{1}, {2}, {3}]  # every stream, the undeclared ones too
    assert none == [jaxseed.Seeds(0).as_dict()] * 3
    for section in ("| group | runs | test accuracy: mean [95% t CI]", "- std of test loss:",
                    "are bit-identical (one fingerprint, zero spread)", "### Per-example instability",
                    "| init & dropout |", "### Seeds needed"):
        assert section in markdown, section
    assert {f for f in os.listdir(tmp_path)} >= {"ablation.md", "ablation.csv", "ablation.json", "ablation.png",
                                                  "records.npz", "study.json", "runs"}
    stored = json.loads((tmp_path / "ablation.json").read_text())
    assert stored["function"] == "test_engine:toy" and stored["runs_finished"] == 12
    assert stored["runs"]["init"][2]["seeds"]["init"] == 3


def test_a_killed_study_resumes_with_the_missing_runs_only(tmp_path, monkeypatch):
    whole = study(tmp_path / "whole")
    CALLS.clear()
    monkeypatch.setattr(__import__("test_engine"), "KILLED_AT", 5)
    with pytest.raises(KeyboardInterrupt):
        study(tmp_path / "part")
    assert len(os.listdir(tmp_path / "part" / "runs")) == 5
    CALLS.clear()
    monkeypatch.setattr(__import__("test_engine"), "KILLED_AT", None)
    assert study(tmp_path / "part") == whole
    assert len(CALLS) == 7


def test_shards_share_one_study_and_records_continue_it_elsewhere(tmp_path):
    whole = study(tmp_path / "whole")
    CALLS.clear()
    assert study(tmp_path / "shards", shard=(0, 3)) is None  # one run of every group: no spread yet
    assert study(tmp_path / "shards", shard=(1, 3)) not in (None, whole)  # two of every group
    assert study(tmp_path / "shards", shard=(2, 3)) == whole
    assert len(CALLS) == 12 and len(os.listdir(tmp_path / "shards" / "runs")) == 12
    shares = [plan.shard_runs(plan.plan_groups(0, 3, ("init", "dropout"), ("init", "dropout")), (i, 3), False)
              for i in range(3)]
    assert sorted(k for share in shares for k in share["init"]) == [0, 1, 2]
    CALLS.clear()
    assert study(tmp_path / "elsewhere", records=str(tmp_path / "whole" / "records.npz")) == whole
    assert CALLS == []  # every run restored, none trained
    assert study(tmp_path / "whole", report_only=True) == whole and CALLS == []
    with pytest.raises(UserError, match="holds no study"):  # and no folder is made for it
        study(tmp_path / "nothing", report_only=True)
    assert not (tmp_path / "nothing").exists()


def test_a_study_of_another_plan_or_records_of_another_study_is_refused(tmp_path):
    study(tmp_path / "a")
    with pytest.raises(UserError, match="holds another study .*the plan of groups and seeds"):
        jaxseed.study(toy, streams=("init", "dropout"), seeds=4, workdir=str(tmp_path / "a"))
    with pytest.raises(UserError, match="holds another study .*streams"):
        jaxseed.study(toy, streams=("init",), seeds=3, workdir=str(tmp_path / "a"))
    with pytest.raises(UserError, match="holds the runs of another study"):
        jaxseed.study(toy, streams=("init",), seeds=3, workdir=str(tmp_path / "b"),
                      records=str(tmp_path / "a" / "records.npz"))


@pytest.mark.parametrize("streams, message", [(("init", "Bad"), "stream name"), (("all",), "names a study's group"),
                                              (("none", "init"), "names a study's group"),
                                              (("params",), "reserved"), (("init", "init"), "named twice"),
                                              ((), "name the streams")])
def test_bad_stream_names_are_refused_before_anything_runs(tmp_path, streams, message):
    with pytest.raises(UserError, match=message):
        jaxseed.study(toy, streams=streams, seeds=2, workdir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def write(tmp_path, body):
    path = tmp_path / "mine.py"
    path.write_text("import jaxseed, math\n" + textwrap.dedent(body))
    return str(path)


CASES = [
    ("raise ImportError('no torch here')\ndef run(seeds): pass",
     "cannot import the training function module .*no torch"),
    ("def other(seeds): pass", "has no 'run'"),
    ("def run(seeds, epochs): return {}", "must take one argument, the run's jaxseed.Seeds"),
    ("def run(seeds): raise ValueError('diverged')", "run init-000: mine.py:run raised ValueError: diverged"),
    ("def run(seeds): return {'loss': math.nan}", "run init-000: metric 'loss' is nan, not finite"),
    ("def run(seeds): return {}", "returned no metrics"),
    ("def run(seeds): return [1.0]", "returned a list"),
    ("def run(seeds): return {'loss': 1.0} if seeds['init'] == 1 else {'acc': 1.0}",
     "run init-001 returned the metrics acc, run init-000 loss"),
    ("def run(seeds): return jaxseed.Result({'loss': 1.0}, {'loss': [1.0] * seeds['init']})",
     "run init-001 returned per-example outputs of shapes .*the same test examples"),
    ("def run(seeds): return jaxseed.Result({'loss': 1.0}, {'correct': [1, 0]})", "'correct' must be bool"),
    ("def run(seeds): return jaxseed.Result({'loss': 1.0}, {'logits': [1.0]})", "none of correct, loss"),
]


@pytest.mark.parametrize("body, message", CASES)
def test_bad_training_functions_are_one_line_and_exit_2(tmp_path, capsys, body, message):
    code = study_cli.main([write(tmp_path, body) + ":run", "--streams", "init", "--seeds", "2", "--workdir",
                           str(tmp_path / "w"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("jaxseed.study: error: "), error
    assert re.search(message, error), error


def test_finished_runs_survive_a_failing_run(tmp_path, capsys):
    """A function that fails at its third run leaves the two finished ones; its source edited, it is
    another study (whose results the finished runs are not)."""
    path = write(tmp_path, "def run(seeds):\n    assert seeds['init'] != 3, 'bad seed'\n"
                           "    return {'loss': seeds['init']}\n")
    args = [path + ":run", "--streams", "init", "--seeds", "3", "--workdir", str(tmp_path / "w"), "--quiet"]
    assert study_cli.main(args) == 2 and "run init-002" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "w" / "runs")) == ["init-000.npz", "init-001.npz"]
    (tmp_path / "mine.py").write_text((tmp_path / "mine.py").read_text() + "# edited\n")
    edited = userimport.load(path + ":run", "training function")  # the source is read again from the file
    with pytest.raises(UserError, match="another study .*source_sha256"):  # an edited source is another study
        jaxseed.study(edited, ("init",), 3, str(tmp_path / "w"))


@pytest.mark.slow
def test_the_own_loop_example_under_the_study_cli(tmp_path, capsys, monkeypatch):
    """examples/own_loop.py's ``run``, written only from the library's page, studied from the command
    line in two shards, then its report: every section, and identical reruns bit for bit."""
    monkeypatch.chdir(PROJECT_ROOT)
    args = ["examples/own_loop.py:run", "--streams", "init,dropout", "--seeds", "2", "--workdir",
            str(tmp_path / "w"), "--quiet"]
    assert study_cli.main([*args, "--shard", "0/2"]) == 0 and study_cli.main([*args, "--shard", "1/2"]) == 0
    capsys.readouterr()
    assert study_cli.main([*args, "--report"]) == 0
    markdown = capsys.readouterr().out
    assert "are bit-identical (one fingerprint, zero spread)" in markdown
    assert "### Per-example instability" in markdown and "### Seeds needed" in markdown
    assert study_cli.main(["examples/own_loop.py:run", "--compare", "examples/own_loop.py:run_three_epochs",
                           "--seeds", "2", "--workdir", str(tmp_path / "c"), "--quiet"]) == 0
    assert "A: `own_loop.py:run`, B: `own_loop.py:run_three_epochs`, on the same 2 seeds" in capsys.readouterr().out


def shifted(seeds):
    """``toy`` with a better model: the same randomness, 0.05 more accuracy."""
    result = toy(seeds)
    return result._replace(metrics={**result.metrics, "test_accuracy": result.metrics["test_accuracy"] + 0.05})


def test_a_comparison_pairs_two_functions_on_the_same_seeds(tmp_path):
    """Run k of A and of B take every stream's seed base + 1 + k; the paired difference is exact
    (B is A + 0.05 on every seed: no spread, P(B > A) = 1), and it resumes and shards like a study."""
    CALLS.clear()
    markdown = jaxseed.study.compare(toy, shifted, seeds=4, workdir=str(tmp_path / "c"))
    assert [set(c.values()) for c in CALLS] == [{1}, {2}, {3}, {4}] * 2  # A's four runs, then B's
    assert "| test_accuracy |" in markdown and "| +0.05 [+0.05, +0.05] | 0 [0, 0] |" in markdown
    assert "| 1.00 [0.40, 1.00] |" in markdown  # B wins all 4 pairs: Clopper-Pearson [0.025^(1/4), 1]
    assert "| test_loss |" in markdown and "A: `test_engine:toy`, B: `test_engine:shifted`" in markdown
    stored = json.loads((tmp_path / "c" / "ablation.json").read_text())
    assert stored["pairs"] == 4 and stored["comparison"]["test_loss"]["paired"]["mean"] == 0
    CALLS.clear()
    assert jaxseed.study.compare(toy, shifted, seeds=4, workdir=str(tmp_path / "c")) == markdown and CALLS == []
    with pytest.raises(UserError, match="holds another study .*function"):
        jaxseed.study.compare(shifted, toy, seeds=4, workdir=str(tmp_path / "c"))


@pytest.mark.parametrize("flags, message", [([], "--streams is needed"),
                                            (["--streams", "init", "--compare", "x.py:f"], "not both"),
                                            (["--compare", "x.py:f", "--detect", "0.1"], "--compare measures one")])
def test_study_or_comparison_flags_in_one_line(tmp_path, capsys, flags, message):
    code = study_cli.main([write(tmp_path, "def run(seeds): return {'loss': 1.0}") + ":run", *flags, "--workdir",
                           str(tmp_path / "w")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and message in error, error

