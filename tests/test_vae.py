"""VAE: the latent stream, fixed evaluation draws, a finite and improving ELBO."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import MNIST_SLICE_DIR
from jaxseed import loop, streams
from jaxseed.config import Config
from jaxseed.models import vae
from jaxseed.models.vae import VAE
from jaxseed.objective import Batch

pytestmark = pytest.mark.slow  # VAE runs trained

SEEDS = {name: 5 for name in streams.STREAMS}


@pytest.fixture
def vae_config(tiny_config) -> Config:
    return tiny_config.replace(model="vae", importance_samples=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(manifest, folder) of the tiny VAE run every stream at 5, trained once for the tests that compare against it."""
    from conftest import TINY_CONFIG

    workdir = tmp_path_factory.mktemp("base")
    return run(TINY_CONFIG.replace(model="vae", importance_samples=8), SEEDS, workdir), workdir


def run(config, seeds, workdir):
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(config, seeds, str(workdir), progress=False)


def test_same_seed_same_params_and_pictures(vae_config, tmp_path, base):
    (first, folder), second = base, run(vae_config, SEEDS, tmp_path / "b")
    assert first["param_hash"] == second["param_hash"]
    for picture in ("samples.png", "reconstructions.png", "curves.png"):
        assert (folder / picture).read_bytes() == (tmp_path / "b" / picture).read_bytes()


def test_reconstructions_show_the_binarised_test_images_above_their_reconstructions(vae_config, base):
    """reconstructions.png: rows 1, 3, 5, 7 are test images 0-31 as the evaluation binarised them (black
    and white), each row below them their reconstructions (grey levels)."""
    import matplotlib.image
    from jaxseed import data
    from jaxseed.objective import EVAL_BINARIZE, eval_keys

    picture = matplotlib.image.imread(base[1] / "reconstructions.png")[..., 0]
    images = data.load("synthetic", train_limit=256).test["x"][:32]
    originals = np.asarray(vae.binarize(images, eval_keys(EVAL_BINARIZE, jnp.arange(32)), vae_config))

    def tile(row, column):
        return picture[2 + row * 30:2 + row * 30 + 28, 2 + column * 30:2 + column * 30 + 28]

    for i in range(32):
        row, column = divmod(i, 8)
        np.testing.assert_array_equal(tile(2 * row, column), originals[i, ..., 0])
        reconstruction = tile(2 * row + 1, column)
        assert ((reconstruction > 0.01) & (reconstruction < 0.99)).mean() > 0.5


@pytest.mark.parametrize("varied", ["init", "shuffle", "augment", "latent"])  # sample draws only with --subsample
def test_varying_one_stream_changes_only_its_draws(vae_config, tmp_path, varied, base):
    base = base[0]
    other = run(vae_config, {**SEEDS, varied: 6}, tmp_path / varied)
    assert set(base["fingerprints"]) == set(vae.OBJECTIVE.drawn_streams(vae_config))
    assert vae.OBJECTIVE.drawn_streams(vae_config) == ("init", "shuffle", "augment", "latent")
    for name, value in base["fingerprints"].items():
        assert (other["fingerprints"][name] == value) == (name != varied), name
    assert other["param_hash"] != base["param_hash"]
    # Evaluation draws are fixed, whatever the seeds.
    assert other["evaluation_fingerprint"] == base["evaluation_fingerprint"]


def test_batch_size_leaves_every_example_draw(vae_config, tmp_path, base):
    rebatched = run(vae_config.replace(batch_size=32), SEEDS, tmp_path / "b")
    assert rebatched["fingerprints"] == base[0]["fingerprints"]


def test_threshold_binarisation_draws_nothing(vae_config, tmp_path):
    base = run(vae_config.replace(binarize="threshold"), SEEDS, tmp_path / "a")
    other = run(vae_config.replace(binarize="threshold"), {**SEEDS, "augment": 9}, tmp_path / "b")
    assert "augment" not in base["fingerprints"] and base["param_hash"] == other["param_hash"]


def test_negative_elbo_parts():
    """KL matches its closed form; reconstruction is -log Bernoulli; IWAE <= -ELBO on average."""
    model = VAE(init_key=streams.root_keys(SEEDS).init, latents=4)
    x = (jax.random.uniform(jax.random.key(1), (16, 28, 28, 1)) > 0.5).astype(jnp.float32)
    eps = jnp.zeros((16, 4))
    reconstruction, kl = vae.negative_elbo(model, x, eps)
    mean, logvar = model.encode(x)
    expected_kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)
    p = jax.nn.sigmoid(model.decode(mean)).reshape(16, -1)
    flat = x.reshape(16, -1)
    expected_rec = -jnp.sum(flat * jnp.log(p) + (1 - flat) * jnp.log1p(-p), -1)
    np.testing.assert_allclose(reconstruction, expected_rec, rtol=1e-4)
    batch = Batch({"x": (x * 255).astype(jnp.uint8)}, jnp.arange(16))
    config = Config(model="vae").replace(latents=4, binarize="threshold")
    nll = vae.importance_nll(model, batch, config, samples=64)
    elbo = vae.eval_metrics(model, batch, config)[0]["loss"]
    assert jnp.all(jnp.isfinite(nll)) and float(nll.mean()) <= float(elbo.mean())


def test_elbo_improves_on_real_mnist(tmp_path):
    config = Config(model="vae", data_dir=MNIST_SLICE_DIR, epochs=3, batch_size=64).replace(importance_samples=16)
    info = run(config, SEEDS, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["test_loss"] for row in rows]
    assert all(np.isfinite(row[k]) for row in rows for k in ("test_loss", "test_reconstruction", "test_kl"))
    assert losses[0] > losses[1] > losses[2], losses
    for row in rows:
        assert row["test_loss"] == pytest.approx(row["test_reconstruction"] + row["test_kl"], rel=1e-5)
    assert info["test_nll_importance"] < losses[-1] < 200
