"""The private core: one capped ReLU, one derivative rule, every public function on top.

``min(max(x, 0), cap)`` is piecewise linear with kinks at ``0`` and ``cap``.
Automatic differentiation of ``jnp.clip`` (or of ``minimum(maximum(...))``)
splits the slope evenly between the two branches at a kink, so it reports
``0.5`` there. The conventional value (jax.nn, PyTorch, TensorFlow) is ``0``,
and in low precision inputs land exactly on a kink often enough for the choice
to matter, so here the slope at each kink is an argument of the rule.

Everything in this module takes already-validated arguments; validation lives
in :mod:`jrelu6._functions`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


def like(x: jax.Array, value) -> jax.Array:
    """``value`` as a scalar of ``x``'s dtype, weakly typed where ``x`` is.

    A Python scalar input is weakly typed (``relu6(3.0) * bfloat16`` must stay
    bfloat16, as with jax.nn): constants built this way keep that.
    """
    return lax.full_like(x, value, shape=())


def _forward(x: jax.Array, cap: jax.Array) -> jax.Array:
    """``min(max(x, 0), cap)`` in ``x.dtype``. NaN in, NaN out."""
    return lax.min(lax.max(x, like(x, 0)), like(x, cap))


def slope(
        x: jax.Array,
        cap: jax.Array,
        grad_at_zero: jax.Array,
        grad_at_cap: jax.Array,
) -> jax.Array:
    r"""d/dx of ``min(max(x, 0), cap)``, with the slope at each kink as given.

    1 on (0, cap), 0 outside [0, cap], ``grad_at_zero`` at x == 0,
    ``grad_at_cap`` at x == cap, NaN at NaN. Selects on the input ``x`` only.
    """
    cap = like(x, cap)
    one = like(x, 1)
    zero = like(x, 0)
    s = jnp.where((x > zero) & (x < cap), one, zero)
    s = jnp.where(x == zero, like(x, grad_at_zero), s)
    s = jnp.where(x == cap, like(x, grad_at_cap), s)
    # A NaN input must not turn into a finite (zero) gradient.
    return jnp.where(jnp.isnan(x), like(x, jnp.nan), s)


def _cap_slope(x: jax.Array, cap: jax.Array, grad_at_cap: jax.Array) -> jax.Array:
    """d/dcap of ``min(max(x, 0), cap)``: 1 above cap, ``1 - grad_at_cap`` at it.

    At x == cap the two partial derivatives add up to 1, so moving x and cap
    together moves the output one-for-one, whatever the convention.
    """
    cap = like(x, cap)
    one = like(x, 1)
    s = jnp.where(x > cap, one, like(x, 0))
    s = jnp.where(x == cap, one - like(x, grad_at_cap), s)
    return jnp.where(jnp.isnan(x), like(x, jnp.nan), s)


def scale_tangent(s: jax.Array, t: jax.Array) -> jax.Array:
    """The tangent ``s * t``, but exactly 0 where the slope ``s`` is 0.

    ``0 * inf`` is NaN, so a plain product would turn an infinite tangent (or,
    transposed, an infinite cotangent) in a flat region into NaN, where jax.nn
    and PyTorch give 0. The select is linear in ``t``, so it transposes to the
    same rule for cotangents; a NaN slope (NaN input) still gives NaN.
    """
    return jnp.where(s == like(s, 0), jnp.zeros_like(t), s * t)


@jax.jit
def _capped_relu_forward(
        x: jax.Array,
        cap: jax.Array,
        grad_at_zero: jax.Array,
        grad_at_cap: jax.Array,
) -> jax.Array:
    """``min(max(x, 0), cap)`` for floating ``x``; derivative rules below."""
    del grad_at_zero, grad_at_cap  # Used by the derivative rules only.
    return _forward(x, cap)


# custom_jvp outermost, jit inside, as jax.nn.relu6 does: the rule is applied
# wherever the function is traced, and the body is compiled once per shape and
# dtype (one body for both rules below). The kink slopes and the cap are
# ordinary (traced) arguments, so new values never retrace.
capped_relu = jax.custom_jvp(_capped_relu_forward)

# The same function for kink slopes known to be 0 (the default): a rule with fewer
# operations, so that inside jit relu6 compiles to what jax.nn.relu6 compiles to.
capped_relu_flat_kinks = jax.custom_jvp(_capped_relu_forward)


def capped(x: jax.Array, cap, grad_at_zero, grad_at_cap) -> jax.Array:
    """:data:`capped_relu`, or its twin with the shorter rule where both kink slopes are
    the Python number 0 (validated arguments come back as ``float``)."""
    flat = all(isinstance(g, float) and g == 0 for g in (grad_at_zero, grad_at_cap))
    return (capped_relu_flat_kinks if flat else capped_relu)(x, cap, grad_at_zero, grad_at_cap)


def _jvp_rule(function, x_tangent):
    """The JVP rule of ``function`` (:data:`capped_relu` or its flat-kinks twin): the
    tangent ``x_tangent(x, cap, grad_at_zero, grad_at_cap, x_dot)`` plus the cap's. The
    boundary slopes themselves get no tangent: the output does not depend on them."""

    def rule(primals, tangents):
        x, cap, grad_at_zero, grad_at_cap = primals
        x_dot, cap_dot, _, _ = tangents
        y = function(x, cap, grad_at_zero, grad_at_cap)
        y_dot = jnp.zeros_like(y)
        if not isinstance(x_dot, SymbolicZero):
            y_dot = x_tangent(x, cap, grad_at_zero, grad_at_cap, x_dot)
        if not isinstance(cap_dot, SymbolicZero):
            y_dot = y_dot + _cap_tangent(x, cap, grad_at_cap, cap_dot)
        return y, y_dot

    return rule


# The rule (cf. relu/relu6 in jax/_src/nn/functions.py): the slope is chosen by
# comparing the *input* with the kinks, never by comparing the output. Kinks:
# d/dx = grad_at_zero at x == 0 and grad_at_cap at x == cap (both 0 by default,
# the jax.nn / PyTorch / TensorFlow convention).
# Jitted so that eager differentiation dispatches once, not once per operation.
@jax.jit
def _x_tangent(x, cap, grad_at_zero, grad_at_cap, x_dot):
    return scale_tangent(slope(x, cap, grad_at_zero, grad_at_cap), x_dot)


@jax.jit
def _cap_tangent(x, cap, grad_at_cap, cap_dot):
    return scale_tangent(_cap_slope(x, cap, grad_at_cap), jnp.asarray(cap_dot, x.dtype))


capped_relu.defjvp(_jvp_rule(capped_relu, _x_tangent), symbolic_zeros=True)


# The rule at zero kink slopes: x_dot on (0, cap), 0 elsewhere (even for an infinite
# x_dot), NaN at a NaN input; jax.nn.relu6's select, widened to NaN inputs. Linear in
# x_dot, and it transposes to the same rule for cotangents: the factor that makes
# NaN is 1 wherever x is not NaN, so transposed it multiplies nothing else.
@jax.jit
def _x_tangent_flat_kinks(x, cap, grad_at_zero, grad_at_cap, x_dot):
    del grad_at_zero, grad_at_cap  # Both 0: the select below is the whole rule.
    nan = jnp.isnan(x)
    keep = (x > like(x, 0)) & (x < like(x, cap)) | nan
    factor = jnp.where(nan, like(x_dot, jnp.nan), like(x_dot, 1))
    return jnp.where(keep, x_dot * factor, jnp.zeros_like(x_dot))


capped_relu_flat_kinks.defjvp(_jvp_rule(capped_relu_flat_kinks, _x_tangent_flat_kinks),
                              symbolic_zeros=True)


@jax.jit
def capped_relu_integer(x: jax.Array, cap: jax.Array) -> jax.Array:
    """The same function on integers: exact, no derivative rule needed."""
    return _forward(x, cap)
