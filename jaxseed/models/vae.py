"""The built-in VAE: -ELBO on dynamically binarised images (Kingma & Welling, 2014).

Its randomness, declared once in ``OBJECTIVE``: ``init`` (parameters), ``shuffle``
(order), and per example ``augment`` (its binarisation) and ``latent`` (its
reparameterisation noise). Evaluation draws come from the fixed evaluation key.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxseed import data, manifest
from jaxseed import portable as portable_ops
from jaxseed.config import Config, Settings, setting
from jaxseed.objective import (EVAL_BINARIZE, EVAL_IMPORTANCE, EVAL_LATENT, EVAL_SAMPLES, Batch, Objective,
                               eval_keys, to_unit)


@dataclasses.dataclass(frozen=True)
class VAESettings(Settings):
    """The VAE's own settings (each a flag: --latents, --binarize, --importance-samples)."""

    latents: int = setting(20, "VAE: dimensions of the Gaussian latent", minimum=1, maximum=4096)
    binarize: str = setting("dynamic", "VAE inputs: each pixel ~ Bernoulli(grey level) from the 'augment' stream, "
                                       "or a fixed threshold at 0.5", choices=("dynamic", "threshold"))
    importance_samples: int = setting(100, "VAE: samples per test image for the final log-likelihood", minimum=1,
                                      maximum=100_000)


class VAE(nnx.Module):
    """MLP variational autoencoder (Kingma & Welling, 2014), for images of ``image_shape``.

    Encoder: H*W*C -> 512 -> 256 -> (mean, log-variance) of a diagonal Gaussian q(z|x)
    over ``latents`` dimensions. Decoder: z -> 256 -> 512 -> H*W*C Bernoulli logits.
    ``portable``: kernel gradients that round alike on any x86 CPU (``jaxseed.portable``).
    """

    def __init__(self, *, init_key: jax.Array, latents: int = 20, hidden: tuple[int, int] = (512, 256),
                 image_shape: tuple[int, int, int] = (28, 28, 1), portable: bool = False):
        rngs = nnx.Rngs(params=init_key)
        wide, narrow = hidden
        pixels = math.prod(image_shape)
        linear = portable_ops.linear_options(portable)
        self.enc1 = nnx.Linear(pixels, wide, **linear, rngs=rngs)
        self.enc2 = nnx.Linear(wide, narrow, **linear, rngs=rngs)
        self.mean = nnx.Linear(narrow, latents, **linear, rngs=rngs)
        self.logvar = nnx.Linear(narrow, latents, **linear, rngs=rngs)
        self.dec1 = nnx.Linear(latents, narrow, **linear, rngs=rngs)
        self.dec2 = nnx.Linear(narrow, wide, **linear, rngs=rngs)
        self.out = nnx.Linear(wide, pixels, **linear, rngs=rngs)
        self.latents = latents
        self.image_shape = tuple(image_shape)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float[B, H, W, C] -> (mean, log-variance), each float[B, latents]."""
        h = nnx.relu(self.enc2(nnx.relu(self.enc1(images.reshape(images.shape[0], -1)))))
        return self.mean(h), self.logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """z float[..., latents] -> Bernoulli logits float[..., H, W, C]."""
        logits = self.out(nnx.relu(self.dec2(nnx.relu(self.dec1(z)))))
        return logits.reshape(*z.shape[:-1], *self.image_shape)


def binarize(images: jax.Array, keys: jax.Array, config: Config) -> jax.Array:
    """uint8 images -> float {0, 1}: pixel ~ Bernoulli(grey level), one key per example,
    or a fixed threshold at 0.5 when ``config.settings.binarize == "threshold"``."""
    grey = to_unit(images)
    if config.settings.binarize == "threshold":
        return (grey > 0.5).astype(jnp.float32)
    return jax.vmap(lambda key, p: jax.random.bernoulli(key, p).astype(jnp.float32))(keys, grey)


def gaussian_log_density(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)), summed over the last axis."""
    return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), -1)


def negative_elbo(model: VAE, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example reconstruction and KL terms of -ELBO, in nats (Kingma & Welling, 2014).

        -ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I))
        z = mean + exp(logvar / 2) * eps,  eps ~ N(0, I)      (reparameterisation)
        KL = -1/2 * sum(1 + logvar - mean^2 - exp(logvar))

    Args:
      x: binary images float[B, H, W, C]; eps: standard normal noise float[B, latents].
    Returns:
      (reconstruction, kl), each float[B].
    """
    mean, logvar = model.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * eps
    logits = model.decode(z)
    reconstruction = optax.sigmoid_binary_cross_entropy(logits, x).reshape(x.shape[0], -1).sum(-1)
    kl = -0.5 * jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), -1)
    return reconstruction, kl


def latent_noise(keys: jax.Array, latents: int, samples: tuple[int, ...] = ()) -> jax.Array:
    """Standard normal noise float[B, *samples, latents], one key per example."""
    return jax.vmap(lambda key: jax.random.normal(key, (*samples, latents)))(keys)


def train_loss(model: VAE, batch: Batch, config: Config, keys):
    """-ELBO on dynamically binarised images (each example's pixels from its ``augment``
    key), with reparameterisation noise from its ``latent`` key (both key[B])."""
    x = binarize(batch.x, keys.augment, config)
    eps = latent_noise(keys.latent, model.latents)
    reconstruction, kl = negative_elbo(model, x, eps)
    loss = reconstruction + kl
    return loss.mean(), {"loss": loss.sum(), "reconstruction": reconstruction.sum(), "kl": kl.sum(),
                         "count": batch.index.shape[0]}


def eval_metrics(model: VAE, batch: Batch, config: Config):
    """-ELBO and its parts on the test set, from fixed evaluation draws."""
    x = binarize(batch.x, eval_keys(EVAL_BINARIZE, batch.index), config)
    reconstruction, kl = negative_elbo(model, x, latent_noise(eval_keys(EVAL_LATENT, batch.index), model.latents))
    return {"loss": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}, None


def importance_nll(model: VAE, batch: Batch, config: Config, samples: int) -> jax.Array:
    """-log p(x) estimated with ``samples`` importance samples from q (Burda et al., 2016).

        log p(x) ~= logsumexp_k [log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)] - log K

    Returns float[B], nats per image; a tighter bound than -ELBO.
    """
    x = binarize(batch.x, eval_keys(EVAL_BINARIZE, batch.index), config)
    mean, logvar = model.encode(x)
    eps = latent_noise(eval_keys(EVAL_IMPORTANCE, batch.index), model.latents, (samples,))  # [B, K, L]
    z = mean[:, None] + jnp.exp(0.5 * logvar[:, None]) * eps
    logits = model.decode(z)  # [B, K, H, W, C]
    log_likelihood = -optax.sigmoid_binary_cross_entropy(logits, x[:, None]).reshape(*z.shape[:2], -1).sum(-1)
    log_prior = gaussian_log_density(z, 0.0, jnp.zeros_like(z))
    log_posterior = gaussian_log_density(z, mean[:, None], logvar[:, None])
    log_weights = log_likelihood + log_prior - log_posterior
    return -(jax.nn.logsumexp(log_weights, axis=1) - math.log(samples))


@functools.lru_cache(maxsize=16)  # runs of one shape (an ablation's, a test's) compile it once
def _importance_chunk(config: Config, graphdef: nnx.GraphDef):
    """(params, images, index) -> ``importance_nll`` of a chunk of test images."""
    return jax.jit(lambda params, images, index: importance_nll(
        nnx.merge(graphdef, params), Batch({"x": images}, index), config, config.settings.importance_samples))


def final_evaluation(config: Config, graphdef: nnx.GraphDef, params: nnx.State,
                     dataset: data.Dataset) -> tuple[dict, dict]:
    """Importance-sampled test -log p(x); the pictures samples.png and reconstructions.png.

    Every draw here comes from the fixed evaluation key, so runs compare fairly.
    """
    model = nnx.merge(graphdef, params)
    images, num_test = dataset.test["x"], dataset.num_test
    batch_size = min(100, num_test)
    chunk_nll = _importance_chunk(config, graphdef)
    nll = []
    for start in range(0, num_test, batch_size):
        stop = min(start + batch_size, num_test)
        nll.append(chunk_nll(params, images[start:stop], jnp.arange(start, stop)))
    noise = latent_noise(eval_keys(EVAL_SAMPLES, jnp.arange(64)), config.settings.latents)
    samples = jax.nn.sigmoid(model.decode(noise))
    columns = min(8, num_test)
    rows = min(32, num_test) // columns  # 4 rows of 8 test images above their reconstructions, where there are 32
    count = rows * columns
    originals = binarize(images[:count], eval_keys(EVAL_BINARIZE, jnp.arange(count)), config)
    reconstructions = jax.nn.sigmoid(model.decode(model.encode(originals)[0]))
    shape = model.image_shape
    pairs = jnp.stack([originals.reshape(rows, columns, *shape), reconstructions.reshape(rows, columns, *shape)], 1)
    test_inputs = binarize(images, eval_keys(EVAL_BINARIZE, jnp.arange(num_test)), config)
    test_noise = latent_noise(eval_keys(EVAL_LATENT, jnp.arange(num_test)), config.settings.latents)
    return ({"test_nll_importance": float(jnp.concatenate(nll).mean()),
             "importance_samples": config.settings.importance_samples,
             "evaluation_fingerprint": manifest.arrays_hash([np.packbits(np.asarray(test_inputs, bool)), test_noise])},
            {"samples.png": (samples, 8), "reconstructions.png": (pairs.reshape(2 * count, *shape), columns)})


OBJECTIVE = Objective(
    name="vae",
    build=lambda config, spec, key: VAE(init_key=key, latents=config.settings.latents, image_shape=spec.shape(),
                                        portable=config.portable),
    train_loss=train_loss,
    eval_metrics=eval_metrics,
    streams=("augment", "latent"),
    drawn=lambda config: ("augment", "latent") if config.settings.binarize == "dynamic" else ("latent",),
    panels=(("negative ELBO (nats)", ("train_loss", "test_loss")),
            ("parts (nats)", ("train_reconstruction", "test_reconstruction", "train_kl", "test_kl"))),
    final_evaluation=final_evaluation,
    settings=VAESettings,
)
