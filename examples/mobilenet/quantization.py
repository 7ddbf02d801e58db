"""Quantized activations for the MobileNets: which module each relu6-family layer becomes.

A model's ``nonlinearity`` replaces its relu6 layers (``"relu6"``: unchanged,
``"relu"``: unbounded ReLU, ``"capped_relu"``: ``min(max(x, 0), cap)``), and
its ``activation_bits`` fake-quantizes every such layer's output to that many
bits (:func:`jrelu6.fake_quant`, straight-through gradient):

* ReLU6 on [0, 6] with :class:`jrelu6.linen.QuantizedReLU6`, affine (``2**b``
  levels, steps of ``6 / (2**b - 1)``) or fixed point (3 integer bits, steps
  of ``2**-(b - 3)``); hard-swish and hard-sigmoid quantize their inner relu6
  the same way (:class:`jrelu6.linen.QuantizedHardSwish`, ...).
* A capped ReLU on its fixed range [0, cap] (affine): no calibration.
* ReLU, which has no range of its own, on [0, r] with ``r`` a per-layer
  statistic of its outputs (:class:`QuantizedReLU`): during training (when
  ``batch_stats`` is mutable) ``r`` is a running mean (momentum 0.9, the first
  batch's value to start) of each batch's maximum or 99.99th percentile, kept
  in ``batch_stats`` beside batch norm's statistics, so evaluation and
  checkpoints use it. After float training the same layers are *calibrated*:
  with the :data:`CALIBRATION` collection mutable, each records both
  statistics of its outputs and returns them unquantized
  (:func:`calibrate`), and :func:`set_ranges` writes the ranges in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

import jrelu6
import jrelu6.linen
from jrelu6 import _quant
from mobilenet import int8_emulation

NONLINEARITIES = ("relu6", "relu", "capped_relu")
SCHEMES = ("affine", "fixed_point")
STATISTICS = ("max", "percentile")
#: The percentile of ``statistic="percentile"``.
PERCENTILE = 99.99
#: The collection a calibration pass records into (``mutable=[CALIBRATION]``).
CALIBRATION = "calibration"
#: The decay of a quantized ReLU's running range during training.
RANGE_MOMENTUM = 0.9
#: The smallest range a quantized ReLU uses.
MIN_RANGE = 1e-6


def range_statistics(y: jax.Array) -> dict[str, jax.Array]:
    """The maximum and the :data:`PERCENTILE`-th percentile of ``y`` (float32 scalars).

    The percentile is the k-th largest value with ``k = ceil(n * (1 - q / 100))``
    (``lax.top_k``: no full sort).
    """
    flat = y.reshape(-1).astype(jnp.float32)
    # 1e-6 absorbs the rounding of 100 - 99.99, so that 0.01% of 100,000 is 10, not 11.
    k = max(1, math.ceil(flat.size * (100.0 - PERCENTILE) / 100.0 - 1e-6))
    top = jax.lax.top_k(flat, k)[0]
    return {"max": top[0], "percentile": top[-1]}


class QuantizedReLU(nn.Module):
    """ReLU fake-quantized on [0, r], ``r`` a running or calibrated statistic of its outputs.

    Attributes:
      num_bits: the bit width (``None``: plain ReLU, but still calibratable).
      statistic: ``"max"`` or ``"percentile"`` (:data:`PERCENTILE`) of each
        training batch's outputs, averaged into ``r``.
    """

    num_bits: int | None = None
    statistic: str = "max"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(x)
        if self.is_mutable_collection(CALIBRATION) and not self.is_initializing():
            for name, value in range_statistics(y).items():
                self.sow(CALIBRATION, name, value)
            return y
        if self.num_bits is None:
            return y
        upper = self.variable("batch_stats", "range", jnp.zeros, (), jnp.float32)
        if self.is_mutable_collection("batch_stats") and not self.is_initializing():
            batch = jax.lax.stop_gradient(range_statistics(y)[self.statistic])
            upper.value = jnp.where(
                upper.value > 0, RANGE_MOMENTUM * upper.value + (1 - RANGE_MOMENTUM) * batch,
                batch)
        # Before the first training batch, or for a layer whose outputs are all 0, there is
        # no range: any positive one quantizes zeros to 0 (MIN_RANGE keeps the grid's step
        # and its reciprocal finite).
        top = jnp.maximum(upper.value, MIN_RANGE)
        return jrelu6.fake_quant(y, min=0.0, max=top, num_bits=self.num_bits)


class QuantizedCappedReLU(nn.Module):
    """``min(max(x, 0), cap)`` fake-quantized on [0, cap] (affine).

    Attributes:
      cap: the upper bound (> 0).
      num_bits: the bit width.
      grad_at_zero: the derivative at ``x == 0``.
      grad_at_cap: the derivative at ``x == cap``.
    """

    cap: float
    num_bits: int
    grad_at_zero: Any = 0.0
    grad_at_cap: Any = 0.0

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jrelu6.capped_relu(x, cap=self.cap, grad_at_zero=self.grad_at_zero,
                               grad_at_cap=self.grad_at_cap)
        return jrelu6.fake_quant(y, min=0.0, max=self.cap, num_bits=self.num_bits)


def check(name: str, *, nonlinearity: str, cap: float, activation_bits: int | None,
          quant_scheme: str, statistic: str, activation: str) -> None:
    """Raises ValueError (starting with ``name``) for settings no model can build."""
    for value, allowed, what in ((nonlinearity, NONLINEARITIES, "nonlinearity"),
                                 (quant_scheme, SCHEMES, "quant_scheme"),
                                 (statistic, STATISTICS, "calibration")):
        if value not in allowed:
            raise ValueError(f"{name}: {what} must be one of {allowed}, got {value!r}")
    if not cap > 0:
        raise ValueError(f"{name}: cap must be > 0, got {cap!r}")
    if activation_bits is not None and not (
            isinstance(activation_bits, int) and 2 <= activation_bits <= 16):
        raise ValueError(f"{name}: activation_bits must be None or an int in [2, 16], "
                         f"got {activation_bits!r}")
    if activation != "jrelu6" and (activation_bits is not None or nonlinearity != "relu6"):
        raise ValueError(f"{name}: activation_bits and nonlinearity need "
                         f"activation='jrelu6', got {activation!r}")
    if quant_scheme == "fixed_point" and nonlinearity != "relu6":
        raise ValueError(f"{name}: quant_scheme 'fixed_point' is relu6's 3-integer-bit "
                         f"grid; {nonlinearity} quantizes affinely")


def activation(kind: str, *, nonlinearity: str, cap: float, activation_bits: int | None,
               quant_scheme: str, statistic: str, grad_at_zero: Any,
               grad_at_six: Any) -> Callable[[jax.Array], jax.Array] | None:
    """The module of a ``kind`` layer ("relu6", "hard_swish", "hard_sigmoid", "relu").

    ``None`` when the model's own choice stands (float relu6 family, plain ReLU).
    """
    bits = activation_bits
    if kind == "relu":
        if nonlinearity == "relu" and bits is not None:
            return QuantizedReLU(num_bits=bits, statistic=statistic)
        return None
    if kind == "relu6" and nonlinearity == "relu":
        return QuantizedReLU(num_bits=bits, statistic=statistic)
    if kind == "relu6" and nonlinearity == "capped_relu":
        if bits is None:
            return jrelu6.linen.CappedReLU(cap=cap, grad_at_zero=grad_at_zero,
                                           grad_at_cap=grad_at_six)
        return QuantizedCappedReLU(cap=cap, num_bits=bits, grad_at_zero=grad_at_zero,
                                   grad_at_cap=grad_at_six)
    if bits is None:
        return None
    module = {"relu6": jrelu6.linen.QuantizedReLU6,
              "hard_swish": jrelu6.linen.QuantizedHardSwish,
              "hard_sigmoid": jrelu6.linen.QuantizedHardSigmoid}[kind]
    return module(num_bits=bits, scheme=quant_scheme, grad_at_zero=grad_at_zero,
                  grad_at_six=grad_at_six)


def calibrate(apply: Callable[..., Any], variables: Mapping[str, Any],
              batches: list[jax.Array]) -> dict[str, dict[str, Any]]:
    """Per-layer ranges of the :class:`QuantizedReLU` layers over ``batches``.

    Args:
      apply: the model's ``apply``.
      variables: its variables (eval mode: running batch-norm statistics).
      batches: normalized input batches (a few training batches).

    Returns:
      ``{"max": ranges, "percentile": ranges}``, each a ``batch_stats``-shaped
      tree of ``{"range": value}`` leaves: the largest batch maximum, and the
      mean of the batches' :data:`PERCENTILE`-th percentiles.
    """
    @jax.jit
    def record(variables, x):
        _, recorded = apply(variables, x, train=False, mutable=[CALIBRATION])
        return recorded.get(CALIBRATION, {})

    per_batch = [record(variables, x) for x in batches]
    flat = [traverse_util.flatten_dict(b) for b in per_batch]
    out: dict[str, dict[str, Any]] = {"max": {}, "percentile": {}}
    for path in flat[0]:
        *layer, statistic = path
        values = jnp.stack([f[path][0] for f in flat])
        value = jnp.max(values) if statistic == "max" else jnp.mean(values)
        out[statistic][(*layer, "range")] = value
    return {name: traverse_util.unflatten_dict(tree) for name, tree in out.items()}


def set_ranges(batch_stats: Mapping[str, Any], ranges: Mapping[str, Any]) -> dict[str, Any]:
    """``batch_stats`` with the quantized ReLUs' ``range`` entries of ``ranges`` added."""
    merged = traverse_util.flatten_dict(dict(batch_stats))
    merged.update(traverse_util.flatten_dict(dict(ranges)))
    return traverse_util.unflatten_dict(merged)


# --- full quantization-aware training: every tensor the int8 model holds -----------------
#
# With ``weight_bits`` a model trains what LiteRT's int8 file computes (see
# :class:`mobilenet.models.ConvBN` for the convolutions): weights per output channel
# (:func:`jrelu6.fake_quant_weights`, batch norm folded in first), and, with
# ``activation_bits`` too, every activation tensor: relu6 outputs on [0, 6], and the
# input, linear-bottleneck outputs, residual sums, pooled features, logits, ReLU and
# hard-swish outputs on a moving-average range (:class:`MovingRange`).

#: The decay of a :class:`MovingRange`'s running minimum and maximum.
MOVING_RANGE_MOMENTUM = 0.9
WEIGHT_GRANULARITIES = ("per_channel", "per_tensor")


class MovingRange(nn.Module):
    """Fake-quantizes a tensor on a running ``[min, max]`` (per tensor, asymmetric).

    In training (``batch_stats`` mutable) the range is a running mean (momentum
    :data:`MOVING_RANGE_MOMENTUM`; the first batch's values to start) of each batch's
    minimum and maximum, both widened to include 0, and the batch is quantized on the
    updated range; in evaluation on the stored one. The range is not differentiated.
    ``num_bits=None``: the identity (no variables).

    Attributes:
      num_bits: the bit width, or ``None``.
    """

    num_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.num_bits is None:
            return x
        lo = self.variable("batch_stats", "min", jnp.zeros, (), jnp.float32)
        hi = self.variable("batch_stats", "max", jnp.zeros, (), jnp.float32)
        if self.is_mutable_collection("batch_stats") and not self.is_initializing():
            wide = jax.lax.stop_gradient(x.astype(jnp.float32))
            batch_lo, batch_hi = jnp.minimum(jnp.min(wide), 0.0), jnp.maximum(jnp.max(wide), 0.0)
            seen = hi.value > lo.value
            m = MOVING_RANGE_MOMENTUM
            lo.value = jnp.where(seen, m * lo.value + (1 - m) * batch_lo, batch_lo)
            hi.value = jnp.where(seen, m * hi.value + (1 - m) * batch_hi, batch_hi)
        top = jnp.maximum(hi.value, lo.value + MIN_RANGE)
        return jrelu6.fake_quant(x, min=lo.value.astype(x.dtype), max=top.astype(x.dtype),
                                 num_bits=self.num_bits)

    def scale(self) -> jax.Array:
        """The step of the grid the last call quantized on (float32, not differentiated)."""
        return grid_scale(self.get_variable("batch_stats", "min"),
                          self.get_variable("batch_stats", "max"), self.num_bits)


def grid_scale(lo: Any, hi: Any, num_bits: int) -> jax.Array:
    """The step of :func:`jrelu6.fake_quant`'s grid on ``[lo, hi]`` (float32, as exported).

    ``hi`` is raised to ``lo + MIN_RANGE`` as :class:`MovingRange` does; relu6's grid is
    ``grid_scale(0, 6, bits)``.
    """
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    hi = jnp.maximum(hi, lo + MIN_RANGE)
    grid = _quant.nudge(lo, hi, 0, 2**num_bits - 1, jnp.float32)
    return jax.lax.stop_gradient(jnp.asarray(grid.scale, jnp.float32))


def fake_quant_bias(bias: jax.Array, in_scale: jax.Array, weight_scale: jax.Array
                    ) -> jax.Array:
    """``bias`` on LiteRT's int32 bias grid, ``in_scale * weight_scale`` (per channel).

    The int8 file stores ``round(bias / (in_scale * weight_scale))`` (half to even, as the
    exporter's ``np.round``), added to the integer accumulator: the layer then computes
    exactly the accumulator's grid. The gradient is the identity (straight through).
    """
    step = jax.lax.stop_gradient(jnp.asarray(in_scale, jnp.float32) * weight_scale)
    wide = bias.astype(jnp.float32)
    return wide + jax.lax.stop_gradient(jnp.round(wide / step) * step - wide)


def weight_scale(kernel: jax.Array, num_bits: int, granularity: str) -> jax.Array:
    """The scales of :func:`jrelu6.fake_quant_weights`' grid (per output channel, or one)."""
    _, scale = jrelu6.quantize_weights(jax.lax.stop_gradient(kernel), num_bits=num_bits,
                                       axis=weight_axis(granularity))
    return scale


def weight_axis(granularity: str) -> int | None:
    """The ``axis`` of :func:`jrelu6.fake_quant_weights`: -1 per channel, ``None`` per tensor."""
    return -1 if granularity == "per_channel" else None


class QuantDense(nn.Module):
    """``nn.Dense`` (same parameter names, shapes and initialisers) whose kernel is
    fake-quantized per output channel (or per tensor); given its input's scale
    (``in_scale``), the bias is put on the int8 file's int32 grid (:func:`fake_quant_bias`),
    else it stays float.

    Attributes:
      features: the outputs.
      weight_bits: the kernel's bit width.
      granularity: ``"per_channel"`` or ``"per_tensor"``.
      dtype: the compute dtype.
    """

    features: int
    weight_bits: int
    granularity: str = "per_channel"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, in_scale: jax.Array | None = None,
                 out: Any = None) -> jax.Array:
        """``x @ Q(kernel) + bias``; with ``in_scale`` and the output's grid ``out``
        (a :class:`mobilenet.int8_emulation.Grid`), the int8 file's integer arithmetic."""
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if in_scale is not None:
            bias = fake_quant_bias(
                bias, in_scale, weight_scale(kernel, self.weight_bits, self.granularity))
        if in_scale is not None and out is not None:
            q, scale = jrelu6.quantize_weights(kernel, num_bits=self.weight_bits,
                                               axis=weight_axis(self.granularity))
            return int8_emulation.dense_values(x, in_scale, q, scale, bias, out
                                               ).astype(self.dtype)
        kernel = jrelu6.fake_quant_weights(kernel, num_bits=self.weight_bits,
                                           axis=weight_axis(self.granularity))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.matmul(x, kernel) + bias


def check_qat(name: str, *, weight_bits: int | None, granularity: str,
              bn_freeze_step: int | None, batch_norm: bool, nonlinearity: str,
              quant_scheme: str, activation: str) -> None:
    """Raises ValueError (starting with ``name``) for QAT settings no model can build."""
    if weight_bits is not None and not (
            isinstance(weight_bits, int) and not isinstance(weight_bits, bool)
            and 2 <= weight_bits <= 16):
        raise ValueError(f"{name}: weight_bits must be None or an int in [2, 16], "
                         f"got {weight_bits!r}")
    if granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(f"{name}: weight_granularity must be one of "
                         f"{WEIGHT_GRANULARITIES}, got {granularity!r}")
    if weight_bits is None:
        if bn_freeze_step is not None:
            raise ValueError(f"{name}: bn_freeze_step needs weight_bits (batch norm is "
                             "folded only in quantization-aware training)")
        return
    if bn_freeze_step is not None and (not batch_norm or bn_freeze_step < 0):
        raise ValueError(f"{name}: bn_freeze_step needs batch_norm and must be >= 0, "
                         f"got {bn_freeze_step!r}")
    if nonlinearity != "relu6" or quant_scheme != "affine" or activation != "jrelu6":
        raise ValueError(f"{name}: weight_bits trains LiteRT's int8 model: it needs "
                         "nonlinearity='relu6', quant_scheme='affine' and "
                         f"activation='jrelu6', got {nonlinearity!r}, {quant_scheme!r}, "
                         f"{activation!r}")
