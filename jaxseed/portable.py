"""A dense layer's product whose kernel gradient rounds alike on any x86 CPU (``--portable``).

With ``--portable``'s XLA flags (``jaxseed.machine``), every matmul, convolution and
gradient of the CNN gave this CPU's bits on emulated Haswell, EPYC-Rome and Broadwell
CPUs, but the VAE's kernel gradients did not: W's gradient x.T @ g contracts over the
batch, and for its shapes XLA's dot (and an einsum over chunks of the batch) summed in
another order on an emulated Haswell. The same sum written as elementwise products
reduced by XLA's own reduce matched there, and here equals the dot bit for bit:

    dW[i, j] = sum_b x[b, i] * g[b, j]      (b in order, one output element at a time)

XLA fuses the product into the reduction, so nothing of size batch x in x out is stored.
A model passes ``dot_general`` to ``nnx.Linear`` under ``config.portable``.
"""

from __future__ import annotations

import jax
from jax import lax


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x float[B, I] @ w float[I, O]; its gradient for w as a reduction over B (above)."""
    return x @ w


def _forward(x, w):
    return x @ w, (x, w)


def _backward(residuals, grad):
    x, w = residuals
    return grad @ w.T, (x[:, :, None] * grad[:, None, :]).sum(0)


matmul.defvjp(_forward, _backward)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None) -> jax.Array:
    """``lax.dot_general`` as ``nnx.Linear`` calls it (lhs[..., I] with a kernel [I, O]), by ``matmul``."""
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
        raise ValueError(f"portable.dot_general computes what nnx.Linear asks (lhs[..., I] with a kernel[I, O]); "
                         f"got dimension numbers {dimension_numbers} for shapes {lhs.shape}, {rhs.shape}")
    return matmul(lhs.reshape(-1, lhs.shape[-1]), rhs).reshape(*lhs.shape[:-1], rhs.shape[1])


def linear_options(on: bool) -> dict:
    """``nnx.Linear``'s keyword arguments: this module's product when ``on`` (``config.portable``),
    else XLA's own (a run without ``--portable`` keeps its bits)."""
    return {"dot_general": dot_general if on else lax.dot_general}
