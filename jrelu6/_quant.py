"""Fake quantization (quantize, then dequantize) for quantization-aware training.

A fake-quantized tensor keeps its floating dtype but takes only the values of a
uniform grid, so a model trained with it sees the rounding an integer model
will apply, while gradients flow through the *straight-through estimator*: the
rounding is treated as the identity on the grid's range.

The grid is TensorFlow's (``tf.quantization.fake_quant_with_min_max_vars``):
``2**num_bits`` levels (one fewer with ``narrow_range``) spanning ``[min,
max]``, after the range is *nudged* so that 0 is exactly one of the levels
(zero padding must quantize to zero). Values are rounded half up, and
computed in float32 for 16-bit inputs.

To the bit: for a known range the nudged grid is computed on the host in IEEE
float32, as TensorFlow computes it (XLA compiles a division as a
multiplication by the reciprocal, which can move the grid by an ulp); for a
traced (learnable) range it is computed in the graph, with the divisions
shielded from that rewrite, and agrees too except under ``vmap`` over the range
(vectorised division may round the last bit differently). The level of an
input is ``floor((x - m) * (1/s) + 1/2)``, TensorFlow's
``fake_quant_with_min_max_args`` expression; its ``_vars`` form divides by
``s``, which can pick the other level only within an ulp of a half-way point.
The level is dequantized as ``(q - z) * s`` (one rounding, as an integer
runtime computes it), within an ulp of TensorFlow's ``level * s + m``.

How PyTorch's ``torch.fake_quantize_per_tensor_affine`` differs: it takes a
scale and an integer zero point rather than a range, rounds half to *even*
(``nearbyint``: 2.5 steps goes to 2, not 3) and computes ``x / scale`` as
``x * (1 / scale)``; its straight-through mask keeps the cotangent where the
*rounded* value lies in ``[quant_min, quant_max]``, so an input up to half a
step outside the range still gets a gradient. Away from exact ties and from
those half steps at the ends, the two agree.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

import jrelu6._core as _core
import jrelu6._functions as _functions
from jrelu6._validation import check_array, check_scalar

#: The quantization schemes of :func:`quantized_relu6`.
SCHEMES = ("affine", "fixed_point")


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for 16-bit floats (as TensorFlow computes them), else ``dtype``."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


class Grid(NamedTuple):
    """A nudged range: its ends, its step and the step's reciprocal, and the
    signed level of its lower end, ``qmin - zero_point``."""

    nudged_min: jax.Array
    nudged_max: jax.Array
    scale: jax.Array
    inv_scale: jax.Array
    offset: jax.Array


def _nudge_host(lo: float, hi: float, qmin: int, qmax: int, dtype) -> Grid:
    """TensorFlow's Nudge for a known range, in IEEE arithmetic of ``dtype``.

    The real zero is moved onto the grid: the zero point ``qmin - lo / scale``
    is clamped to ``[qmin, qmax]`` and rounded half away from zero (C's
    ``round``), and the range is rebuilt around it. Computed here, on the
    host, because XLA compiles a division as a multiplication by the
    reciprocal, which is not always the correctly rounded quotient
    (``6 * fl(1/7) != fl(6/7)`` in float32) and would move the grid by an ulp.
    """
    f = np.dtype(dtype).type
    qmin_f, qmax_f = f(qmin), f(qmax)
    scale = (f(hi) - f(lo)) / (qmax_f - qmin_f)
    z = np.clip(qmin_f - f(lo) / scale, qmin_f, qmax_f)
    zero_point = np.floor(z) + f(z - np.floor(z) >= f(0.5))
    return Grid(
        (qmin_f - zero_point) * scale,
        (qmax_f - zero_point) * scale,
        scale,
        f(1) / scale,
        qmin_f - zero_point,
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _nudge_traced(lo: jax.Array, hi: jax.Array, qmin: int, qmax: int, dtype) -> Grid:
    """:func:`_nudge_host` for a traced range (its divisions are XLA's)."""
    lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    qmin_f, qmax_f = jnp.asarray(qmin, dtype), jnp.asarray(qmax, dtype)
    # Barriers keep XLA from rewriting the divisions (a division by a constant
    # into a product by its reciprocal, a / (b / c) into a * c / b), which
    # would change the last bit of the grid.
    # The step count is broadcast to the range's shape first: a vector divided by a
    # broadcast scalar is compiled as a product by its reciprocal even behind a barrier
    # (per-channel ranges), an elementwise vector division is not.
    width = hi - lo
    steps = lax.optimization_barrier(jnp.full(width.shape, qmax - qmin, dtype))
    scale = lax.optimization_barrier(width / steps)
    zero_point = lax.round(
        jnp.clip(qmin_f - lo / scale, qmin_f, qmax_f), lax.RoundingMethod.AWAY_FROM_ZERO
    )
    return Grid(
        (qmin_f - zero_point) * scale,
        (qmax_f - zero_point) * scale,
        scale,
        1 / scale,
        qmin_f - zero_point,
    )


def nudge(lo, hi, qmin: int, qmax: int, dtype) -> Grid:
    """The grid of ``[lo, hi]`` with levels ``qmin..qmax``, in the compute dtype."""
    dtype = _compute_dtype(dtype)
    if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
        return _nudge_traced(lo, hi, qmin, qmax, dtype)
    return _nudge_host(float(lo), float(hi), qmin, qmax, dtype)


def _cast(x, dtype):
    """``x`` in ``dtype``, unchanged (weak type kept) when already in it."""
    x = jnp.asarray(x)
    return x if x.dtype == dtype else x.astype(dtype)


# custom_jvp outermost, jit inside (as in _core). ``lo`` and ``hi`` are there
# for their tangents only: the values come from their ``grid``.
@jax.custom_jvp
@jax.jit
def fake_quant_core(x: jax.Array, lo: ArrayLike, hi: ArrayLike, grid: Grid) -> jax.Array:
    """Fake-quantizes floating ``x`` onto ``grid``, the nudged ``[lo, hi]``."""
    del lo, hi  # Used by the derivative rule only.
    wide = _cast(x, _compute_dtype(x.dtype))
    # Scalars weakly typed where x is; per-channel vectors (shaped to broadcast) as they are.
    grid = Grid(*(_core.like(wide, v) if jnp.ndim(v) == 0 else _cast(v, wide.dtype)
                  for v in grid))
    clamped = jnp.clip(wide, grid.nudged_min, grid.nudged_max)
    # (x - m) * (1/s), as TensorFlow's fake_quant_with_min_max_args computes
    # it; its _vars form divides by s, which XLA compiles as this product.
    shifted = (clamped - grid.nudged_min) * grid.inv_scale
    level = jnp.floor(shifted + lax.full_like(wide, 0.5, shape=()))
    # Dequantized as (q - z) * s, the integer model's formula: one rounding, so
    # 0 is exactly 0 and the result does not depend on whether XLA fuses a
    # multiply-add (TensorFlow's level * s + nudged_min may differ by an ulp).
    return _cast((level + grid.offset) * grid.scale, x.dtype)


# The straight-through rule of TensorFlow's FakeQuantWithMinMaxVarsGradient:
# d/dx is 1 on the closed nudged range and 0 outside; d/dmin is 1 where x is
# below it, d/dmax 1 where x is above it (the nudging itself is not
# differentiated, and neither is the grid). Written as selects, linear in the
# tangents (_core.scale_tangent applies the slope, giving 0 where it is 0 even
# for an infinite (co)tangent), so the transpose sums the cotangent over the
# elements below (above) the range for min (max). A NaN input gets a NaN
# derivative, as everywhere in jrelu6 (TensorFlow's mask would give 0).
@functools.partial(fake_quant_core.defjvp, symbolic_zeros=True)
def _fake_quant_jvp(primals, tangents):
    x, lo, hi, grid = primals
    x_dot, lo_dot, hi_dot, _ = tangents
    y = fake_quant_core(x, lo, hi, grid)
    wide = _cast(x, _compute_dtype(x.dtype))
    below, above = wide < grid.nudged_min, wide > grid.nudged_max
    zeros = jnp.zeros_like(y)
    y_dot = zeros
    if not isinstance(x_dot, SymbolicZero):
        slope = jnp.where(below | above, zeros, jnp.ones_like(y))
        slope = jnp.where(jnp.isnan(wide), jnp.full_like(y, jnp.nan), slope)
        y_dot = _core.scale_tangent(slope, x_dot)
    if not isinstance(lo_dot, SymbolicZero):
        y_dot = y_dot + jnp.where(below, jnp.asarray(lo_dot).astype(x.dtype), zeros)
    if not isinstance(hi_dot, SymbolicZero):
        y_dot = y_dot + jnp.where(above, jnp.asarray(hi_dot).astype(x.dtype), zeros)
    return y, y_dot


def _check_num_bits(fn_name: str, num_bits) -> int:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int):
        raise TypeError(f"{fn_name}: num_bits must be an int, got {num_bits!r}.")
    if not 2 <= num_bits <= 16:
        raise ValueError(f"{fn_name}: num_bits must be in [2, 16], got {num_bits}.")
    return num_bits


def _check_bool(fn_name: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn_name}: {name} must be a bool, got {value!r}.")
    return value


def _check_floating(fn_name: str, x) -> jax.Array:
    x = check_array(fn_name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn_name}: expected a floating array, got dtype {x.dtype}; cast it "
            "(for example x.astype(jnp.float32)) first."
        )
    return x


def _levels(num_bits: int, narrow_range: bool) -> tuple[int, int]:
    """``(qmin, qmax)``: 0 (1 with ``narrow_range``) and ``2**num_bits - 1``."""
    return int(narrow_range), 2**num_bits - 1


def fake_quant(
    x: ArrayLike,
    *,
    min: ArrayLike, max: ArrayLike,  # TensorFlow's names (shadowing the builtins)
    num_bits: int = 8,
    narrow_range: bool = False,
) -> jax.Array:
    r"""Quantize-dequantize ``x`` onto a uniform grid over ``[min, max]``.

    The function of TensorFlow's ``fake_quant_with_min_max_vars``. With
    :math:`q_{\min} = 1` if ``narrow_range`` else 0, :math:`q_{\max} =
    2^b - 1` and :math:`s = (\max - \min) / (q_{\max} - q_{\min})`, the range
    is nudged so that 0 is a level:

    .. math::
        z = \mathrm{round}(\mathrm{clip}(q_{\min} - \min / s, q_{\min},
        q_{\max})), \quad m = (q_{\min} - z) s, \quad M = (q_{\max} - z) s

    and then

    .. math::
        \mathrm{fake\_quant}(x) = \left\lfloor \frac{\mathrm{clip}(x, m, M) - m}{s}
        + \frac{1}{2} \right\rfloor s + m

    computed in float32 for 16-bit inputs and returned in ``x``'s dtype
    (dequantized as :math:`(q - z) s`, within an ulp of TensorFlow's
    :math:`\lfloor\cdot\rfloor s + m`; see :mod:`jrelu6._quant` for the last
    bit). The gradient is the straight-through estimator: the cotangent passes
    unchanged where :math:`m \le x \le M` and is 0 outside (NaN at NaN).
    ``min`` and ``max`` may be traced and differentiated, as TensorFlow's
    variables: :math:`\partial/\partial\min` collects the cotangent where
    :math:`x < m`, :math:`\partial/\partial\max` where :math:`x > M`, so a
    learnable range trains.

    PyTorch's ``torch.fake_quantize_per_tensor_affine`` rounds ties to even and masks
    its gradient on the rounded value (:mod:`jrelu6._quant`; see also :func:`quantized_relu6`).

    Args:
      x: a real floating array.
      min: the lower end of the range, a finite real scalar (may be traced).
      max: the upper end, a finite real scalar greater than ``min``.
      num_bits: the bit width :math:`b`, an int in [2, 16].
      narrow_range: if True, use levels 1 to :math:`2^b - 1` (a grid
        symmetric about 0 for a symmetric range), as TensorFlow.

    Returns:
      An array of the shape and dtype of ``x``, whose values are levels.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-1.0, 0.2, 0.3, 1.0, 5.0])
      >>> jrelu6.fake_quant(x, min=0.0, max=1.5, num_bits=2)
      Array([0. , 0. , 0.5, 1. , 1.5], dtype=float32)
      >>> jax.grad(lambda lo: jrelu6.fake_quant(x, min=lo, max=1.5).sum())(0.0)
      Array(1., dtype=float32, weak_type=True)
    """
    x = _check_floating("fake_quant", x)
    return _fake_quant("fake_quant", x, min, max, num_bits, narrow_range)


class QuantizationParams(NamedTuple):
    r"""The affine form of a :func:`fake_quant` grid: level ``q`` is ``(q - zero_point) * scale``.

    Returned by :func:`quantization_params`.

    Args:
      scale: the step :math:`s`, a floating scalar.
      zero_point: the integer level of 0, :math:`z`, an int32 scalar in
        :math:`[q_{\min}, q_{\max}]`.

    Examples:
      >>> import jrelu6
      >>> params = jrelu6.quantization_params(min=-3.0, max=3.0, num_bits=4)
      >>> float(params.scale), int(params.zero_point)
      (0.4000000059604645, 8)
    """

    scale: jax.Array
    zero_point: jax.Array


def quantization_params(
    *,
    min: ArrayLike, max: ArrayLike,  # TensorFlow's names, as in fake_quant
    num_bits: int = 8,
    narrow_range: bool = False,
    dtype: Any = jnp.float32,
) -> QuantizationParams:
    r"""The scale and zero point of :func:`fake_quant`'s grid over ``[min, max]``.

    What an integer runtime (LiteRT's int8 tensors, ONNX's ``QuantizeLinear``) needs to
    hold a tensor that was fake-quantized on ``[min, max]``: with the nudging of
    :func:`fake_quant`, :math:`s = (\max - \min) / (q_{\max} - q_{\min})` and
    :math:`z = \mathrm{round}(\mathrm{clip}(q_{\min} - \min / s, q_{\min}, q_{\max}))`,
    every value :func:`fake_quant` returns is :math:`(q - z)\,s` for an integer
    :math:`q \in [q_{\min}, q_{\max}]`, computed in the same arithmetic (bit for bit,
    for a known range and for a traced one). For int8 storage subtract
    :math:`2^{b-1}` from :math:`q` and :math:`z`.

    Args:
      min: the lower end of the range, a finite real scalar (may be traced).
      max: the upper end, a finite real scalar greater than ``min``.
      num_bits: the bit width :math:`b`, an int in [2, 16].
      narrow_range: if True, levels 1 to :math:`2^b - 1`, as in :func:`fake_quant`.
      dtype: the floating dtype the grid is computed in: that of the tensors
        :func:`fake_quant` is applied to (float32 for 16-bit floats, as there).

    Returns:
      ``QuantizationParams(scale, zero_point)``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> jrelu6.quantization_params(min=0.0, max=6.0)
      QuantizationParams(scale=Array(0.02352941, dtype=float32), zero_point=Array(0, dtype=int32))
      >>> s, z = jrelu6.quantization_params(min=-1.0, max=1.0)
      >>> s, z
      (Array(0.00784314, dtype=float32), Array(127, dtype=int32))
      >>> q = int(jnp.round(0.5 / s)) + int(z)  # The level an integer runtime stores for 0.5.
      >>> q, bool(jrelu6.fake_quant(jnp.array(0.5), min=-1.0, max=1.0) == (q - int(z)) * s)
      (191, True)
    """
    fn_name = "quantization_params"
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn_name}: dtype must be a floating dtype, got {dtype!r}.")
    dtype = _compute_dtype(dtype)
    lo, hi, (qmin, qmax) = _check_grid(fn_name, min, max, num_bits, narrow_range, dtype)
    grid = nudge(lo, hi, qmin, qmax, dtype)
    zero_point = jnp.round(qmin - jnp.asarray(grid.offset, dtype)).astype(jnp.int32)
    return QuantizationParams(jnp.asarray(grid.scale, dtype), zero_point)


def _check_grid(fn_name, lo, hi, num_bits, narrow_range, dtype):
    """The checked range (scalars, ``lo < hi`` where known) and levels ``(qmin, qmax)``."""
    num_bits = _check_num_bits(fn_name, num_bits)
    narrow_range = _check_bool(fn_name, "narrow_range", narrow_range)
    lo = check_scalar(fn_name, "min", lo, dtype=dtype)
    hi = check_scalar(fn_name, "max", hi, dtype=dtype)
    if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
        if not float(lo) < float(hi):
            raise ValueError(
                f"{fn_name}: min must be less than max, got min={float(lo)}, max={float(hi)}."
            )
    return lo, hi, _levels(num_bits, narrow_range)


def _fake_quant(fn_name, x, lo, hi, num_bits, narrow_range):
    """Validates the range and the grid, then applies the core."""
    lo, hi, levels = _check_grid(fn_name, lo, hi, num_bits, narrow_range,
                                 _compute_dtype(x.dtype))
    return fake_quant_core(x, lo, hi, nudge(lo, hi, *levels, x.dtype))


def _relu6_levels(fn_name: str, num_bits, narrow_range, scheme) -> tuple[int, int]:
    r"""The levels of a quantized relu6's output grid on [0, 6].

    ``"affine"``: TensorFlow's grid on [0, 6] (which nudging leaves as is: 0 is
    already a level). ``"fixed_point"``: 3 integer bits and ``num_bits - 3``
    fractional ones, steps of :math:`2^{-(b-3)}` from 0 to 6, i.e. the levels
    0 to :math:`6 \cdot 2^{b-3}` over [0, 6] (so 6 and every step are exact).
    """
    num_bits = _check_num_bits(fn_name, num_bits)
    narrow_range = _check_bool(fn_name, "narrow_range", narrow_range)
    if scheme not in SCHEMES:
        raise ValueError(f"{fn_name}: scheme must be one of {SCHEMES}, got {scheme!r}.")
    if scheme == "affine":
        return _levels(num_bits, narrow_range)
    if narrow_range:
        raise ValueError(
            f"{fn_name}: narrow_range applies to the affine scheme only, not to "
            "scheme='fixed_point'."
        )
    return 0, 6 * 2**num_bits // 8


def quantized_relu6(
    x: ArrayLike,
    *,
    num_bits: int = 8,
    narrow_range: bool = False,
    scheme: str = "affine",
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r""":func:`relu6`, then fake-quantized on [0, 6]: the activation of an int8 MobileNet.

    .. math::
        \mathrm{quantized\_relu6}(x) = \mathrm{fake\_quant}(\mathrm{relu6}(x),
        \min = 0, \max = 6)

    ``scheme="affine"`` (default) is the grid of :func:`fake_quant`:
    :math:`2^b` levels from 0 to 6 in steps of :math:`6 / (2^b - 1)` (0 and 6
    are levels; nudging changes nothing). ``scheme="fixed_point"`` is the
    argument "relu6's range needs only 3 integer bits": :math:`b - 3`
    fractional bits, steps of :math:`2^{-(b-3)}` from 0 to 6 (for 8 bits,
    steps of 1/32 and 193 of the 256 codes used).

    The derivative is relu6's, kink settings included (:math:`g_0` at 0,
    :math:`g_6` at 6): the straight-through estimator passes it unchanged
    on [0, 6], which holds all of relu6's outputs.

    Args:
      x: a real floating array (integers are promoted to the default float).
      num_bits: the bit width :math:`b`, an int in [2, 16].
      narrow_range: affine scheme only: levels 1 to :math:`2^b - 1`.
      scheme: ``"affine"`` or ``"fixed_point"``.
      grad_at_zero: :math:`g_0`, the derivative at ``x == 0``.
      grad_at_six: :math:`g_6`, the derivative at ``x == 6``.

    Returns:
      A floating array of the shape of ``x`` (its dtype, if floating).

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-1.0, 0.1, 1.3, 6.0, 7.0])
      >>> jrelu6.quantized_relu6(x, num_bits=4)
      Array([0. , 0. , 1.2, 6. , 6. ], dtype=float32)
      >>> jrelu6.quantized_relu6(x, num_bits=4, scheme="fixed_point")
      Array([0. , 0. , 1.5, 6. , 6. ], dtype=float32)
      >>> jax.grad(lambda x: jrelu6.quantized_relu6(x, grad_at_six=1.0))(6.0)
      Array(1., dtype=float32, weak_type=True)

    See also:
      :func:`fake_quant`, :func:`relu6`, :func:`quantized_hard_swish`.
    """
    x = _functions._as_float("quantized_relu6", x)
    return _quantized_relu6(
        "quantized_relu6", x, num_bits, narrow_range, scheme, grad_at_zero, grad_at_six
    )


def _quantized_relu6(fn_name, x, num_bits, narrow_range, scheme, grad_at_zero, grad_at_six):
    qmin, qmax = _relu6_levels(fn_name, num_bits, narrow_range, scheme)
    grad_at_zero, grad_at_six = _functions._kinks(fn_name, x, grad_at_zero, grad_at_six)
    return _quantized_relu6_jit(x, grad_at_zero, grad_at_six, qmin, qmax)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _quantized_relu6_jit(x, grad_at_zero, grad_at_six, qmin, qmax):
    y = _core.capped_relu(x, 6.0, grad_at_zero, grad_at_six)
    return fake_quant_core(y, 0.0, 6.0, nudge(0.0, 6.0, qmin, qmax, x.dtype))


def _quantized_hard(fn_name, x, num_bits, narrow_range, scheme, grad_at_zero, grad_at_six, op):
    x = _functions._as_float(fn_name, x)
    qmin, qmax = _relu6_levels(fn_name, num_bits, narrow_range, scheme)
    grad_at_zero, grad_at_six = _functions._kinks(fn_name, x, grad_at_zero, grad_at_six)
    return _quantized_hard_jit(x, grad_at_zero, grad_at_six, qmin, qmax, op)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _quantized_hard_jit(x, grad_at_zero, grad_at_six, qmin, qmax, op):
    gate = _quantized_relu6_jit(x + 3, grad_at_zero, grad_at_six, qmin, qmax) / 6
    return gate if op is None else op(x, gate)


def quantized_hard_sigmoid(
    x: ArrayLike,
    *,
    num_bits: int = 8,
    narrow_range: bool = False,
    scheme: str = "affine",
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r""":func:`hard_sigmoid` whose inner relu6 is :func:`quantized_relu6`.

    .. math::
        \mathrm{quantized\_hard\_sigmoid}(x) = \mathrm{quantized\_relu6}(x + 3) / 6

    Args:
      x: a real floating array (integers are promoted to the default float).
      num_bits: as in :func:`quantized_relu6`.
      narrow_range: as in :func:`quantized_relu6`.
      scheme: as in :func:`quantized_relu6`.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).

    Returns:
      A floating array of the shape of ``x``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-4.0, 0.0, 0.1, 3.0])
      >>> jrelu6.quantized_hard_sigmoid(x, num_bits=4, scheme="fixed_point")
      Array([0. , 0.5, 0.5, 1. ], dtype=float32)

    See also:
      :func:`quantized_hard_swish`, :func:`hard_sigmoid`.
    """
    return _quantized_hard(
        "quantized_hard_sigmoid", x, num_bits, narrow_range, scheme, grad_at_zero,
        grad_at_six, None,
    )


def quantized_hard_swish(
    x: ArrayLike,
    *,
    num_bits: int = 8,
    narrow_range: bool = False,
    scheme: str = "affine",
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r""":func:`hard_swish` whose inner relu6 is :func:`quantized_relu6` (MobileNetV3 QAT).

    .. math::
        \mathrm{quantized\_hard\_swish}(x) = x \cdot \mathrm{quantized\_relu6}(x + 3) / 6

    Only the gate is quantized (the product is not); its derivative is the
    product rule with the gate's straight-through derivative, so it equals
    :func:`hard_swish`'s derivative wherever the gate is not rounded.

    Args:
      x: a real floating array (integers are promoted to the default float).
      num_bits: as in :func:`quantized_relu6`.
      narrow_range: as in :func:`quantized_relu6`.
      scheme: as in :func:`quantized_relu6`.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).

    Returns:
      A floating array of the shape of ``x``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-4.0, -1.5, 1.6, 3.0, 5.0])
      >>> jrelu6.quantized_hard_swish(x, num_bits=4, scheme="fixed_point")
      Array([-0.   , -0.375,  1.2  ,  3.   ,  5.   ], dtype=float32)

    See also:
      :func:`quantized_hard_sigmoid`, :func:`hard_swish`.
    """
    return _quantized_hard(
        "quantized_hard_swish", x, num_bits, narrow_range, scheme, grad_at_zero,
        grad_at_six, operator.mul,
    )


# ------------------------------------------------------------ per channel, weights


def _channel_axis(fn_name: str, axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{fn_name}: axis must be an int, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn_name}: axis {axis} is out of range for an array of rank {ndim}.")
    return axis % ndim


def _along_shape(axis: int, ndim: int) -> list[int]:
    """The shape that makes a per-channel vector broadcast along ``axis`` of rank ``ndim``."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _along(v, axis: int, ndim: int):
    """A per-channel vector ``v`` shaped to broadcast along ``axis`` of a rank-``ndim`` array."""
    shape = _along_shape(axis, ndim)
    return jnp.reshape(v, shape) if isinstance(v, jax.Array) else np.reshape(v, shape)


def _nudge_host_channels(lo, hi, qmin: int, qmax: int, dtype) -> Grid:
    """:func:`_nudge_host` for NumPy vectors of ends (TensorFlow's Nudge per channel)."""
    f = np.dtype(dtype).type
    lo, hi = np.asarray(lo, dtype), np.asarray(hi, dtype)
    qmin_f, qmax_f = f(qmin), f(qmax)
    scale = (hi - lo) / (qmax_f - qmin_f)
    z = np.clip(qmin_f - lo / scale, qmin_f, qmax_f)
    zero_point = (np.floor(z) + (z - np.floor(z) >= f(0.5))).astype(dtype)
    return Grid((qmin_f - zero_point) * scale, (qmax_f - zero_point) * scale, scale,
                f(1) / scale, qmin_f - zero_point)


def _check_channel_range(fn_name, name, value, channels, dtype):
    if isinstance(value, (list, tuple)):
        raise TypeError(f"{fn_name}: {name} must be an array, got {type(value).__name__}; "
                        "wrap it in jnp.asarray.")
    value = check_array(fn_name, value)
    if value.shape != (channels,):
        raise ValueError(f"{fn_name}: {name} must have shape ({channels},) (one value per "
                         f"channel), got {value.shape}.")
    return value.astype(dtype)


def fake_quant_per_channel(
    x: ArrayLike,
    *,
    min: ArrayLike,  # TensorFlow's names (shadowing the builtins)
    max: ArrayLike,
    num_bits: int = 8,
    narrow_range: bool = False,
    axis: int = -1,
) -> jax.Array:
    r""":func:`fake_quant` with one range per channel along ``axis``.

    TensorFlow's ``fake_quant_with_min_max_vars_per_channel`` (which takes the
    last axis): channel :math:`c` is quantized onto the nudged grid of
    :math:`[\min_c, \max_c]`, exactly as :func:`fake_quant` quantizes a whole
    tensor onto that of :math:`[\min, \max]`; with
    :math:`s_c = (\max_c - \min_c) / (q_{\max} - q_{\min})` and the nudged
    ends :math:`m_c, M_c`,

    .. math::
        y_{\ldots c} = \left\lfloor \frac{\mathrm{clip}(x_{\ldots c}, m_c, M_c)
        - m_c}{s_c} + \frac{1}{2} \right\rfloor s_c + m_c .

    The gradient is TensorFlow's straight-through estimator per channel: 1
    where :math:`m_c \le x \le M_c`, 0 outside; :math:`\partial/\partial\min_c`
    (:math:`\partial/\partial\max_c`) sums the cotangent of channel :math:`c`
    below (above) its range. See also :func:`fake_quant`, :func:`fake_quant_weights`.

    Args:
      x: a real floating array.
      min: the lower ends, shape ``(x.shape[axis],)`` (may be traced).
      max: the upper ends, shape ``(x.shape[axis],)``, each greater than its ``min``.
      num_bits: the bit width :math:`b`, an int in [2, 16].
      narrow_range: if True, use levels 1 to :math:`2^b - 1`.
      axis: the channel axis (TensorFlow's op: the last, the default).

    Returns:
      An array of the shape and dtype of ``x``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> x = jnp.array([[0.3, 0.3], [1.0, 1.0]])
      >>> jrelu6.fake_quant_per_channel(x, min=jnp.array([0.0, 0.0]),
      ...                               max=jnp.array([1.5, 3.0]), num_bits=2)
      Array([[0.5, 0. ],
             [1. , 1. ]], dtype=float32)
    """
    fn_name = "fake_quant_per_channel"
    x = _check_floating(fn_name, x)
    if x.ndim == 0:
        raise ValueError(f"{fn_name}: x must have at least one axis, got a scalar.")
    axis = _channel_axis(fn_name, axis, x.ndim)
    num_bits = _check_num_bits(fn_name, num_bits)
    narrow_range = _check_bool(fn_name, "narrow_range", narrow_range)
    dtype = _compute_dtype(x.dtype)
    lo = _check_channel_range(fn_name, "min", min, x.shape[axis], dtype)
    hi = _check_channel_range(fn_name, "max", max, x.shape[axis], dtype)
    _check_channel_order(fn_name, lo, hi)
    return _per_channel(x, lo, hi, *_levels(num_bits, narrow_range), axis)


def _check_channel_order(fn_name: str, lo: jax.Array, hi: jax.Array) -> None:
    """Concrete ranges must be finite with ``min < max`` in every channel (traced: unchecked)."""
    if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
        return
    lo_np, hi_np = np.asarray(lo), np.asarray(hi)
    if not (np.all(np.isfinite(lo_np)) and np.all(np.isfinite(hi_np))):
        raise ValueError(f"{fn_name}: min and max must be finite.")
    bad = np.flatnonzero(~(lo_np < hi_np))
    if bad.size:
        c = int(bad[0])
        raise ValueError(f"{fn_name}: min must be less than max in every channel, got "
                         f"min={float(lo_np[c])}, max={float(hi_np[c])} in channel {c}.")


def _per_channel(x, lo, hi, qmin, qmax, axis, *, in_graph=False):
    """The core of :func:`fake_quant_per_channel` (validated arguments).

    ``in_graph``: nudge in XLA even for a known range, so that the grid is the
    same eagerly and under ``jit`` (weights' ranges, computed from the weights).
    """
    dtype = _compute_dtype(x.dtype)
    if in_graph or isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
        grid = _nudge_traced(lo, hi, qmin, qmax, dtype)
    else:
        grid = _nudge_host_channels(np.asarray(lo), np.asarray(hi), qmin, qmax, dtype)
    grid = Grid(*(jnp.reshape(jnp.asarray(v, dtype), _along_shape(axis, x.ndim)) for v in grid))
    return fake_quant_core(x, _along(lo, axis, x.ndim), _along(hi, axis, x.ndim), grid)


def _weight_ranges(fn_name: str, w: Any, num_bits: Any, axis: Any
                   ) -> tuple[jax.Array, int, int | None, jax.Array]:
    """Validated ``(w, num_bits, axis or None, m)``: ``m`` the largest magnitude per
    channel (a vector, or a 1-vector per tensor), 1 where it is 0, without gradient."""
    if isinstance(w, (list, tuple)):
        raise TypeError(f"{fn_name}: w must be an array, got {type(w).__name__}; wrap it "
                        "in jnp.asarray.")
    w = _check_floating(fn_name, w)
    num_bits = _check_num_bits(fn_name, num_bits)
    if axis is not None:
        if not w.ndim:
            raise ValueError(f"{fn_name}: per-channel quantization needs an array with an "
                             "axis, got a scalar; pass axis=None for per tensor.")
        axis = _channel_axis(fn_name, axis, w.ndim)
    wide = lax.stop_gradient(_cast(w, _compute_dtype(w.dtype)))
    others = tuple(i for i in range(w.ndim) if i != axis)
    m = jnp.max(jnp.abs(wide), axis=others) if axis is not None else jnp.max(jnp.abs(wide))
    m = jnp.reshape(m, (-1,))
    # An all-zero channel has no range: any positive one quantizes it to 0.
    m = jnp.where(m > 0, m, jnp.ones_like(m))
    return w, num_bits, axis, m


def fake_quant_weights(
    w: ArrayLike,
    *,
    num_bits: int = 8,
    axis: int | None = -1,
) -> jax.Array:
    r"""Symmetric weight fake quantization, per output channel: LiteRT's int8 weights.

    LiteRT's (TFLite's) int8 specification stores convolution and dense
    weights as integers in :math:`[-(2^{b-1} - 1), 2^{b-1} - 1]` (:math:`[-127,
    127]` for 8 bits) with zero point 0 and one scale per output channel
    (TFLite's Conv2D axis 0, DepthwiseConv2D axis 3: the *last* axis of a flax
    kernel, HWIO, ``(kh, kw, 1, C)`` or ``(in, out)``, hence the default). With
    :math:`m_c = \max |w_{\ldots c}|` (over every axis but ``axis``; over the
    whole tensor with ``axis=None``) and :math:`n = 2^{b-1} - 1`,

    .. math::
        s_c = m_c / n, \quad
        q = \left\lfloor \frac{w}{s_c} + \frac{1}{2} \right\rfloor \in [-n, n],
        \quad \mathrm{fake\_quant\_weights}(w) = q\, s_c ,

    which is :func:`fake_quant_per_channel` with :math:`\min_c = -m_c`,
    :math:`\max_c = m_c` and ``narrow_range=True`` (TensorFlow's grid: the
    zero point lands on level :math:`2^{b-1}`, so the grid is symmetric and 0 is
    a level). :func:`quantize_weights` gives :math:`q` and :math:`s_c`; the
    dequantized :math:`q s_c` equals this function's output bit for bit. An
    all-zero channel gets :math:`m_c = 1` (its values stay 0).

    The range follows the weights and is not differentiated; the gradient is
    the straight-through estimator, the identity (every weight lies inside
    its channel's range).

    Args:
      w: a real floating array (a kernel).
      num_bits: :math:`b`, an int in [2, 16].
      axis: the output-channel axis (default: the last), or ``None`` for one
        scale for the whole tensor.

    Returns:
      An array of the shape and dtype of ``w``.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> w = jnp.array([[1.0, 0.09], [-0.4, -0.2], [0.26, 0.0]])
      >>> jrelu6.fake_quant_weights(w, num_bits=3)
      Array([[ 1.        ,  0.06666667],
             [-0.33333334, -0.20000002],
             [ 0.33333334,  0.        ]], dtype=float32)
      >>> jrelu6.fake_quant_weights(w, num_bits=3, axis=None)[:, 1]
      Array([ 0.        , -0.33333334,  0.        ], dtype=float32)
      >>> jax.grad(lambda w: jrelu6.fake_quant_weights(w).sum())(w)[0]
      Array([1., 1.], dtype=float32)

    See also:
      :func:`quantize_weights`, :func:`fake_quant_per_channel`, :func:`fold_batch_norm`.
    """
    w, num_bits, axis, _ = _weight_ranges("fake_quant_weights", w, num_bits, axis)
    return _fake_quant_weights(w, num_bits, axis)


# The straight-through estimator of a range that follows the weights: the
# identity. (fake_quant's rule would give 0 to a channel's largest weight
# wherever m_c / n * n rounds below m_c, leaving it outside the nudged range.)
@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _fake_quant_weights(w, num_bits, axis):
    m = jnp.max(jnp.abs(_cast(w, _compute_dtype(w.dtype))),
                axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=False)
    m = jnp.reshape(m, (-1,))
    m = jnp.where(m > 0, m, jnp.ones_like(m))
    if axis is None:
        flat = jnp.reshape(w, (-1, 1))
        return jnp.reshape(_per_channel(flat, -m, m, 1, 2**num_bits - 1, 1, in_graph=True),
                           w.shape)
    return _per_channel(w, -m, m, 1, 2**num_bits - 1, axis, in_graph=True)


@_fake_quant_weights.defjvp
def _fake_quant_weights_jvp(num_bits, axis, primals, tangents):
    (w,), (w_dot,) = primals, tangents
    return _fake_quant_weights(w, num_bits, axis), w_dot


def quantize_weights(
    w: ArrayLike,
    *,
    num_bits: int = 8,
    axis: int | None = -1,
) -> tuple[jax.Array, jax.Array]:
    r"""The integers and scales of :func:`fake_quant_weights`: what an int8 file stores.

    Args:
      w: a real floating array (a kernel).
      num_bits: :math:`b`, an int in [2, 16].
      axis: the output-channel axis, or ``None`` for per tensor.

    Returns:
      ``(q, scale)``: ``q`` int32 of ``w``'s shape, in :math:`[-(2^{b-1} - 1),
      2^{b-1} - 1]`; ``scale`` float32 (the compute dtype), shape
      ``(w.shape[axis],)`` or ``(1,)`` per tensor. ``q * scale`` (broadcast
      along ``axis``) equals ``fake_quant_weights(w, ...)`` exactly.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> q, scale = jrelu6.quantize_weights(jnp.array([[1.0, 0.1], [-0.4, -0.2]]))
      >>> q
      Array([[ 127,   64],
             [ -51, -127]], dtype=int32)
      >>> scale * 127
      Array([1. , 0.2], dtype=float32)
    """
    w, num_bits, axis, m = _weight_ranges("quantize_weights", w, num_bits, axis)
    out = fake_quant_weights(w, num_bits=num_bits, axis=axis)
    dtype = _compute_dtype(w.dtype)
    # The grid's step, as fake_quant_core's grid holds it (see _per_channel).
    scale = _nudge_traced(-m, m, 1, 2**num_bits - 1, dtype).scale
    along = axis if axis is not None else 0
    scale_b = _along(scale, along, max(w.ndim, 1)) if axis is not None else scale[0]
    q = jnp.round(_cast(out, dtype) / scale_b).astype(jnp.int32)
    return q, scale


def fold_batch_norm(
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    scale: ArrayLike,
    offset: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    epsilon: float,
) -> tuple[jax.Array, jax.Array]:
    r"""Folds batch normalization into the layer before it (per output channel, last axis).

    A linear layer :math:`y = x * w + b` followed by batch normalization
    with :math:`\gamma` (``scale``), :math:`\beta` (``offset``) and statistics
    :math:`\mu, \sigma^2` is the one linear layer

    .. math::
        w' = w \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        b' = \beta + (b - \mu) \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}

    (:math:`b = 0` without a bias). The output channels are the kernel's last
    axis, as in flax's ``Conv`` (HWIO), depthwise ``(kh, kw, 1, C)`` and
    ``Dense`` ``(in, out)`` kernels.

    Args:
      kernel: the layer's kernel, output channels last.
      bias: its bias, shape ``(C,)``, or ``None``.
      scale: :math:`\gamma`, shape ``(C,)``.
      offset: :math:`\beta`, shape ``(C,)``.
      mean: :math:`\mu`, shape ``(C,)``.
      var: :math:`\sigma^2`, shape ``(C,)``, non-negative.
      epsilon: :math:`\epsilon`, a non-negative float.

    Returns:
      ``(kernel', bias')`` in the kernel's dtype.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> w, b = jrelu6.fold_batch_norm(
      ...     jnp.array([[1.0, 2.0]]), scale=jnp.array([2.0, 1.0]),
      ...     offset=jnp.array([0.5, 0.0]), mean=jnp.array([1.0, 4.0]),
      ...     var=jnp.array([4.0, 1.0]), epsilon=0.0)
      >>> w, b
      (Array([[1., 2.]], dtype=float32), Array([-0.5, -4. ], dtype=float32))
    """
    fn_name = "fold_batch_norm"
    kernel = _check_floating(fn_name, kernel)
    if not kernel.ndim:
        raise ValueError(f"{fn_name}: kernel must have an output-channel axis, got a scalar.")
    channels = kernel.shape[-1]
    eps = check_scalar(fn_name, "epsilon", epsilon, positive=False)
    if not isinstance(eps, float) or eps < 0:
        raise ValueError(f"{fn_name}: epsilon must be a non-negative Python float, "
                         f"got {epsilon!r}.")
    given = {"scale": scale, "offset": offset, "mean": mean, "var": var, "bias": bias}
    vectors = {name: _check_channel_range(fn_name, name, value, channels, kernel.dtype)
               for name, value in given.items() if value is not None or name != "bias"}
    factor = vectors["scale"] * lax.rsqrt(vectors["var"] + jnp.asarray(eps, kernel.dtype))
    shift = vectors["bias"] - vectors["mean"] if "bias" in vectors else -vectors["mean"]
    return kernel * factor, vectors["offset"] + shift * factor
