"""Batch normalization with its own backward pass: fewer passes over the activations.

Training-mode batch normalization of ``x`` (statistics over every axis but the
last, ``n`` values per channel):

.. math::

   \\mu = \\tfrac{1}{n}\\sum x, \\quad
   \\sigma^2 = \\max(\\tfrac{1}{n}\\sum x^2 - \\mu^2, 0), \\quad
   r = (\\sigma^2 + \\epsilon)^{-1/2}, \\quad
   y = (x - \\mu)\\, \\gamma r + \\beta,

as ``flax.linen.BatchNorm`` computes it (its default "fast variance"). Its
gradient, with ``g`` the output's cotangent and ``x_c = x - \\mu``:

.. math::

   \\partial\\beta = \\sum g, \\quad
   \\partial\\gamma = r \\sum g x_c, \\quad
   \\partial x = \\gamma r \\Big(g - \\tfrac{1}{n}\\sum g
                 - x_c\\, r^2\\, \\tfrac{1}{n}\\sum g x_c\\Big)

(plus the terms of the cotangents of the returned statistics, zero in
training). Differentiated by JAX, the forward pass keeps ``x - mu`` as a
full-size intermediate and the backward pass takes three reductions and
two full-size temporaries; written out as above (:func:`batch_norm`, a
:func:`jax.custom_vjp`) the forward pass is two reductions and one
elementwise pass, the backward two reductions (``x_c`` recomputed inside
them) and one elementwise pass. On a 2-core CPU that is about 1.4x faster
for a batch-norm + ReLU6 layer's forward and backward; the values agree with
flax's to float32 rounding (``tests/examples/test_batch_norm.py``).

:class:`BatchNorm` is the flax.linen layer: the parameters (``scale``,
``bias``) and batch statistics (``mean``, ``var``) of ``nn.BatchNorm``, with
the same initialisation and running-average update, so checkpoints and
weights carry over.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _reduce_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    axes = _reduce_axes(x)
    mean = jnp.mean(x, axes)
    var = jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    mean, var = _statistics(x)
    rstd = lax.rsqrt(var + epsilon)
    # y = x * a + b (as PyTorch's CPU kernel computes it), not (x - mean) * a + bias:
    # XLA would share a forward x - mean with the backward pass's and keep it in memory.
    a = scale * rstd
    y = x * a + (bias - mean * a)
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    del epsilon  # Used through rstd.
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    axes = _reduce_axes(x)
    n = math.prod(x.shape[:-1])
    sum_g = jnp.sum(g, axes)
    sum_g_xc = jnp.sum(g * (x - mean), axes)
    a = scale * rstd
    # dx = a * (g - sum_g / n - x_c * r^2 * sum_g_xc / n) + (g_mean + 2 g_var x_c) / n,
    # as g * c_g + x * c_x + c_0 with per-channel factors: one elementwise pass, and
    # x - mean (inside the reduction above) is not kept as a full-size array.
    c_g = a
    c_x = -a * rstd * rstd * sum_g_xc / n + 2 * g_var / n
    c_0 = -a * sum_g / n + g_mean / n - mean * c_x
    dx = g * c_g + x * c_x + c_0
    return dx, sum_g_xc * rstd, sum_g


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float = 1e-5
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch normalization over every axis but the last.

    Args:
      x: the input, shape ``(..., C)``.
      scale: ``gamma``, shape ``(C,)``, ``x``'s dtype.
      bias: ``beta``, shape ``(C,)``, ``x``'s dtype.
      epsilon: added to the variance.

    Returns:
      ``(y, mean, var)``: the normalized ``x`` and the batch's per-channel mean
      and (biased) variance, all differentiable.

    Examples:
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> y, mean, var = batch_norm(x, jnp.ones(2), jnp.zeros(2), epsilon=0.0)
      >>> y
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> mean, var
      (Array([ 2., 20.], dtype=float32), Array([  1., 100.], dtype=float32))
    """
    if x.ndim < 2 or scale.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
        raise ValueError(f"batch_norm: need x (..., C) and scale, bias (C,), got x {x.shape}, "
                         f"scale {scale.shape}, bias {bias.shape}")
    return _batch_norm(x, scale, bias, float(epsilon))


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis, with :func:`batch_norm` in training.

    The same variables (params ``scale``, ``bias``; batch_stats ``mean``,
    ``var``), initialisers and running-average update
    (``new = momentum * old + (1 - momentum) * batch``, not while
    initialising) as ``nn.BatchNorm(use_running_average=..., momentum=...,
    epsilon=...)`` with its other settings at their defaults.

    Attributes:
      use_running_average: normalize with the running statistics (evaluation)
        instead of the batch's (training).
      momentum: the running averages' decay.
      epsilon: added to the variance.
      dtype: the compute dtype (``None``: the input's).
      param_dtype: the parameters' dtype.
      scale_init: the scale's initialiser.
      bias_init: the bias's initialiser.
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable[..., jax.Array] = nn.initializers.ones_init()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        x, scale, bias = nn.dtypes.promote_dtype(x, scale, bias, dtype=self.dtype)
        if self.use_running_average:
            mean, var = ra_mean.value.astype(x.dtype), ra_var.value.astype(x.dtype)
            return (x - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
        y, mean, var = batch_norm(x, scale, bias, epsilon=self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
