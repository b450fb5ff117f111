"""A user's objective: found by name, its streams checked, bad ones refused in one line."""

import json
import os
import re
import textwrap

import pytest

from jaxseed import objective, train, userimport
from jaxseed.errors import UserError

MLP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mlp_fashion_mnist.py")


def write(tmp_path, text: str, name: str = "mine.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# An objective file whose streams, loss or outputs are set by the test.
TEMPLATE = """
    import jax, jax.numpy as jnp, optax
    from flax import nnx
    from jaxseed.objective import Objective, to_unit

    class Linear(nnx.Module):
        def __init__(self, pixels, classes, key):
            self.layer = nnx.Linear(pixels, classes, rngs=nnx.Rngs(params=key))
        def __call__(self, images):
            return self.layer(to_unit(images).reshape(images.shape[0], -1))

    def train_loss(model, batch, config, keys):
        losses = optax.softmax_cross_entropy_with_integer_labels(model(batch.x), batch.y)
        return {LOSS}, {SUMS}

    def eval_metrics(model, batch, config):
        logits = model(batch.x)
        return {{"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)}}, {PROBABILITIES}

    OBJECTIVE = Objective(build=lambda config, spec, key: Linear(784, spec.num_classes, key), train_loss=train_loss,
                          eval_metrics=eval_metrics, classifier=True, streams={STREAMS})
    NOT_ONE = 3
"""


def objective_file(tmp_path, loss="losses.mean()", probabilities="jax.nn.softmax(logits)", streams="()",
                   sums='{"loss": losses.sum(), "count": batch.y.shape[0]}'):
    return write(tmp_path, TEMPLATE.format(LOSS=loss, PROBABILITIES=probabilities, STREAMS=streams, SUMS=sums))


def test_built_in_models_are_found_by_their_file_name():
    assert objective.built_in() == ("cnn", "vae")
    assert objective.resolve("cnn").classifier and not objective.resolve("vae").classifier
    assert objective.resolve("cnn") is objective.resolve("cnn")  # one object: its programs compile once


def test_a_file_objective_is_found_and_recorded_by_its_file_name(tmp_path):
    found = objective.resolve(f"{MLP}:OBJECTIVE")
    assert found.run_streams == ("init", "shuffle", "sample", "dropout", "noise")
    assert userimport.recorded_name(found.name) == "mlp_fashion_mnist.py:OBJECTIVE"
    assert objective.source_hash(found) is not None


@pytest.mark.parametrize("spec, message", [
    ("resnet", r"neither a built-in model \(cnn, vae\) nor an objective named as package.module:NAME"),
    ("no_such_module_here:OBJECTIVE", "cannot import the objective module no_such_module_here: ModuleNotFoundError"),
    ("{tmp}/absent.py:OBJECTIVE", "no objective file"),
    ("{tmp}/broken.py:OBJECTIVE", "cannot import the objective module .*broken.py: ZeroDivisionError"),
    ("{tmp}/mine.py:MISSING", "has no 'MISSING'"),
    ("{tmp}/mine.py:NOT_ONE", "is not a jaxseed.objective.Objective \\(it is int\\)"),
    ("{tmp}/mine.py:", "neither a built-in model"),
])
def test_an_objective_that_cannot_be_found_is_one_line(tmp_path, spec, message):
    objective_file(tmp_path)
    write(tmp_path, "1 / 0\n", "broken.py")
    with pytest.raises(UserError, match=message):
        objective.resolve(spec.format(tmp=tmp_path))


@pytest.mark.parametrize("streams, message", [
    ('("depth", "depth")', "a tuple of distinct names"),
    ('["depth"]', "a tuple of distinct names"),
    ('("shuffle",)', "every run draws 'shuffle'"),
    ('("sample",)', "every run draws 'sample'"),
    ('("default",)', "the stream name 'default' is taken by jaxseed"),
    ('("evaluation",)', "is taken by jaxseed"),
    ('("Depth",)', "lower-case letters"),
])
def test_a_stream_name_colliding_with_jaxseeds_is_refused(tmp_path, streams, message):
    path = objective_file(tmp_path, streams=streams)
    with pytest.raises(UserError, match=message):
        objective.resolve(f"{path}:OBJECTIVE")


@pytest.mark.parametrize("change, message", [
    ({"loss": "losses"}, "train_loss must return a scalar mean loss first, got shape \\(64,\\)"),
    ({"probabilities": "None"}, "class probabilities of shape \\(64, 10\\) \\(classifier=True\\), got None"),
    ({"probabilities": "logits[:, :3]"}, "got \\(64, 3\\)"),
    ({"loss": "losses.mean() + batch.nothing"},
     "failed on a batch of the data \\(x uint8\\[28, 28, 1\\], y int32\\[\\] per example\\): AttributeError: "
     "the batch has no array 'nothing'; the data has x, y"),
    ({"sums": '{"count": batch.y.shape[0]}'}, "metric sums must be a dict of scalars with 'loss' and 'count'"),
    ({"streams": "(), panels=((\"accuracy\", (\"test_accuracy\",)),)"}, "panels name metrics it does not compute: "
                                                                      "test_accuracy"),
])
def test_an_objective_returning_wrong_shapes_is_refused_before_training(tmp_path, capsys, change, message):
    path = objective_file(tmp_path, **change)
    workdir = tmp_path / "run"
    code = train.main(["--objective", f"{path}:OBJECTIVE", "--data", "synthetic", "--train-limit", "256",
                       "--batch-size", "64", "--epochs", "1", "--workdir", str(workdir), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not workdir.exists()  # refused before the folder was kept


def test_overriding_a_stream_the_objective_does_not_declare_is_refused(tmp_path, capsys):
    code = train.main(["--objective", f"{MLP}:OBJECTIVE", "--stream", "depth=3", "--data", "synthetic",
                       "--workdir", str(tmp_path / "run")])
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown stream 'depth'; this objective's streams: init, shuffle, sample, dropout, noise" in error


@pytest.mark.slow
def test_resuming_with_an_edited_objective_is_refused(tmp_path, capsys):
    """The manifest records the objective's source: other code under the same name does not resume the run."""
    path = tmp_path / "mlp.py"
    path.write_text(open(MLP).read())
    flags = ["--objective", f"{path}:OBJECTIVE", "--data", "synthetic", "--train-limit", "256", "--batch-size", "64",
             "--augment", "none", "--quiet", "--workdir", str(tmp_path / "run")]
    assert train.main([*flags, "--epochs", "1"]) == 0
    edited = open(MLP).read().replace("noise_std: float = setting(0.1", "noise_std: float = setting(0.2")
    assert edited != open(MLP).read()
    path.write_text(edited)
    objective.resolve.cache_clear()
    assert train.main([*flags, "--resume"]) == 2
    assert "is not the code" in capsys.readouterr().err


def test_the_recorded_command_keeps_no_path_of_this_machine():
    from jaxseed import manifest

    recorded = manifest.command(["train", "--data", "npz:/home/someone/data.npz", "--objective",
                                 "/home/someone/model.py:OBJECTIVE", "--data-dir=/srv/mnist"])
    assert recorded == ["train", "--data", "npz:<...>/data.npz", "--objective", "<...>/model.py:OBJECTIVE",
                        "--data-dir=<...>/mnist"]


def test_the_python_api_refuses_a_study_of_one_seed():
    from jaxseed import api

    with pytest.raises(UserError, match="seeds must be an integer >= 2"):
        api.ablate("cnn", seeds=1, data="synthetic")


def test_an_objectives_own_setting_is_a_flag_recorded_and_verified(tmp_path, capsys):
    """The MLP example's noise_std: a flag of train (in --help too), in the manifest's config,
    and what verify retrains with: the recorded value matches, the default in its place does not."""
    from jaxseed import verify

    flags = ["--objective", f"{MLP}:OBJECTIVE", "--data", "synthetic", "--train-limit", "256", "--batch-size", "64",
             "--augment", "none", "--epochs", "1", "--quiet"]
    with pytest.raises(SystemExit):
        train.main([*flags, "--help"])
    assert re.search(r"settings of the model .*mlp_fashion_mnist.py:OBJECTIVE.*--noise-std NOISE_STD\s+std of the "
                     r"Gaussian noise", capsys.readouterr().out, re.S)
    assert train.main([*flags, "--noise-std", "0.3", "--workdir", str(tmp_path / "run")]) == 0
    manifest_path = tmp_path / "run" / "manifest.json"
    recorded = json.loads(manifest_path.read_text())
    assert recorded["config"]["noise_std"] == 0.3 and recorded["config"]["dropout_rate"] == 0.5
    capsys.readouterr()
    assert verify.main([str(tmp_path / "run"), "--objective", f"{MLP}:OBJECTIVE", "--quiet"]) == 0
    assert "MATCH" in capsys.readouterr().out
    recorded["config"]["noise_std"] = 0.1
    manifest_path.write_text(json.dumps(recorded))
    assert verify.main([str(tmp_path / "run"), "--objective", f"{MLP}:OBJECTIVE", "--quiet"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):
        train.main([*flags, "--latents", "4"])  # the VAE's, not this objective's
    assert "unrecognized arguments: --latents 4" in capsys.readouterr().err


def test_a_config_with_another_objectives_settings_is_refused(tmp_path):
    from jaxseed import loop
    from jaxseed.config import Config
    from jaxseed.models import cnn

    config = Config(model="vae", data="synthetic", train_limit=64, batch_size=32, settings=cnn.CNNSettings())
    with pytest.raises(UserError, match="^the settings of objective vae are a VAESettings, not a CNNSettings$"):
        loop.train_and_evaluate(config, {}, str(tmp_path / "run"), progress=False)


@pytest.mark.parametrize("settings, message", [
    ("dict", "settings must be a frozen dataclass subclassing jaxseed.config.Settings, got <class 'dict'>"),
    ("Clash", "its setting epochs is also one of Config's; rename it"),
])
def test_settings_an_objective_cannot_own_are_refused(tmp_path, settings, message):
    clash = """
    import dataclasses
    from jaxseed.config import Settings, setting

    @dataclasses.dataclass(frozen=True)
    class Clash(Settings):
        epochs: int = setting(1, "a field Config has")

    OBJECTIVE = Objective(settings=""" + settings + ", "
    text = TEMPLATE.format(STREAMS="()", PROBABILITIES="None", LOSS="losses.mean()",
                           SUMS='{"loss": losses.sum(), "count": batch.y.shape[0]}')
    path = write(tmp_path, text.replace("\n    OBJECTIVE = Objective(", clash))
    with pytest.raises(UserError, match=re.escape(message)):
        objective.resolve(f"{path}:OBJECTIVE")


def test_a_classifier_on_data_without_class_labels_is_one_line(capsys):
    """The MLP classifier on the diabetes features, whose y is a float score: refused before training."""
    diabetes = os.path.join(os.path.dirname(MLP), "..", "tests", "data", "diabetes.npz")
    assert train.main(["--objective", f"{MLP}:OBJECTIVE", "--data", f"npz:{diabetes}", "--quiet"]) == 2
    assert re.search(r"objective .*mlp_fashion_mnist.py:OBJECTIVE is a classifier, but the data has no class labels",
                     capsys.readouterr().err)
