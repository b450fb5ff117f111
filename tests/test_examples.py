"""The examples, run as a user runs them: train, vary their own stream, verify, diff, ablate.

examples/mlp_fashion_mnist.py on the Fashion-MNIST .npz the tests carry; examples/resnet_cifar10.py on
files in CIFAR-10's binary format written here (no package ships CIFAR-10); your own loops on jaxseed's
streams (plain JAX, Equinox, Linen) and a Grain pipeline. The examples that are not image classifiers:
test_not_images.py.
"""

import dataclasses
import importlib.util
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseed
from conftest import PROJECT_ROOT
from jaxseed import ablate, diff, train, verify
from test_data import write_cifar10

pytestmark = pytest.mark.slow  # the examples trained and ablated

MLP = os.path.join(PROJECT_ROOT, "examples", "mlp_fashion_mnist.py") + ":OBJECTIVE"
RESNET = os.path.join(PROJECT_ROOT, "examples", "resnet_cifar10.py") + ":OBJECTIVE"
FASHION = "npz:" + os.path.join(PROJECT_ROOT, "tests", "data", "fashion-mnist-small.npz")
MLP_FLAGS = ["--objective", MLP, "--data", FASHION, "--augment", "none", "--epochs", "1", "--train-limit", "400",
             "--batch-size", "100", "--quiet"]


def manifest(workdir) -> dict:
    return json.loads((workdir / "manifest.json").read_text())


def call(capsys, main, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    """The MLP at seed 0, and with only its own `noise` stream at 5, both traced."""
    root = tmp_path_factory.mktemp("mlp")
    for name, extra in (("base", []), ("noise", ["--stream", "noise=5"])):
        assert train.main([*MLP_FLAGS, "--trace", "--workdir", str(root / name), *extra]) == 0
    return root / "base", root / "noise"


def test_your_own_stream_varies_alone(mlp_runs):
    base, noise = map(manifest, mlp_runs)
    assert base["streams_used"] == ["init", "shuffle", "dropout", "noise"]
    assert base["config"]["model"] == "mlp_fashion_mnist.py:OBJECTIVE"  # no path of this machine
    assert base["streams"]["noise"] == 0 and noise["streams"]["noise"] == 5
    assert set(base["fingerprints"]) == {"init", "shuffle", "dropout", "noise"}
    for name, value in base["fingerprints"].items():
        assert (noise["fingerprints"][name] == value) == (name != "noise"), name
    assert base["param_hash"] != noise["param_hash"]
    assert base["final"]["test_accuracy"] > 0.3  # it learns (10 classes)


def test_diff_names_your_stream(mlp_runs, capsys):
    code, out, _ = call(capsys, diff.main, *mlp_runs)
    assert code == 1 and "first difference at step 0" in out and "noise 0 vs 5" in out


def test_verify_imports_your_objective_only_when_you_name_it(mlp_runs, capsys):
    base = mlp_runs[0]
    code, _, err = call(capsys, verify.main, base, "--quiet")
    assert code == 2 and "jaxseed imports no code a run folder names: pass --objective" in err
    code, _, err = call(capsys, verify.main, base, "--quiet", "--objective", RESNET, "--data", FASHION)
    assert code == 2 and "trained with the objective 'mlp_fashion_mnist.py:OBJECTIVE', not 'resnet_cifar10.py" in err
    code, out, _ = call(capsys, verify.main, base, "--quiet", "--objective", MLP, "--data", FASHION)
    assert code == 0 and f"MATCH param_hash {manifest(base)['param_hash']}" in out


def test_ablate_your_own_stream(tmp_path, capsys):
    code, out, _ = call(capsys, ablate.main, *MLP_FLAGS, "--seeds", "2", "--streams", "noise", "--strategy",
                        "sequential", "--workdir", tmp_path / "study")
    assert code == 0
    rows = {row["group"]: row for row in json.loads((tmp_path / "study" / "ablation.json").read_text())["summary"]}
    assert set(rows) == {"noise", "all", "none"}
    assert rows["none"]["test_loss_std"] == 0 and rows["noise"]["test_loss_std"] > 0
    assert "Determinism control" in out


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar10")
    write_cifar10(folder, "archive", count=64)  # 320 training and 64 test images in CIFAR's own format
    return folder


def resnet_flags(cifar10_dir, *extra):
    return ["--objective", RESNET, "--data", "cifar10", "--data-dir", cifar10_dir, "--augment", "crop_flip",
            "--epochs", "1", "--batch-size", "64", "--quiet", *extra]


def test_resnet_with_stochastic_depth_from_its_own_stream(cifar10_dir, tmp_path, capsys):
    for name, extra in (("base", []), ("depth", ["--stream", "depth=3"])):
        code, _, err = call(capsys, train.main, *resnet_flags(cifar10_dir, "--workdir", tmp_path / name, *extra))
        assert code == 0, err
    base, depth = manifest(tmp_path / "base"), manifest(tmp_path / "depth")
    assert base["streams_used"] == ["init", "shuffle", "augment", "depth"]
    for name, value in base["fingerprints"].items():
        assert (depth["fingerprints"][name] == value) == (name != "depth"), name
    assert base["param_hash"] != depth["param_hash"]
    code, out, _ = call(capsys, verify.main, tmp_path / "base", "--quiet", "--objective", RESNET,
                        "--data-dir", cifar10_dir)
    assert code == 0 and "MATCH" in out


def test_resnet_ablation(cifar10_dir, tmp_path, capsys):
    code, out, err = call(capsys, ablate.main, *resnet_flags(cifar10_dir, "--seeds", "2", "--streams", "depth",
                                                             "--strategy", "sequential", "--workdir", tmp_path / "s"))
    assert code == 0, err
    assert "| depth | 2 |" in out and "Determinism control" in out


def test_the_python_api_takes_the_objective_object(mlp_runs, tmp_path):
    """A notebook passes its objective itself: the same run as the command line's, bit for bit."""
    from jaxseed import api, objective

    mlp = dataclasses.replace(objective.resolve(MLP), name="notebook")  # an object of its own, as a notebook's
    info = api.train(mlp, seed=0, streams={"noise": 5}, data=FASHION, augment="none", epochs=1, train_limit=400,
                     batch_size=100, trace=True, workdir=str(tmp_path / "api"), progress=False)
    assert info["param_hash"] == manifest(mlp_runs[1])["param_hash"]
    assert info["config"]["model"] == "notebook"


def example(name: str):
    """The module examples/<name>.py, imported as a user's script."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(PROJECT_ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same(a, b) -> bool:
    leaves = jax.tree.leaves(eqx.filter((a, b), eqx.is_array))
    half = len(leaves) // 2
    return all((x == y).all() for x, y in zip(leaves[:half], leaves[half:]))


@pytest.mark.parametrize("name", ["own_loop", "equinox_loop", "linen_loop"])
def test_your_own_loop_varies_dropout_alone(name):
    """Plain JAX, Equinox and Linen loops on jaxseed's streams: the same seeds give the same bits;
    another dropout seed leaves the initial weights bit for bit and changes the trained ones."""
    loop = example(name)
    data = os.path.join(PROJECT_ROOT, loop.DATA)
    start, trained = loop.train(0, 0, 0, data), loop.train(0, 0, 2, data)
    assert same(trained, loop.train(0, 0, 2, data))
    assert same(start, loop.train(0, 7, 0, data)) and not same(trained, loop.train(0, 7, 2, data))


def test_your_own_loop_resumes_without_rng_state():
    """examples/own_loop.py: one epoch, then a resume at epoch 1 from its parameters and optimiser state,
    is the two-epoch run bit for bit."""
    loop = example("own_loop")
    data = os.path.join(PROJECT_ROOT, loop.DATA)
    assert same(loop.train(0, 0, 2, data), loop.train(0, 0, 2, data, state=loop.train(0, 0, 1, data), first_epoch=1))


def test_grain_pipeline_draws_what_jaxseeds_step_draws():
    """examples/grain_pipeline.py: batches in the shuffle stream's order whose images are, bit for bit,
    the augmented images jaxseed's training step makes of the same examples, at any batch size."""
    from jaxseed import augment, streams
    from jaxseed.objective import to_unit

    pipeline = example("grain_pipeline")
    with np.load(os.path.join(PROJECT_ROOT, pipeline.DATA)) as arrays:
        images, labels = arrays["x_train"][..., None], arrays["y_train"]
    seeds = jaxseed.Seeds(3)
    epoch = 2
    order = np.asarray(streams.training_order(streams.root_keys(seeds.as_dict()), epoch, len(images), None))
    batch = pipeline.epoch_batches(images, labels, seeds, epoch, 8)[1]
    index = order[8:16]
    assert batch["index"].tolist() == index.tolist() and batch["label"].tolist() == labels[index].tolist()
    keys = streams.batch_keys(streams.root_keys(seeds.as_dict()), ("augment",), epoch, jnp.asarray(index))
    on_device = augment.apply(pipeline.AUGMENT, to_unit(jnp.asarray(images[index])), keys.augment)
    np.testing.assert_array_equal(batch["image"], np.asarray(on_device))
    assert not (batch["image"] == np.asarray(to_unit(images[index]))).all()  # augmented
    np.testing.assert_array_equal(pipeline.epoch_batches(images, labels, seeds, epoch, 16)[0]["image"][8:],
                                  batch["image"])
