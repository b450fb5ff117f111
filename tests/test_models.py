"""jaxseed's max-pool is Flax's, bit for bit, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseed.models.cnn import max_pool_2x2


def flax_max_pool(x):
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(3, 28, 28, 4), (2, 14, 6, 3)])
def test_max_pool_matches_flax_with_ties(shape):
    """ReLU outputs tie often (zeros; equal positive values over a constant background):
    the gradient must go to each window's first maximum only, as Flax's does."""
    draws = np.random.default_rng(0).integers(-2, 3, shape).astype(np.float32)
    x = jax.nn.relu(jnp.asarray(draws) * 0.5)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])),
                            jnp.float32)
    ours, our_vjp = jax.vjp(max_pool_2x2, x)
    theirs, their_vjp = jax.vjp(flax_max_pool, x)
    assert (ours == theirs).all()
    our_grad, their_grad = our_vjp(cotangent)[0], their_vjp(cotangent)[0]
    assert float(jnp.sum(their_grad != 0)) == cotangent.size  # one position per window gets the gradient
    np.testing.assert_array_equal(np.asarray(our_grad), np.asarray(their_grad))
    jitted_grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * cotangent)))(x)
    np.testing.assert_array_equal(np.asarray(jitted_grad), np.asarray(their_grad))
