"""The examples that are not image classifiers, run as a user runs them: examples/char_transformer.py on
token sequences and examples/diabetes_regressor.py on float features, from the .npz files the tests carry
(cut by tests/data/cut_fortunes.py and cut_diabetes.py): train, vary their own stream and setting, verify,
diff, ablate."""

import json
import os

import numpy as np
import pytest

from conftest import PROJECT_ROOT
from jaxseed import ablate, diff, train, verify
from test_examples import call, manifest

pytestmark = pytest.mark.slow  # the examples trained and ablated

DATA = os.path.join(PROJECT_ROOT, "tests", "data")
# Models that are not image classifiers: (flags of a short run, their own stream, one of their own settings).
NOT_IMAGES = {
    "text": (["--objective", os.path.join(PROJECT_ROOT, "examples", "char_transformer.py:OBJECTIVE"), "--data",
              "npz:" + os.path.join(DATA, "fortunes.npz"), "--train-limit", "128", "--batch-size", "32",
              "--epochs", "2", "--steps-per-call", "1"], "masking", ("--mask-rate", "0.3")),
    "features": (["--objective", os.path.join(PROJECT_ROOT, "examples", "diabetes_regressor.py:OBJECTIVE"), "--data",
                  "npz:" + os.path.join(DATA, "diabetes.npz"), "--batch-size", "32", "--epochs", "2"], "dropout",
                 ("--hidden", "16")),
}


@pytest.mark.parametrize("name", NOT_IMAGES)
def test_token_and_feature_data_train_verify_diff_and_ablate(name, tmp_path, capsys):
    """Each learns (its training loss falls), draws its stream alone, is verified bit for bit from its
    manifest (its own setting included), is diffed against a run of another seed and setting, and ablated."""
    flags, stream, (setting, value) = NOT_IMAGES[name]
    objective, data = flags[1], flags[3]
    assert call(capsys, train.main, *flags, "--quiet", "--trace", "--workdir", tmp_path / "a")[0] == 0
    assert call(capsys, train.main, *flags, "--quiet", "--trace", "--workdir", tmp_path / "b", "--stream",
                f"{stream}=5", setting, value)[0] == 0
    a, b = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    first, last = (json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
    assert last["train_loss"] < first["train_loss"] and np.isfinite(last["test_loss"])
    assert stream in a["streams_used"] and a["param_hash"] != b["param_hash"]
    assert b["config"][setting[2:].replace("-", "_")] == type(a["config"][setting[2:].replace("-", "_")])(value)
    code, out, _ = call(capsys, verify.main, tmp_path / "b", "--objective", objective, "--data", data, "--quiet")
    assert code == 0 and "MATCH" in out
    code, out, _ = call(capsys, diff.main, tmp_path / "a", tmp_path / "b")
    assert code == 1 and f"{stream} 0 vs 5" in out and f"{setting[2:].replace('-', '_')} " in out
    code, out, _ = call(capsys, ablate.main, *flags, "--epochs", "1", "--seeds", "2", "--streams", stream, "--quiet",
                        "--workdir", tmp_path / "study")
    assert code == 0 and f"| {stream} |" in out and (tmp_path / "study" / "records.npz").exists()
