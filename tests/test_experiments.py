"""Every experiment runs in its --tiny mode on the MNIST slice and its claim holds, as the
README it writes concludes, so that none can rot unseen (tests/test_notebook.py does the same for
the Colab notebook). Most run in this process, to share its compiled programs, and return their
result; debugging runs as a command. A claim that fails is written as failed; without data,
offline, an experiment fails in one line."""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import MNIST_SLICE_DIR, PROJECT_ROOT

pytestmark = pytest.mark.slow  # the experiments' tiny modes


def load(name):
    """experiments/<name>/run.py as a module (every experiment's script is named run.py)."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name.replace('/', '_')}",
                                                  os.path.join(PROJECT_ROOT, "experiments", name, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(name, out):
    """The experiment's result, run --tiny into ``out``, once its README is checked to conclude from it."""
    module = load(name)
    result = module.experiment(module.parser().parse_args(["--tiny", "--data-dir", MNIST_SLICE_DIR, "--out", str(out)]))
    assert result.verdict.conclusion in (out / "README.md").read_text()
    return result


def test_debugging_fault_recurs_at_the_step_the_shuffle_predicts(tmp_path):
    """Run as a user runs it, in its own process: what JAX needs before it starts is the script's to set."""
    result = subprocess.run([sys.executable, os.path.join("experiments", "debugging", "run.py"), "--tiny",
                             "--data-dir", MNIST_SLICE_DIR, "--out", str(tmp_path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (tmp_path / "README.md").read_text()
    assert "**The claim held**" in readme
    table = [line.strip("|").split("|") for line in readme.splitlines() if line.startswith("| ")][1:]
    steps = {name.strip(): (step.strip(), predicted.strip()) for name, step, predicted in table}
    assert all(step == predicted and step.isdigit() for step, predicted in steps.values()), steps
    assert steps["base"] == steps["base, again"] == steps["init=1"] != steps["shuffle=1"]  # the fault moved


def test_a_claim_that_did_not_hold_is_written_as_failed():
    debugging = load("debugging")
    base = debugging.Case("base", debugging.seeds(0), 3, 3, "non-finite loss at step 3")
    cases = [base, base._replace(name="base, again", step=None, message="finished without a fault"),
             base._replace(name="shuffle=1", seeds=debugging.seeds(0, shuffle=1), step=5, predicted=6)]
    verdict = debugging.judge_faults(cases)
    assert not verdict.held
    assert verdict.conclusion.startswith("**The claim FAILED**")
    assert "base, again finished without one" in verdict.conclusion
    assert "shuffle=1 at 5, predicted 6" in verdict.conclusion


def test_reproducibility_same_seed_same_bits_other_seed_other_bits(tmp_path):
    result = tiny("reproducibility", tmp_path)
    assert result.verdict.held, result.verdict.conclusion
    assert result.base.info["param_hash"] == result.again.info["param_hash"]
    assert all(run.info["param_hash"] != result.base.info["param_hash"] for run in result.varied.values())
    assert (tmp_path / "losses.png").exists()


def test_fair_comparison_paired_interval_is_narrower(tmp_path):
    result = tiny("fair_comparison", tmp_path)
    assert result.verdict.held, result.verdict.conclusion
    for found in result.compared.values():
        paired, unpaired = (found[design]["mean_ci"] for design in ("paired", "unpaired"))
        assert paired[1] - paired[0] < unpaired[1] - unpaired[0]
    assert (tmp_path / "differences.png").exists()


def test_architecture_pair_shares_initial_weights_by_name_only(tmp_path):
    """Keyed by name, the layers A and B share start bit for bit alike; keyed by order, B's inserted
    layer moves the weights of the layer after it (the spreads' comparison is the full run's finding)."""
    result = tiny("fair_comparison/architectures", tmp_path)
    assert result.alike == {"name": {"hidden": True, "out": True}, "order": {"hidden": True, "out": False}}
    assert set(result.compared) == {"name", "order"} and len(result.finals["order"]["B"]) == 4


def test_portability_rows_that_should_agree_agree(tmp_path):
    result = tiny("portability", tmp_path)
    assert result.verdict.held, result.verdict.conclusion
    assert {(row["model"], row["portable"]) for row in result.rows} == {("cnn", True), ("cnn", False)}
    assert not (tmp_path / "results.json").exists()  # --tiny keeps no runs


def test_portability_runs_again_what_other_code_or_machines_kept(monkeypatch):
    """A kept row counts only where its record is this checkout's and machine's: jaxseed's source,
    XLA_FLAGS, and for a native run the CPU; rows from before the record have none."""
    module = load("portability")
    host = {"cpu_model": "AMD EPYC", "vector_extensions": ["avx2"]}
    native = {"cpu": module.NATIVE, "provenance": module.provenance(module.NATIVE, host)}
    emulated = {"cpu": "Haswell-v4", "provenance": module.provenance("Haswell-v4", host)}
    assert module.current([native, emulated], host) == [native, emulated]
    assert module.current([native, emulated], {**host, "vector_extensions": ["avx2", "avx512f"]}) == [emulated]
    assert module.current([{"cpu": "Haswell-v4"}], host) == []
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=SSE4_2")
    assert module.current([native, emulated], host) == []
    monkeypatch.delenv("XLA_FLAGS")
    edited = {**emulated, "provenance": {**emulated["provenance"], "jaxseed_source": "0" * 64}}
    assert module.current([edited], host) == []


def test_portability_code_is_the_syntax_tree_without_docstrings():
    """Editing a comment or a docstring leaves a module's code as it was; editing code does not."""
    module = load("portability")

    def code(text):
        return ast.dump(module.code_only(ast.parse(text)))

    source = 'def f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    assert code(source) == code('def f(x):\n    """Twice x, reworded."""\n    return 2 * x\n')
    assert code(source) != code('def f(x):\n    """Twice x."""\n    return 3 * x\n')
    assert code('def g():\n    """Only a docstring."""\n') == code("def g():\n    pass\n")


def test_an_experiment_without_data_offline_fails_in_one_line(tmp_path):
    """No MNIST in the (empty) download cache, no --data-dir, and a mirror that is a missing local
    folder: nothing touches the network."""
    env = {**os.environ, "JAXSEED_DATA_DIR": str(tmp_path / "cache"),
           "JAXSEED_MNIST_MIRROR": (tmp_path / "no-mirror").as_uri()}
    result = subprocess.run([sys.executable, os.path.join("experiments", "debugging", "run.py"), "--tiny",
                             "--out", str(tmp_path / "out")], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("run.py: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--data-dir" in result.stderr
    assert not (tmp_path / "out").exists()
