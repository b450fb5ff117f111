"""What each model is trained and scored on, and which streams it draws from.

An ``Objective`` bundles, for one model: how to build it from the ``init`` key,
the training loss (given one key per example of each stream it draws from), the
evaluation sums, the evaluation after training, and which streams a config
really draws from. The one training loop (``loop.py``) runs any of them the same way.

Metrics are returned as sums over a batch plus ``count``; the loop divides.
Evaluation draws come from ``streams.evaluation_key()`` at fixed positions, so
every run, whatever its seeds, is scored on the same test draws.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxseed import augment, data, manifest, streams
from jaxseed.config import Config
from jaxseed.models import CNN, VAE

# Positions under the evaluation key; fixed forever, like the stream ids.
EVAL_BINARIZE, EVAL_LATENT, EVAL_IMPORTANCE, EVAL_SAMPLES = range(4)


class Batch(NamedTuple):
    images: jax.Array  # uint8[B, 28, 28, 1]
    labels: jax.Array  # int32[B]
    index: jax.Array  # int32[B], each example's index in its split


class Objective(NamedTuple):
    streams: tuple[str, ...]
    build: Callable[[Config, jax.Array], nnx.Module]
    # (model, batch, config, *, <stream>_keys: key[B] for each per-example stream it uses)
    #   -> (mean loss, metric sums)
    train_loss: Callable
    # (model, batch of the test split, config) -> (per-example metrics, float[B] each;
    #                                             class probabilities float[B, C] or None)
    eval_metrics: Callable
    # config -> the streams this config really draws from (dropout at rate 0 draws nothing)
    drawn: Callable[[Config], tuple[str, ...]]
    panels: dict[str, tuple[str, ...]]
    # (config, graphdef, params, host data set) -> (what the manifest adds after training,
    #                                              pictures: {file name: (images float[N, H, W, 1], columns)})
    final_evaluation: Callable[[Config, nnx.GraphDef, nnx.State, data.Dataset], tuple[dict, dict]]


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


# ---------------------------------------------------------------- classifier


def classifier_train_loss(model: CNN, batch: Batch, config: Config, *, augment_keys: jax.Array,
                          dropout_keys: jax.Array):
    """Cross-entropy on augmented images; each example's rotation and shift from its
    ``augment`` key, its dropout mask from its ``dropout`` key (both key[B])."""
    images = to_unit(batch.images)
    if config.augment == "affine":
        draws = augment.sample_affine(augment_keys, config.max_translation, config.max_rotation)
        images = augment.apply_affine(images, draws)
    logits = model(images, train=True, dropout_keys=dropout_keys)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
    correct = jnp.argmax(logits, -1) == batch.labels
    return losses.mean(), {"loss": losses.sum(), "accuracy": correct.sum(), "count": batch.labels.shape[0]}


def classifier_eval_metrics(model: CNN, batch: Batch, config: Config):
    logits = model(to_unit(batch.images), train=False)
    metrics = {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels),
               "accuracy": (jnp.argmax(logits, -1) == batch.labels).astype(jnp.float32)}
    return metrics, jax.nn.softmax(logits)


CLASSIFIER = Objective(
    streams=CNN.STREAMS,
    build=lambda config, key: CNN(init_key=key, dropout_rate=config.dropout_rate),
    train_loss=classifier_train_loss,
    eval_metrics=classifier_eval_metrics,
    drawn=lambda config: tuple(name for name in CNN.STREAMS if not (
        (name == "dropout" and config.dropout_rate == 0) or (name == "augment" and config.augment == "none"))),
    panels={"loss": ("train_loss", "test_loss"), "accuracy": ("train_accuracy", "test_accuracy")},
    final_evaluation=lambda config, graphdef, params, dataset: ({}, {}),
)


# ---------------------------------------------------------------- VAE


def binarize(images: jax.Array, keys: jax.Array, config: Config) -> jax.Array:
    """uint8 images -> float {0, 1}: pixel ~ Bernoulli(grey level), one key per example,
    or a fixed threshold at 0.5 when ``config.binarize == "threshold"``."""
    grey = to_unit(images)
    if config.binarize == "threshold":
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
      x: binary images float[B, 28, 28, 1]; eps: standard normal noise float[B, latents].
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


def vae_train_loss(model: VAE, batch: Batch, config: Config, *, augment_keys: jax.Array, latent_keys: jax.Array):
    """-ELBO on dynamically binarised images (each example's pixels from its ``augment``
    key), with reparameterisation noise from its ``latent`` key (both key[B])."""
    x = binarize(batch.images, augment_keys, config)
    eps = latent_noise(latent_keys, model.latents)
    reconstruction, kl = negative_elbo(model, x, eps)
    loss = reconstruction + kl
    return loss.mean(), {"loss": loss.sum(), "reconstruction": reconstruction.sum(), "kl": kl.sum(),
                         "count": batch.labels.shape[0]}


def eval_keys(position: int, index: jax.Array) -> jax.Array:
    """Per-example keys of the fixed evaluation draws at ``position``."""
    return streams.per_example_keys(streams.evaluation_key(), position, index)


def vae_eval_metrics(model: VAE, batch: Batch, config: Config):
    """-ELBO and its parts on the test set, from fixed evaluation draws."""
    x = binarize(batch.images, eval_keys(EVAL_BINARIZE, batch.index), config)
    reconstruction, kl = negative_elbo(model, x, latent_noise(eval_keys(EVAL_LATENT, batch.index), model.latents))
    return {"loss": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}, None


def importance_nll(model: VAE, batch: Batch, config: Config, samples: int) -> jax.Array:
    """-log p(x) estimated with ``samples`` importance samples from q (Burda et al., 2016).

        log p(x) ~= logsumexp_k [log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)] - log K

    Returns float[B], nats per image; a tighter bound than -ELBO.
    """
    x = binarize(batch.images, eval_keys(EVAL_BINARIZE, batch.index), config)
    mean, logvar = model.encode(x)
    eps = latent_noise(eval_keys(EVAL_IMPORTANCE, batch.index), model.latents, (samples,))  # [B, K, L]
    z = mean[:, None] + jnp.exp(0.5 * logvar[:, None]) * eps
    logits = model.decode(z)  # [B, K, 28, 28, 1]
    log_likelihood = -optax.sigmoid_binary_cross_entropy(logits, x[:, None]).reshape(*z.shape[:2], -1).sum(-1)
    log_prior = gaussian_log_density(z, 0.0, jnp.zeros_like(z))
    log_posterior = gaussian_log_density(z, mean[:, None], logvar[:, None])
    log_weights = log_likelihood + log_prior - log_posterior
    return -(jax.nn.logsumexp(log_weights, axis=1) - math.log(samples))


@functools.lru_cache(maxsize=16)  # runs of one shape (an ablation's, a test's) compile it once
def _importance_chunk(config: Config, graphdef: nnx.GraphDef):
    """(params, images, labels, index) -> ``importance_nll`` of a chunk of test images."""
    return jax.jit(lambda params, images, labels, index: importance_nll(
        nnx.merge(graphdef, params), Batch(images, labels, index), config, config.importance_samples))


def vae_final_evaluation(config: Config, graphdef: nnx.GraphDef, params: nnx.State,
                         dataset: data.Dataset) -> tuple[dict, dict]:
    """Importance-sampled test -log p(x); the pictures samples.png and reconstructions.png.

    Every draw here comes from the fixed evaluation key, so runs compare fairly.
    """
    model = nnx.merge(graphdef, params)
    num_test = dataset.test_images.shape[0]
    batch_size = min(100, num_test)
    chunk_nll = _importance_chunk(config, graphdef)
    nll = []
    for start in range(0, num_test, batch_size):
        stop = min(start + batch_size, num_test)
        nll.append(chunk_nll(params, dataset.test_images[start:stop], dataset.test_labels[start:stop],
                             jnp.arange(start, stop)))
    noise = latent_noise(eval_keys(EVAL_SAMPLES, jnp.arange(64)), config.latents)
    samples = jax.nn.sigmoid(model.decode(noise))
    shown = Batch(dataset.test_images[:32], dataset.test_labels[:32], jnp.arange(32))
    originals = binarize(shown.images, eval_keys(EVAL_BINARIZE, shown.index), config)
    reconstructions = jax.nn.sigmoid(model.decode(model.encode(originals)[0]))
    pairs = jnp.stack([originals.reshape(4, 8, 28, 28, 1), reconstructions.reshape(4, 8, 28, 28, 1)], 1)
    test_inputs = binarize(dataset.test_images, eval_keys(EVAL_BINARIZE, jnp.arange(num_test)), config)
    test_noise = latent_noise(eval_keys(EVAL_LATENT, jnp.arange(num_test)), config.latents)
    return ({"test_nll_importance": float(jnp.concatenate(nll).mean()),
             "importance_samples": config.importance_samples,
             "evaluation_fingerprint": manifest.arrays_hash([np.packbits(np.asarray(test_inputs, bool)), test_noise])},
            {"samples.png": (samples, 8), "reconstructions.png": (pairs.reshape(64, 28, 28, 1), 8)})


VAE_OBJECTIVE = Objective(
    streams=VAE.STREAMS,
    build=lambda config, key: VAE(init_key=key, latents=config.latents),
    train_loss=vae_train_loss,
    eval_metrics=vae_eval_metrics,
    drawn=lambda config: tuple(name for name in VAE.STREAMS
                               if not (name == "augment" and config.binarize == "threshold")),
    panels={"negative ELBO (nats)": ("train_loss", "test_loss"),
            "parts (nats)": ("train_reconstruction", "test_reconstruction", "train_kl", "test_kl")},
    final_evaluation=vae_final_evaluation,
)

OBJECTIVES = {"cnn": CLASSIFIER, "vae": VAE_OBJECTIVE}
