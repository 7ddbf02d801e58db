"""LiteRT's int8 arithmetic in JAX: the QAT model's evaluation computes the file's integers.

LiteRT's Python interpreter runs an int8 MobileNet through its XNNPACK delegate (and a
few ops through TFLite's own kernels). Where the QAT model's fake quantization
requantizes in float (``acc x s_in x s_w``, then ``fake_quant`` on the output range),
those kernels each round in their own way; a value within about 1e-4 of a level's
midpoint then lands on the other level, and a deep network spreads that. This module
computes each requantization as the kernel does, on integer levels held in float32
(exact below 2**24) or int32:

* convolution and fully connected (XNNPACK ``qs8_qc8w``, "fp32" requantization): the
  int32 accumulator times the float32 scale ``fl(fl(s_in x s_w) / s_out)``, rounded
  half to even, plus the output zero point, clamped (:func:`requantize`);
* ADD (XNNPACK ``qs8_vadd``): each input's difference from its zero point times a 21-bit
  integer multiplier ``rint(s_x / s_out x 2**shift)``, summed with a rounding bias and
  shifted right by ``shift = 20 - floor(log2(max ratio))`` (:func:`add`);
* SUM over the spatial axes (TFLite's optimized ``QuantizedMeanOrSum``, float): the sum
  of the raw int8 values times ``fl(s_in / s_out)`` plus ``fl(fl(-z_in x ratio) x n)``,
  rounded half away from zero (:func:`spatial_sum`);
* MUL (XNNPACK ``qs8_vmul``, "fp32"): the product of both inputs' differences from their
  zero points times ``fl(fl(s_a x s_b) / s_out)``, rounded half to even (:func:`multiply`);
* HARD_SWISH (TFLite's own kernel, in 16-bit fixed point; XNNPACK leaves it): a table
  of the 256 input levels (:func:`hard_swish_table`).

Levels are unsigned, ``[0, 2**bits - 1]``, with the zero point of
:func:`jrelu6.fake_quant`'s nudged grid (:func:`grid`); LiteRT's int8 values are the
levels minus 128 (for 8 bits), which changes none of the formulas below.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import jrelu6

#: The bits of XNNPACK's ADD multipliers (``shift = MULTIPLIER_BITS - exponent``).
MULTIPLIER_BITS = 20


class Grid(NamedTuple):
    """A tensor's quantization grid: ``value = (level - zero_point) * scale``.

    Attributes:
      scale: the step (float32 scalar, as stored in the file).
      zero_point: the level of 0 (int32 scalar in ``[0, 2**bits - 1]``).
      num_bits: the bit width.
    """

    scale: jax.Array
    zero_point: jax.Array
    num_bits: int


def grid(lo: Any, hi: Any, num_bits: int, *, min_range: float = 1e-6) -> Grid:
    """The grid :func:`jrelu6.fake_quant` quantizes ``[lo, hi]`` on (nudged so 0 is a level).

    ``hi`` is raised to ``lo + min_range`` as the QAT ranges are
    (:class:`mobilenet.quantization.MovingRange`); the exporter writes the same scale
    and the zero point minus ``2**(bits - 1)``.
    """
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    hi = jnp.maximum(hi, lo + min_range)
    scale, zero_point = jrelu6.quantization_params(min=lo, max=hi, num_bits=num_bits)
    return Grid(jax.lax.stop_gradient(scale), jax.lax.stop_gradient(zero_point), num_bits)


def offsets(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``level - zero_point`` of values ``x`` on a grid of step ``scale`` (int32)."""
    return jnp.round(x.astype(jnp.float32) / jnp.asarray(scale, jnp.float32)).astype(jnp.int32)


def dequantize(levels: jax.Array, out: Grid) -> jax.Array:
    """``(levels - zero_point) * scale`` in float32."""
    return (levels - out.zero_point).astype(jnp.float32) * out.scale


def _clamp(levels: jax.Array, out: Grid, relu: bool) -> jax.Array:
    low = out.zero_point if relu else 0
    return jnp.clip(levels, low, 2**out.num_bits - 1)


def requantize(accumulator: jax.Array, in_scale: Any, weight_scale: Any, out: Grid, *,
               relu: bool = False) -> jax.Array:
    """Output levels of a convolution or dense layer from its int32 accumulator.

    XNNPACK's fp32 requantization: ``rint(fl(acc) * fl(fl(s_in * s_w) / s_out)) + z``,
    clamped to the levels (``relu``: from the zero point up, a fused ReLU).

    Args:
      accumulator: the sum of ``(x level - x zero point) * int8 weight`` plus the int32
        bias, integers (float32 or int32), output channels last.
      in_scale: the input's scale.
      weight_scale: the weights' scales, per output channel or one.
      out: the output's grid.
      relu: clamp below at the zero point.

    Returns:
      The output levels (int32).
    """
    product = jnp.asarray(in_scale, jnp.float32) * jnp.asarray(weight_scale, jnp.float32)
    ratio = product / out.scale
    scaled = accumulator.astype(jnp.float32) * ratio
    return _clamp(jnp.round(scaled).astype(jnp.int32) + out.zero_point, out, relu)


def add_multipliers(a_scale: Any, b_scale: Any, out_scale: Any
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """XNNPACK's ADD parameters: the integer multipliers of both inputs and the shift.

    ``ratio_x = fl(s_x / s_out)``; ``shift = 20 - floor(log2(max ratio))``;
    ``multiplier_x = rint(ratio_x * 2**shift)`` (so the larger is in ``[2**20, 2**21]``).
    """
    out_scale = jnp.asarray(out_scale, jnp.float32)
    ra = jnp.asarray(a_scale, jnp.float32) / out_scale
    rb = jnp.asarray(b_scale, jnp.float32) / out_scale
    _, exponent = jnp.frexp(jnp.maximum(ra, rb))  # max = m * 2**exponent, m in [0.5, 1).
    shift = MULTIPLIER_BITS - (exponent - 1)
    ma = jnp.round(jnp.ldexp(ra, shift)).astype(jnp.int32)
    mb = jnp.round(jnp.ldexp(rb, shift)).astype(jnp.int32)
    return ma, mb, shift.astype(jnp.int32)


def add(a: jax.Array, b: jax.Array, a_scale: Any, b_scale: Any, out: Grid) -> jax.Array:
    """Output levels of LiteRT's int8 ADD (XNNPACK's ``qs8_vadd``).

    Args:
      a, b: each input's ``level - zero_point`` (int32, :func:`offsets`).
      a_scale, b_scale: their scales.
      out: the output's grid.

    Returns:
      ``((2**(shift - 1) + m_a * a + m_b * b) >> shift) + z``, clamped (int32 levels).
    """
    ma, mb, shift = add_multipliers(a_scale, b_scale, out.scale)
    rounding = jnp.left_shift(jnp.int32(1), shift - 1)
    total = rounding + ma * a.astype(jnp.int32) + mb * b.astype(jnp.int32)
    return _clamp(jnp.right_shift(total, shift) + out.zero_point, out, False)


def round_half_away(x: jax.Array) -> jax.Array:
    """``std::round``: to the nearest integer, ties away from zero (exact in float32)."""
    whole = jnp.trunc(x)
    return whole + jnp.where(jnp.abs(x - whole) >= 0.5, jnp.sign(x), 0.0)


def spatial_sum(x_offsets: jax.Array, x_grid: Grid, out_scale: Any, out_zero_point: Any
                ) -> jax.Array:
    """Output levels of LiteRT's int8 SUM over axes 1 and 2 (TFLite's optimized kernel).

    The kernel sums the raw int8 values ``q = offset + z_in - 2**(bits - 1)`` exactly, then
    computes ``round(fl(sum) * r + fl(fl(-z_in * r) * n))`` with ``r = fl(s_in / s_out)``,
    ties away from zero, plus the output's zero point.

    Args:
      x_offsets: the input's ``level - zero_point`` (int32, NHWC).
      x_grid: the input's grid.
      out_scale: the output tensor's scale (the mean's scale times ``n = H * W``).
      out_zero_point: the output's zero point (a level).

    Returns:
      The output levels (int32, NC).
    """
    half = 2 ** (x_grid.num_bits - 1)
    z_in = x_grid.zero_point - half
    raw = x_offsets + z_in
    count = x_offsets.shape[1] * x_offsets.shape[2]
    total = jnp.sum(raw, axis=(1, 2)).astype(jnp.float32)
    ratio = x_grid.scale / jnp.asarray(out_scale, jnp.float32)
    bias = (-z_in).astype(jnp.float32) * ratio * jnp.float32(count)
    levels = round_half_away(total * ratio + bias).astype(jnp.int32) + out_zero_point
    return jnp.clip(levels, 0, 2**x_grid.num_bits - 1)


def multiply(a: jax.Array, b: jax.Array, a_scale: Any, b_scale: Any, out: Grid) -> jax.Array:
    """Output levels of LiteRT's int8 MUL (XNNPACK's ``qs8_vmul``, "fp32" requantization).

    Args:
      a, b: each input's ``level - zero_point`` (int32, broadcasting).
      a_scale, b_scale: their scales.
      out: the output's grid.

    Returns:
      ``rint(fl(a * b) * fl(fl(s_a * s_b) / s_out)) + z``, clamped (int32 levels).
    """
    product = jnp.asarray(a_scale, jnp.float32) * jnp.asarray(b_scale, jnp.float32)
    ratio = product / out.scale
    scaled = (a.astype(jnp.int32) * b.astype(jnp.int32)).astype(jnp.float32) * ratio
    return _clamp(jnp.round(scaled).astype(jnp.int32) + out.zero_point, out, False)


def _divide(a: Any, b: Any) -> jax.Array:
    """``fl(a / b)`` in float32, a true division: XLA turns a division by a scalar (or a
    constant) into a product by its reciprocal, which rounds differently."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    a, b = lax.optimization_barrier((jnp.full((2,), a), jnp.full((2,), b)))
    return (a / b)[0]


def _multiplier_q15(real: jax.Array) -> tuple[jax.Array, jax.Array]:
    """TFLite's ``QuantizeMultiplier`` then ``DownScaleInt32ToInt16Multiplier``: a positive
    float32 ``real = m * 2**exponent`` (``m`` in [0.5, 1)) as the int16 ``round(m * 2**15)``
    (via the int32 ``m * 2**31``, exact for a float32) and the exponent."""
    mantissa, exponent = jnp.frexp(real)
    q31 = jnp.left_shift((mantissa * 2.0**24).astype(jnp.int32), 7)
    q15 = jnp.where(q31 >= 2**31 - 1 - 2**15, 2**15 - 1,
                    jnp.right_shift(q31 + 2**15, 16))
    return q15, exponent.astype(jnp.int32)


def _rounding_doubling_high_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` of int16 values (in int32)."""
    ab = a * b
    nudge = jnp.where(ab >= 0, 2**14, 1 - 2**14)
    high = lax.div(ab + nudge, jnp.int32(2**15))  # C's division: toward zero.
    return jnp.where((a == b) & (a == -(2**15)), 2**15 - 1, high)


def _doubling_high_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """TFLite's ``SaturatingDoublingHighMul``: the same, truncated instead of rounded."""
    high = lax.div(a * b, jnp.int32(2**15))
    return jnp.where((a == b) & (a == -(2**15)), 2**15 - 1, high)


def _rounding_divide_by_pot(x: jax.Array, exponent: jax.Array) -> jax.Array:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent``, ties away from zero."""
    mask = jnp.left_shift(jnp.int32(1), exponent) - 1
    threshold = jnp.right_shift(mask, 1) + (x < 0).astype(jnp.int32)
    return jnp.right_shift(x, exponent) + (jnp.bitwise_and(x, mask) > threshold).astype(jnp.int32)


def _saturating_left_shift(x: jax.Array, amount: jax.Array) -> jax.Array:
    shifted = x * jnp.left_shift(jnp.int32(1), jnp.clip(amount, 0, 15))
    return jnp.clip(shifted, -(2**15), 2**15 - 1)


def hard_swish_table(x_grid: Grid, out: Grid) -> jax.Array:
    """TFLite's int8 HARD_SWISH (``reference_ops::HardSwish``, in 16-bit fixed point): the
    output level of each input level.

    LiteRT's XNNPACK delegate leaves the op to TFLite's kernel. ``HardSwishPrepare``:
    ``hires = s_in / 128``; the output multiplier ``fl(hires / s_out)`` and the "reluish"
    one ``fl(hires / (3 / 32768))``, each an int16 fixed-point multiplier and an exponent.
    Per value ``v = (q - z_in) * 128``: ``p = SRDHM(v, m_out)``; ``r`` = ``v`` scaled by
    the reluish multiplier to [-1, 1] (saturating), then to [0, 1]:
    ``(r + 2**15) >> 1``; the output is ``RoundingDivideByPOT(SDHM(r, p), -e_out) + z_out``,
    clamped.
    """
    levels = jnp.arange(2**x_grid.num_bits, dtype=jnp.int32)
    hires = jnp.asarray(x_grid.scale, jnp.float32) * jnp.float32(1.0 / 128.0)
    out_m, out_e = _multiplier_q15(_divide(hires, out.scale))
    relu_m, relu_e = _multiplier_q15(_divide(hires, 3.0 / 32768.0))
    value = (levels - x_grid.zero_point) * 128
    preshift = _rounding_doubling_high_mul(value, out_m)
    reluish = jnp.where(relu_e > 0, _saturating_left_shift(value, relu_e - 1), value)
    reluish = _rounding_doubling_high_mul(reluish, relu_m)
    reluish = jnp.where(relu_e > 0, _saturating_left_shift(reluish, jnp.int32(1)),
                        _rounding_divide_by_pot(reluish, jnp.maximum(-relu_e, 0)))
    reluish = jnp.right_shift(reluish + 2**15, 1)
    result = _rounding_divide_by_pot(_doubling_high_mul(reluish, preshift), -out_e)
    return jnp.clip(result + out.zero_point, 0, 2**out.num_bits - 1)


def hard_swish(x_levels: jax.Array, x_grid: Grid, out: Grid) -> jax.Array:
    """Output levels of LiteRT's int8 HARD_SWISH of input levels ``x_levels`` (int32)."""
    return jnp.take(hard_swish_table(x_grid, out), x_levels)


# --- on values: what the QAT model's evaluation calls -----------------------------------


def add_values(a: jax.Array, b: jax.Array, a_scale: Any, b_scale: Any, out: Grid
               ) -> jax.Array:
    """:func:`add` of two tensors on their grids (``a = (level - z) * a_scale``), as values
    on ``out`` (float32)."""
    return dequantize(add(offsets(a, a_scale), offsets(b, b_scale), a_scale, b_scale, out), out)


def mean_values(x: jax.Array, x_grid: Grid, out: Grid) -> jax.Array:
    """The spatial mean of ``x`` (NHWC, on ``x_grid``) as the int8 file computes it, on
    ``out`` (float32): the file's SUM, whose output scale is ``out.scale * H * W``
    (:func:`spatial_sum`), holds the mean's levels."""
    count = x.shape[1] * x.shape[2]
    levels = spatial_sum(offsets(x, x_grid.scale), x_grid, out.scale * jnp.float32(count),
                         out.zero_point)
    return dequantize(levels, out)


def dense_values(x: jax.Array, in_scale: Any, q: jax.Array, weight_scale: Any,
                 bias: jax.Array, out: Grid) -> jax.Array:
    """A fully connected layer as the int8 file computes it, on ``out`` (float32).

    Args:
      x: the input ``(N, C)`` on its grid of step ``in_scale``.
      in_scale: that step.
      q: the int8 weights ``(C, features)`` (integers, any dtype).
      weight_scale: their scales (per output channel, or one).
      bias: the bias on the int32 grid ``in_scale * weight_scale`` (values).
      out: the output's grid.
    """
    step = jnp.asarray(in_scale, jnp.float32) * jnp.asarray(weight_scale, jnp.float32)
    accumulator = jnp.matmul(offsets(x, in_scale), q.astype(jnp.int32),
                             preferred_element_type=jnp.int32)
    accumulator = accumulator + jnp.round(bias.astype(jnp.float32) / step).astype(jnp.int32)
    return dequantize(requantize(accumulator, in_scale, weight_scale, out), out)


def quantize_values(x: jax.Array, out: Grid) -> jax.Array:
    """LiteRT's QUANTIZE of float ``x`` (XNNPACK's ``f32_qs8_vcvt``), as values on ``out``:
    ``rint(x * fl(1 / scale)) + z``, clamped (a product by the reciprocal, not a division)."""
    inverse = jnp.float32(1.0) / out.scale
    levels = jnp.round(x.astype(jnp.float32) * inverse).astype(jnp.int32) + out.zero_point
    return dequantize(_clamp(levels, out, False), out)


def multiply_values(a: jax.Array, b: jax.Array, a_scale: Any, b_scale: Any, out: Grid
                    ) -> jax.Array:
    """:func:`multiply` of two tensors on their grids (broadcasting), as values on ``out``."""
    return dequantize(multiply(offsets(a, a_scale), offsets(b, b_scale), a_scale, b_scale, out),
                      out)


def hard_swish_values(x: jax.Array, x_grid: Grid, out: Grid) -> jax.Array:
    """:func:`hard_swish` of ``x`` (on ``x_grid``), as values on ``out`` (float32)."""
    levels = jnp.clip(offsets(x, x_grid.scale) + x_grid.zero_point, 0, 2**x_grid.num_bits - 1)
    return dequantize(hard_swish(levels, x_grid, out), out)
