"""Training-mode batch normalisation with a two-pass backward and no centred copy.

``flax.linen.BatchNorm`` computes the batch mean and the mean of squares as two
reductions, keeps ``x - mean`` for the backward pass and leaves the backward
to autodiff. On XLA:CPU, where a MobileNet's training step is bound by memory
traffic, that is four passes over each normalised activation forward (two
reductions, the centred copy, the normalisation) and more backward.
:func:`batch_norm` does the same arithmetic with fewer passes over the data:

* forward: :math:`\\sum x` and :math:`\\sum x^2` (as flax, two
  reductions that XLA may fuse), and no centred copy is kept; the normalisation
  :math:`y = (x - \\mu)\\,\\gamma / \\sqrt{\\sigma^2 + \\epsilon} + \\beta`
  then fuses with whatever follows it (the activation);
* backward (a :func:`jax.custom_vjp`): one variadic reduction gives
  :math:`\\sum \\partial y` and :math:`\\sum \\partial y\\,\\hat x` (the bias
  and scale gradients), one elementwise pass the input gradient

  .. math::
     \\partial x = \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}
       \\Big(\\partial y - \\frac{\\sum \\partial y}{n}
       - \\hat x\\,\\frac{\\sum \\partial y\\,\\hat x}{n}\\Big),
     \\qquad \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}},

  from the saved input alone (no centred copy is kept).

The statistics are flax's: :math:`\\sigma^2 = \\max(0, \\overline{x^2} -
\\bar x^2)` (the biased batch variance), in float32 for half-precision inputs;
:class:`BatchNorm` has ``nn.BatchNorm``'s parameters (``scale``, ``bias``),
running statistics (``mean``, ``var``) and momentum convention, so the two
are interchangeable in a checkpoint (``tests/examples/test_batch_norm.py``
checks outputs, gradients and statistics against ``nn.BatchNorm``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet.depthwise import accumulator_dtype


def _sums(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """Per-channel sums of several ``(N, H, W, C)`` arrays, with one pass over them.

    One variadic reduction sums each row (axis 2) of all the arrays together;
    the ``(N, H, C)`` partial sums, ``W`` times smaller, are then summed by
    ordinary reductions. Summing the rows first keeps float32's rounding error
    close to that of a tree-shaped sum: one running sum over every position
    loses precision on large batches, which the backward pass's cancellations
    then magnify.
    """
    zeros = tuple(jnp.zeros((), x.dtype) for x in xs)
    rows = lax.reduce(xs, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    return tuple(jnp.sum(r, axis=(0, 1)) for r in rows)


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = x.size // x.shape[-1]
    # Two plain reductions, not one variadic pass: the fast variance
    # E[x^2] - E[x]^2 cancels, and with the variadic reduction's rounding the
    # float32 gradients of a deep network drifted ~300x further from float64
    # ones than flax's (measured on MobileNetV2); XLA's own reductions match flax.
    axes = tuple(range(x.ndim - 1))
    total, squares = jnp.sum(x, axis=axes), jnp.sum(x * x, axis=axes)
    mean = total / n
    return mean, jnp.maximum(0.0, squares / n - mean * mean)


@jax.custom_vjp
def _normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean, var = _statistics(x)
    y = (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
    return y, mean, var


def _normalize_fwd(x, scale, bias, epsilon):
    mean, var = _statistics(x)
    inv = lax.rsqrt(var + epsilon)
    y = (x - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale, epsilon)


def _normalize_bwd(residuals, cotangents):
    x, mean, inv, scale, epsilon = residuals
    dy, dmean, dvar = cotangents
    n = x.size // x.shape[-1]
    xhat = (x - mean) * inv
    dbias, dscale = _sums(dy, dy * xhat)
    dx = (scale * inv) * (dy - dbias / n - xhat * (dscale / n))
    # The batch statistics are outputs too (for the running averages); their
    # cotangents are zero in training, but the rule is complete without that.
    dx = dx + dmean / n + dvar * (2.0 / n) * (x - mean)
    return dx, dscale, dbias, jnp.zeros_like(epsilon)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises an NHWC batch with its own statistics over the batch and positions.

    Args:
      x: ``(N, H, W, C)``; half-precision inputs are normalised in float32 and the
        result cast back.
      scale: ``(C,)``, the learned :math:`\\gamma`.
      bias: ``(C,)``, the learned :math:`\\beta`.
      epsilon: added to the variance.

    Returns:
      ``(y, mean, var)``: ``y`` in ``x``'s dtype, and the float32 (at least)
      batch mean and biased variance, for the running averages.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1.0, 3.0]).reshape(2, 1, 1, 1)
      >>> y, mean, var = batch_norm(x, jnp.ones(1), jnp.zeros(1), epsilon=0.0)
      >>> y.ravel(), mean, var
      (Array([-1.,  1.], dtype=float32), Array([2.], dtype=float32), Array([1.], dtype=float32))
    """
    if x.ndim != 4:
        raise ValueError(f"batch_norm: x must be (N, H, W, C), got shape {x.shape}")
    dtype = accumulator_dtype(x.dtype)
    y, mean, var = _normalize(x.astype(dtype), scale.astype(dtype), bias.astype(dtype),
                              jnp.asarray(epsilon, dtype))
    return y.astype(x.dtype), mean, var


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` of an NHWC batch, with :func:`batch_norm` in training.

    The same parameters (``scale`` ones, ``bias`` zeros), running statistics
    (``mean`` zeros, ``var`` ones, in the ``"batch_stats"`` collection) and
    update (``new = momentum * old + (1 - momentum) * batch``); evaluation
    normalises with the running statistics, as ``nn.BatchNorm`` does.

    Attributes:
      use_running_average: normalise with the running statistics (evaluation).
      momentum: the running statistics' decay.
      epsilon: added to the variance.
      dtype: the output dtype (``None``: the input's).
      param_dtype: the parameters' dtype.
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        stats_dtype = accumulator_dtype(self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean",
                                lambda: jnp.zeros((features,), stats_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), stats_dtype))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        out_dtype = self.dtype or x.dtype
        if self.use_running_average:
            dtype = accumulator_dtype(x.dtype)
            inv = lax.rsqrt(ra_var.value.astype(dtype) + self.epsilon) * scale.astype(dtype)
            y = (x.astype(dtype) - ra_mean.value.astype(dtype)) * inv + bias.astype(dtype)
            return y.astype(out_dtype)
        y, mean, var = batch_norm(x, scale, bias, epsilon=self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(out_dtype)
