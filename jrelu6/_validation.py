"""Argument checks shared by the public functions. Errors name the caller."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np


def _dtype_of(x: Any) -> np.dtype | None:
    """The dtype ``jnp.asarray(x)`` would give, or None if it has none."""
    if hasattr(x, "dtype"):
        try:
            return np.dtype(x.dtype)
        except TypeError:
            return None
    try:
        return np.asarray(x).dtype
    except (TypeError, ValueError):
        return None


def _is_real_number_dtype(dtype: np.dtype | None) -> bool:
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


def check_array(fn_name: str, x: Any) -> jax.Array:
    """Returns ``x`` as a jax array of a real (floating or integer) dtype.

    Python scalars, NumPy arrays and (nested) lists are accepted as
    :func:`jax.numpy.asarray` accepts them. Complex, bool, string, object and
    None inputs raise TypeError naming ``fn_name`` and the dtype.
    """
    if x is None:
        raise TypeError(f"{fn_name}: expected a real-valued array, got None.")
    dtype = _dtype_of(x)
    if not _is_real_number_dtype(dtype):
        what = f"dtype {dtype}" if dtype is not None else f"type {type(x).__name__}"
        raise TypeError(
            f"{fn_name}: expected a real floating or integer array, got {what}."
        )
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted():
        # Checked here so the error names the function (XLA's own error does not).
        raise ValueError(
            f"{fn_name}: the input array has been deleted or donated (for example by "
            "an earlier relu6_inplace call, which consumes its input); pass a live "
            "array, or keep a copy before donating."
        )
    return jnp.asarray(x)


def _finite_in(value: float, dtype: np.dtype) -> bool:
    """Whether ``value`` rounds to a finite number in the floating ``dtype``.

    Thread-safe: the overflow of the cast is silenced with ``np.errstate``,
    which is local to the thread (and context), not with ``warnings``, whose
    filters are process-wide.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(value, np.float64).astype(dtype)))


def check_scalar(
    fn_name: str,
    arg_name: str,
    value: Any,
    *,
    positive: bool = False,
    dtype: Any = None,
) -> Any:
    """Checks that ``value`` is a real scalar (finite when known).

    Python numbers come back as ``float`` so that ``0`` and ``0.0`` share one
    compiled function; arrays and tracers come back unchanged. Values known at
    trace time are checked to be finite (and > 0 when ``positive``); with a
    floating ``dtype`` (the input's), finite once rounded to it, since that is
    the precision the value is used in (``1e39`` is ``inf`` in float32).
    """
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise TypeError(
            f"{fn_name}: {arg_name} must be a real scalar, got {value!r}."
        )
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        concrete = value
    else:
        dtype = _dtype_of(value)
        if not _is_real_number_dtype(dtype):
            raise TypeError(
                f"{fn_name}: {arg_name} must be a real scalar, got "
                f"{type(value).__name__}"
                + (f" of dtype {dtype}." if dtype is not None else ".")
            )
        if np.ndim(value) != 0:
            raise ValueError(
                f"{fn_name}: {arg_name} must be a scalar, got an array of shape "
                f"{np.shape(value)}."
            )
        concrete = None if isinstance(value, jax.core.Tracer) else float(value)
    if concrete is not None:
        if not math.isfinite(concrete):
            raise ValueError(f"{fn_name}: {arg_name} must be finite, got {concrete}.")
        if positive and concrete <= 0:
            raise ValueError(f"{fn_name}: {arg_name} must be > 0, got {concrete}.")
        if (
            dtype is not None
            and jnp.issubdtype(dtype, jnp.floating)
            and not _finite_in(concrete, np.dtype(dtype))
        ):
            raise ValueError(
                f"{fn_name}: {arg_name}={concrete} is not finite in the input's dtype "
                f"{np.dtype(dtype).name} (largest finite value "
                f"{float(jnp.finfo(dtype).max):.6g}); use a smaller value or a wider dtype."
            )
    return value


def check_integral_cap(fn_name: str, cap: Any, dtype: Any) -> Any:
    """The cap of an integer input, checked whole and clipped to ``dtype``'s range.

    A cap above the dtype's largest value caps nothing, so it becomes that
    value (converting it would wrap or saturate). A traced cap is returned
    as is: it cannot be checked.
    """
    if isinstance(cap, jax.core.Tracer):
        return cap
    value = float(cap)
    if not value.is_integer():
        raise ValueError(
            f"{fn_name}: cap must be a whole number for an integer input (dtype "
            f"{np.dtype(dtype).name}), got {value}; pass a floating input for a "
            "fractional cap."
        )
    return min(value, float(jnp.iinfo(dtype).max))
