"""The public activation functions: thin validating wrappers over :mod:`._core`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import jrelu6._core as _core
from jrelu6._validation import check_array, check_integral_cap, check_scalar


def _kinks(fn_name, x, grad_at_zero, grad_at_cap, grad_at_cap_name="grad_at_six"):
    """The two kink slopes, checked to be finite scalars in ``x``'s dtype."""
    return (
        check_scalar(fn_name, "grad_at_zero", grad_at_zero, dtype=x.dtype),
        check_scalar(fn_name, grad_at_cap_name, grad_at_cap, dtype=x.dtype),
    )


def _capped(fn_name, x, cap, grad_at_zero, grad_at_cap, grad_at_cap_name):
    """Validates, then dispatches on dtype: floats get the derivative rule."""
    x = check_array(fn_name, x)
    cap = check_scalar(fn_name, "cap", cap, positive=True, dtype=x.dtype)
    grad_at_zero, grad_at_cap = _kinks(fn_name, x, grad_at_zero, grad_at_cap, grad_at_cap_name)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return _core.capped_relu_integer(x, check_integral_cap(fn_name, cap, x.dtype))
    return _core.capped(x, cap, grad_at_zero, grad_at_cap)


def _as_float(fn_name: str, x: ArrayLike) -> jax.Array:
    """Validated ``x``, with integers promoted to the default float dtype."""
    x = check_array(fn_name, x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.result_type(float))
    return x


def capped_relu(
    x: ArrayLike,
    *,
    cap: ArrayLike,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_cap: ArrayLike = 0.0,
) -> jax.Array:
    r"""Capped rectified linear unit: ReLU clipped above at ``cap``.

    Computes the element-wise function

    .. math::
        \mathrm{capped\_relu}(x) = \min(\max(x, 0), c)

    the ``ReLU(max_value=c)`` of Keras and ``Hardtanh(0, c)`` of PyTorch.
    Its derivative is 1 on :math:`(0, c)` and 0 outside :math:`[0, c]`; at the
    kinks it is whatever you choose:

    .. math::
        \mathrm{capped\_relu}'(0) = g_0, \qquad \mathrm{capped\_relu}'(c) = g_c

    (both 0 by default, as in jax.nn, PyTorch and TensorFlow). At a NaN input
    the derivative is NaN. ``cap`` may itself be differentiated (a learnable
    clipping level, as in PACT): :math:`\partial/\partial c` is 1 above the
    cap, :math:`1 - g_c` at it and 0 below.

    Args:
      x: a real floating or integer array. Integer inputs give integer outputs.
      cap: the upper bound :math:`c > 0`, a real scalar, finite in ``x``'s
        dtype; a whole number when ``x`` is an integer array.
      grad_at_zero: :math:`g_0`, the derivative at ``x == 0``; a real scalar.
      grad_at_cap: :math:`g_c`, the derivative at ``x == cap``; a real scalar.

    Returns:
      An array of the shape and dtype of ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> jrelu6.capped_relu(jnp.array([-1.0, 0.5, 2.0, 9.0]), cap=1.0)
      Array([0. , 0.5, 1. , 1. ], dtype=float32)
      >>> jax.grad(lambda x: jrelu6.capped_relu(x, cap=1.0, grad_at_cap=1.0))(1.0)
      Array(1., dtype=float32, weak_type=True)

    See also:
      :func:`relu6`, the special case ``cap=6``.
    """
    return _capped("capped_relu", x, cap, grad_at_zero, grad_at_cap, "grad_at_cap")


def relu6(
    x: ArrayLike,
    *,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r"""Rectified linear unit 6, with a chosen derivative at its kinks.

    Computes the element-wise function

    .. math::
        \mathrm{relu6}(x) = \min(\max(x, 0), 6)

    Its derivative is 1 on :math:`(0, 6)`, 0 outside :math:`[0, 6]`, and at
    the two kinks

    .. math::
        \mathrm{relu6}'(0) = g_0, \qquad \mathrm{relu6}'(6) = g_6

    with :math:`g_0 = g_6 = 0` by default, the convention of
    :func:`jax.nn.relu6`, ``torch.nn.ReLU6`` and ``tf.nn.relu6``
    (differentiating ``jnp.clip`` instead gives 0.5 at both). Forward mode,
    reverse mode and higher derivatives agree (second derivatives are 0); at a
    NaN input the derivative is NaN, and where the slope is 0 even an infinite
    (co)tangent gives 0, as in jax.nn. A Python scalar input stays weakly
    typed, so ``relu6(3.0) * bfloat16_array`` is bfloat16.

    Inside a jitted model XLA fuses this into its neighbours, so it costs what
    :func:`jax.nn.relu6` costs. For a standalone call on a large array that
    you no longer need, :func:`relu6_inplace` reuses the input's buffer.

    Args:
      x: a real floating or integer array (or anything ``jnp.asarray``
        takes). Integer inputs give integer outputs, as in PyTorch and
        TensorFlow.
      grad_at_zero: :math:`g_0`, the derivative at ``x == 0``; a real scalar,
        finite in ``x``'s dtype (as is ``grad_at_six``).
      grad_at_six: :math:`g_6`, the derivative at ``x == 6``; a real scalar.

    Returns:
      An array of the shape and dtype of ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> jrelu6.relu6(jnp.array([-2.0, 0.0, 3.0, 6.0, 8.0]))
      Array([0., 0., 3., 6., 6.], dtype=float32)
      >>> jax.grad(jrelu6.relu6)(0.0), jax.grad(jrelu6.relu6)(6.0)
      (Array(0., dtype=float32, weak_type=True), Array(0., dtype=float32, weak_type=True))
      >>> jax.grad(lambda x: jrelu6.relu6(x, grad_at_zero=1.0))(0.0)
      Array(1., dtype=float32, weak_type=True)
      >>> jrelu6.relu6(jnp.arange(-1, 8, 4, dtype=jnp.int8))
      Array([0, 3, 6], dtype=int8)

    See also:
      :func:`capped_relu`, :func:`relu6_derivative`, :func:`hard_sigmoid`,
      :func:`jax.nn.relu6`.
    """
    return _capped("relu6", x, 6.0, grad_at_zero, grad_at_six, "grad_at_six")


def relu6_derivative(
    x: ArrayLike,
    *,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r"""The derivative of :func:`relu6`, element-wise, as a function.

    .. math::
        \mathrm{relu6}'(x) = \begin{cases}
          1 & 0 < x < 6 \\ g_0 & x = 0 \\ g_6 & x = 6 \\ 0 & \text{otherwise}
        \end{cases}

    and NaN at NaN. Equal to ``jax.grad(relu6)`` at every point, for the same
    boundary settings, but vectorised and without a backward pass.

    Args:
      x: a real array; integers are promoted to the default float dtype.
      grad_at_zero: :math:`g_0`, the derivative at ``x == 0``; a real scalar.
      grad_at_six: :math:`g_6`, the derivative at ``x == 6``; a real scalar.

    Returns:
      A floating array of the shape of ``x``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> jrelu6.relu6_derivative(jnp.array([-1.0, 0.0, 3.0, 6.0, 7.0]),
      ...                         grad_at_zero=1.0, grad_at_six=0.5)
      Array([0. , 1. , 1. , 0.5, 0. ], dtype=float32)

    See also:
      :func:`relu6`.
    """
    x = _as_float("relu6_derivative", x)
    grad_at_zero, grad_at_six = _kinks("relu6_derivative", x, grad_at_zero, grad_at_six)
    return _slope(x, 6.0, grad_at_zero, grad_at_six)


_slope = jax.jit(_core.slope)


def hard_sigmoid(
    x: ArrayLike,
    *,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r"""Hard sigmoid: :func:`relu6` shifted and scaled to run from 0 to 1.

    .. math::
        \mathrm{hard\_sigmoid}(x) = \frac{\mathrm{relu6}(x + 3)}{6}

    as in MobileNetV3, :func:`jax.nn.hard_sigmoid` and
    ``torch.nn.Hardsigmoid``. It inherits relu6's rule, so its derivative is
    :math:`1/6` on :math:`(-3, 3)`, 0 outside :math:`[-3, 3]`, and

    .. math::
        \mathrm{hard\_sigmoid}'(-3) = g_0 / 6, \qquad
        \mathrm{hard\_sigmoid}'(3) = g_6 / 6

    (0 and 0 by default, matching jax.nn and PyTorch).

    Args:
      x: a real array; integers are promoted to the default float dtype.
      grad_at_zero: :math:`g_0`, relu6's derivative at its lower kink.
      grad_at_six: :math:`g_6`, relu6's derivative at its upper kink.

    Returns:
      A floating array of the shape of ``x``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> jrelu6.hard_sigmoid(jnp.array([-4.0, -3.0, 0.0, 3.0]))
      Array([0. , 0. , 0.5, 1. ], dtype=float32)

    See also:
      :func:`relu6`, :func:`hard_swish`.
    """
    x = _as_float("hard_sigmoid", x)
    grad_at_zero, grad_at_six = _kinks("hard_sigmoid", x, grad_at_zero, grad_at_six)
    return _hard_sigmoid(x, grad_at_zero, grad_at_six)


# Compiled whole (one dispatch, one rounding per fused op, as jax.nn does).
@jax.jit
def _hard_sigmoid(x, grad_at_zero, grad_at_six):
    return _core.capped(x + 3, 6.0, grad_at_zero, grad_at_six) / 6


def hard_swish(
    x: ArrayLike,
    *,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r"""Hard swish (hard SiLU), the activation of MobileNetV3.

    .. math::
        \mathrm{hard\_swish}(x) = x \cdot \frac{\mathrm{relu6}(x + 3)}{6}

    as :func:`jax.nn.hard_swish` and ``torch.nn.Hardswish``. The product rule
    and relu6's rule give the derivative :math:`(2x + 3)/6` on
    :math:`(-3, 3)`, 0 below -3, 1 above 3, and at the kinks

    .. math::
        \mathrm{hard\_swish}'(-3) = -g_0 / 2, \qquad
        \mathrm{hard\_swish}'(3) = 1 + g_6 / 2

    which is 0 and 1 at the defaults, as in jax.nn and PyTorch.
    ``hard_silu`` is the same function.

    Args:
      x: a real array; integers are promoted to the default float dtype.
      grad_at_zero: :math:`g_0`, relu6's derivative at its lower kink.
      grad_at_six: :math:`g_6`, relu6's derivative at its upper kink.

    Returns:
      A floating array of the shape of ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> jrelu6.hard_swish(jnp.array([-4.0, -1.5, 0.0, 3.0, 5.0]))
      Array([-0.   , -0.375,  0.   ,  3.   ,  5.   ], dtype=float32)
      >>> jax.grad(jrelu6.hard_swish)(3.0)
      Array(1., dtype=float32, weak_type=True)

    See also:
      :func:`hard_sigmoid`, :func:`relu6`.
    """
    x = _as_float("hard_swish", x)
    grad_at_zero, grad_at_six = _kinks("hard_swish", x, grad_at_zero, grad_at_six)
    return _hard_swish(x, grad_at_zero, grad_at_six)


@jax.jit
def _hard_swish(x, grad_at_zero, grad_at_six):
    return x * _hard_sigmoid(x, grad_at_zero, grad_at_six)


hard_silu = hard_swish


def _capped_relu_wide(x, cap, grad_at_zero, grad_at_cap):
    """``capped_relu`` computed in float32 when ``x`` is a 16-bit float.

    XLA:CPU evaluates a bfloat16/float16 ``max`` and ``min`` each in float32
    and rounds back to 16 bits after each, so ``min(max(x, 0), 6)`` becomes
    two conversions per op; widening once gives one clamp between a single
    pair of conversions (in place on CPU, measured ~1.1-1.4x faster for
    bfloat16 and ~5x for float16). The values are the same (0, 6 and every
    16-bit input are exact in float32; a NaN stays a NaN), and so are the
    gradients: the rule compares the same values with the same kinks.
    """
    if jnp.dtype(x.dtype).itemsize < 4:
        wide = _core.capped(x.astype(jnp.float32), cap, grad_at_zero, grad_at_cap)
        return wide.astype(x.dtype)
    return _core.capped(x, cap, grad_at_zero, grad_at_cap)


_relu6_donating = jax.jit(_capped_relu_wide, donate_argnums=0)
_relu6_integer_donating = jax.jit(_core.capped_relu_integer, donate_argnums=0)


def relu6_inplace(
    x: jax.Array,
    *,
    grad_at_zero: ArrayLike = 0.0,
    grad_at_six: ArrayLike = 0.0,
) -> jax.Array:
    r""":func:`relu6` that writes its result into the input's buffer.

    The JAX form of ``torch.nn.ReLU6(inplace=True)``: ``x`` is *donated*, so
    XLA may reuse its memory for the output and skip allocating a fresh
    buffer (and page-faulting it in). ``x`` must not be used afterwards: the
    jrelu6 functions raise a ValueError naming themselves if it is. Use it on
    large standalone arrays. Inside a jitted model there is nothing to gain:
    XLA fuses relu6 into its producer and never materialises a separate
    input, so call :func:`relu6` there.

    Args:
      x: a jax array of a real dtype; it is consumed.
      grad_at_zero: as in :func:`relu6`.
      grad_at_six: as in :func:`relu6`.

    Returns:
      ``relu6(x)``, in the storage that held ``x`` where the backend allows.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-1.0, 2.0, 7.0])
      >>> jrelu6.relu6_inplace(x)
      Array([0., 2., 6.], dtype=float32)
      >>> x.is_deleted()
      True

    See also:
      :func:`relu6`.
    """
    x = check_array("relu6_inplace", x)
    grad_at_zero, grad_at_six = _kinks("relu6_inplace", x, grad_at_zero, grad_at_six)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return _relu6_integer_donating(x, 6.0)
    return _relu6_donating(x, 6.0, grad_at_zero, grad_at_six)
