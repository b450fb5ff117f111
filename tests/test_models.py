"""jaxseed's max-pool is Flax's, bit for bit, forward and backward; the CNN's block is autodiff's but for
the order of the bias gradient's sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseed.models.cnn import conv_relu_pool, max_pool_2x2


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


@pytest.mark.parametrize("channels", [1, 3])
def test_the_block_is_autodiffs_but_for_the_order_of_the_bias_sum(channels):
    """conv_relu_pool against max_pool_2x2(relu(conv(x))) differentiated by JAX: the same values and
    input and kernel gradients bit for bit, ties included (integer inputs and weights make equal
    maxima and exact zeros common); the bias gradient equal to rounding."""
    generator = np.random.default_rng(channels)
    conv = nnx.Conv(channels, 8, (3, 3), rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(generator.integers(-1, 2, conv.kernel.shape) * 0.25, jnp.float32)
    conv.bias[...] = jnp.asarray(generator.normal(size=8), jnp.float32)
    x = jnp.asarray(generator.integers(-2, 3, (4, 8, 6, channels)), jnp.float32)
    cotangent = jnp.asarray(generator.normal(size=(4, 4, 3, 8)), jnp.float32)

    graphdef, params = nnx.split(conv)

    def gradients(block):
        def loss(x, params):
            return jnp.sum(block(nnx.merge(graphdef, params), x) * cotangent)

        dx, dparams = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, params)
        return block(conv, x), (dx, dparams["kernel"][...], dparams["bias"][...])

    value, (dx, dkernel, dbias) = gradients(conv_relu_pool)
    want, (want_dx, want_dkernel, want_dbias) = gradients(lambda conv, x: max_pool_2x2(nnx.relu(conv(x))))
    windows = conv(x).reshape(4, 4, 2, 3, 2, 8)
    ties = (windows == windows.max((2, 4), keepdims=True)).sum((2, 4)) > 1
    assert float(jnp.mean(want == 0)) > 0.1 and float(jnp.mean(ties)) > 0.1  # zeros and ties occur
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(want_dx))
    np.testing.assert_array_equal(np.asarray(dkernel), np.asarray(want_dkernel))
    np.testing.assert_allclose(np.asarray(dbias), np.asarray(want_dbias), rtol=1e-5, atol=1e-6)
