"""jaxseed.loop and jaxseed.writer: the loop's parts driven by hand, evaluation, what the writer keeps."""

import json

import numpy as np
import pytest

from jaxseed import data, loop, mesh, rundir, step, streams
from jaxseed.models import cnn
from jaxseed.objective import image_spec
from jaxseed.writer import RunWriter
from test_step import one_replica

SEEDS = {name: 8 for name in streams.STREAMS}
SPEC = image_spec((28, 28, 1), 10)  # the synthetic set's


@pytest.fixture
def config(tiny_config):
    """Two epochs of four steps, two steps per call."""
    return tiny_config.replace(steps_per_call=2)


def test_one_epoch_alone(config, tmp_path):
    """The loop's parts can be driven by hand: set up, then one epoch from its first step, then its evaluation."""
    with rundir.RunFolder.claim(str(tmp_path)) as folder:
        run, state, _ = loop.setup(cnn.OBJECTIVE, config, [SEEDS], RunWriter([folder]), None, None, progress=False)
        state, sums = loop.train_epoch(run, state, loop.START, lambda: False)
        rows, examples = loop.evaluate_epoch(run, state, 0, sums, 1.0)
        run.checkpointer.close()
    assert int(state.step[0]) == run.program.num_steps == 4 and rows[0]["epoch"] == 1 and rows[0]["step"] == 4
    assert examples["probabilities"].shape == (1, 512, 10) and examples["losses"].shape == (1, 512)
    assert sums["count"].tolist() == [4 * config.batch_size] and rows[0]["training_seconds"] == 1.0
    assert set(rows[0]) >= {"train_loss", "test_loss", "test_accuracy"}


def test_evaluation_when_the_eval_batch_does_not_divide_the_test_set(tiny_config):
    """512 test examples in chunks of 300 (the last padded) score what one chunk of 512 scores: each
    example's outputs bit for bit (the default chunk size is chosen for speed and memory alone), the
    means up to the float32 sums of the chunks."""
    dataset = data.load("synthetic", train_limit=256)
    keys = streams.root_keys(SEEDS)
    tx = step.make_optimizer(tiny_config, 256)
    graphdef, state = step.init_state(cnn.OBJECTIVE, tiny_config, SPEC, keys, tx)
    layout = mesh.plan(1, tiny_config.batch_size)
    params = one_replica(state.params)
    whole = loop.make_evaluate(cnn.OBJECTIVE, tiny_config.replace(eval_batch_size=512), graphdef, dataset, 1,
                               layout)(params)
    chunked = loop.make_evaluate(cnn.OBJECTIVE, tiny_config.replace(eval_batch_size=300), graphdef, dataset, 1,
                                 layout)(params)
    for name, value in whole[0].items():
        np.testing.assert_allclose(chunked[0][name], value, rtol=1e-6)
    assert chunked[1]["probabilities"].shape == whole[1]["probabilities"].shape == (1, 512, 10)
    for name in ("losses", "probabilities"):
        np.testing.assert_array_equal(chunked[1][name], whole[1][name])
    np.testing.assert_allclose(whole[1]["losses"].mean(), whole[0]["test_loss"], rtol=1e-5)


def test_the_writer_keeps_what_a_resumed_run_has_done(tmp_path):
    """Two replicas' folders written together: start keeps the metrics of finished epochs and the
    trace of finished steps, and writes each replica its own manifest; end_epoch and trace write
    replica r's values into folder r."""
    folders = [rundir.RunFolder.claim(str(tmp_path / name)) for name in "ab"]
    writer = RunWriter(folders)
    try:
        writer.start([{"run": r} for r in range(2)], 0, 0)
        writer.trace(0, 0, {"loss": np.array([[1.0, 2.0], [3.0, 4.0]]), "param_checksum": np.array([[5, 6], [7, 8]])})
        writer.end_epoch([{"epoch": 1, "step": 2, "replica": r} for r in range(2)])
        writer.trace(2, 1, {"loss": np.array([[9.0, 10.0]]), "param_checksum": np.array([[11, 12]])})
        writer.start([{"run": r, "again": True} for r in range(2)], 1, 2)  # resumed at epoch 2, step 2
    finally:
        writer.release()
    for r, name in enumerate("ab"):
        assert rundir.read_metrics(str(tmp_path / name)) == [{"epoch": 1, "step": 2, "replica": r}]
        assert [(row["step"], row["loss"]) for row in rundir.read_trace(str(tmp_path / name))] == [
            (0, [1.0, 2.0][r]), (1, [3.0, 4.0][r])]
        assert json.loads((tmp_path / name / "manifest.json").read_text()) == {"run": r, "again": True}
